"""Crashes and broken children: each classified, every event before it kept."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import wait_for

from ipc import events as ev
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus


def _ending(sup: Supervisor, turn_id: str) -> tuple[list[ev.Event], ev.RunError]:
    sup.wait(turn_id, 15)
    events = [e for _, e in sup.events(turn_id)]
    assert sum(isinstance(e, (ev.RunFinished, ev.RunError)) for e in events) == 1
    assert isinstance(events[0], ev.RunStarted)
    assert isinstance(events[-1], ev.RunError)
    return events, events[-1]


def _customs(events: list[ev.Event]) -> list[object]:
    return [e.value for e in events if isinstance(e, ev.Custom)]


@pytest.mark.timeout(20)
def test_an_exception_is_an_agent_error(sup: Supervisor) -> None:
    turn = sup.start_turn("fail")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "agent_error" and end.message == "ValueError: boom"
    assert _customs(events) == [1]
    info = sup.status(turn.turn_id)
    assert info.status is TurnStatus.FAILED and info.error is not None and info.error.code == "agent_error"


@pytest.mark.timeout(20)
def test_os_exit_3_is_a_crash_not_an_agent_error(sup: Supervisor) -> None:
    turn = sup.start_turn("exit3")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "crashed" and "exited with code 3" in end.message
    assert _customs(events) == [0, 1, 2, 3, 4]
    assert sup.status(turn.turn_id).exit_code == 3


@pytest.mark.timeout(20)
def test_a_segfault_is_a_crash_with_its_signal(sup: Supervisor) -> None:
    turn = sup.start_turn("segfault")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "crashed" and "SIGSEGV" in end.message
    assert _customs(events) == [0, 1, 2, 3, 4]
    assert sup.status(turn.turn_id).signal == signal.SIGSEGV


@pytest.mark.timeout(20)
def test_an_external_sigkill_is_a_crash(sup: Supervisor) -> None:
    turn = sup.start_turn("wait_forever")
    wait_for(lambda: any(isinstance(e, ev.Custom) and e.name == "ready"
                         for _, e in sup.events(turn.turn_id, follow=False)))
    os.kill(turn.pid, signal.SIGKILL)  # type: ignore[arg-type]
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "crashed" and "SIGKILL" in end.message
    assert _customs(events)[:5] == [0, 1, 2, 3, 4]


@pytest.mark.timeout(20)
def test_an_agent_that_cannot_be_imported_is_unavailable(sup: Supervisor) -> None:
    turn = sup.start_turn("broken")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "agent_unavailable" and "broken on purpose" in end.message
    assert len(events) == 2  # RUN_STARTED, RUN_ERROR
    assert sup.status(turn.turn_id).exit_code == 4


@pytest.mark.timeout(20)
def test_garbage_on_the_pipe_fails_that_turn_only_and_keeps_earlier_events(sup: Supervisor) -> None:
    bystander = sup.start_turn("paced", {"n": 50, "interval": 0.002})
    turn = sup.start_turn("garbage")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "crashed" and "protocol error" in end.message
    assert _customs(events) == [0, 1, 2]
    assert sup.wait(bystander.turn_id, 10).status is TurnStatus.SUCCEEDED


@pytest.mark.timeout(20)
def test_a_child_that_closes_its_pipe_early_is_a_crash(sup: Supervisor) -> None:
    turn = sup.start_turn("close_pipe")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "crashed" and "without reporting a result" in end.message
    assert _customs(events) == [1]


@pytest.mark.timeout(20)
def test_a_failing_event_log_fails_that_turn_only(sup: Supervisor) -> None:
    victim = sup.start_turn("paced", {"n": 2000, "interval": 0.002})
    bystander = sup.start_turn("paced", {"n": 100, "interval": 0.002})
    wait_for(lambda: sup.status(victim.turn_id).last_seq > 10)
    # The log's fd now refuses writes (EBADF), as a failed disk would refuse them.
    read_only = os.open(os.devnull, os.O_RDONLY)
    os.dup2(read_only, sup.event_store._fds[victim.turn_id])
    os.close(read_only)
    _, end = _ending(sup, victim.turn_id)
    assert end.code == "storage_error" and "could not be written" in end.message
    assert sup.status(victim.turn_id).status is TurnStatus.FAILED
    assert sup.wait(bystander.turn_id, 10).status is TurnStatus.SUCCEEDED
    assert [s for s, _ in sup.events(bystander.turn_id)] == list(range(1, 103))


@pytest.mark.timeout(20)
def test_readers_of_a_turn_whose_log_failed_never_spin(sup: Supervisor) -> None:
    turn = sup.start_turn("paced", {"n": 2000, "interval": 0.002})
    wait_for(lambda: sup.status(turn.turn_id).last_seq > 10)
    read_only = os.open(os.devnull, os.O_RDONLY)
    os.dup2(read_only, sup.event_store._fds[turn.turn_id])
    os.close(read_only)
    sup.wait(turn.turn_id, 10)
    sup.registry.evict_ended(older_than_s=-1)  # pinned: what only memory holds stays
    seqs = [s for s, _ in sup.events(turn.turn_id, timeout=5)]
    assert seqs == list(range(1, sup.status(turn.turn_id).last_seq + 1))


@pytest.mark.timeout(30)
def test_after_a_restart_missing_log_events_are_a_gap_not_a_hang(tmp_path: Path) -> None:
    from conftest import make_config

    from supervisor.errors import HistoryGap
    with Supervisor(make_config(tmp_path)) as sup:
        turn = sup.start_turn("paced", {"n": 2000, "interval": 0.002})
        wait_for(lambda: sup.status(turn.turn_id).last_seq > 10)
        read_only = os.open(os.devnull, os.O_RDONLY)
        os.dup2(read_only, sup.event_store._fds[turn.turn_id])
        os.close(read_only)
        last = sup.wait(turn.turn_id, 10).last_seq
    with Supervisor(make_config(tmp_path)) as sup:
        assert sup.status(turn.turn_id).last_seq == last
        got: list[int] = []
        with pytest.raises(HistoryGap, match="are not in its log"):
            for seq, _ in sup.events(turn.turn_id, timeout=5):
                got.append(seq)
        assert got and got == list(range(1, len(got) + 1))


@pytest.mark.timeout(20)
def test_a_child_forging_seq_fails_with_a_protocol_error(sup: Supervisor) -> None:
    turn = sup.start_turn("forged_seq")
    events, end = _ending(sup, turn.turn_id)
    assert end.code == "crashed" and "seq is assigned by the supervisor" in end.message
    assert [e.seq for e in events] == [1, 2, 3]  # RUN_STARTED, the honest event, the terminal event
