"""Cancel escalation and timeouts: token, then SIGTERM, then SIGKILL of the whole tree."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import make_config, wait_for

from ipc import events as ev
from supervisor.config import LimitsConfig
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus


def _custom(sup: Supervisor, turn_id: str, name: str) -> object:
    for _, e in sup.events(turn_id, timeout=10):
        if isinstance(e, ev.Custom) and e.name == name:
            return e.value
    raise AssertionError(f"no {name} event")


def _assert_cancelled_and_gone(sup: Supervisor, turn_id: str, pids: list[int]) -> ev.Event:
    info = sup.wait(turn_id, 10)
    assert info.status is TurnStatus.CANCELLED and info.error is None
    events = [e for _, e in sup.events(turn_id)]
    terminals = [e for e in events if isinstance(e, (ev.RunFinished, ev.RunError))]
    assert terminals == [events[-1]]
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "cancelled"
    for pid in pids:  # gone when the terminal event is written, not "soon after"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    return events[-1]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("agent", ["cooperative", "async_agent"])
def test_a_cooperative_agent_ends_before_any_signal(sup: Supervisor, agent: str) -> None:
    turn = sup.start_turn(agent)
    pid = _custom(sup, turn.turn_id, "ready")
    info = sup.cancel(turn.turn_id, reason="user pressed stop")
    assert info.cancel_requested and info.cancel_reason == "user pressed stop"
    _assert_cancelled_and_gone(sup, turn.turn_id, [int(pid)])  # type: ignore[arg-type]
    info = sup.status(turn.turn_id)
    assert info.exit_code == 5 and info.signal is None  # the child's own "cancelled" exit: no signal needed
    if agent == "async_agent":
        names = [e.name for _, e in sup.events(turn.turn_id) if isinstance(e, ev.Custom)]
        assert names == ["ready", "task_cancelled"]


@pytest.mark.timeout(20)
def test_an_agent_ignoring_the_token_gets_sigterm(sup: Supervisor) -> None:
    turn = sup.start_turn("ignore_token")
    pid = _custom(sup, turn.turn_id, "ready")
    sup.cancel(turn.turn_id)
    _assert_cancelled_and_gone(sup, turn.turn_id, [int(pid)])  # type: ignore[arg-type]
    assert sup.status(turn.turn_id).signal == 15


@pytest.mark.timeout(20)
def test_an_agent_ignoring_sigterm_gets_sigkill(sup: Supervisor) -> None:
    turn = sup.start_turn("ignore_sigterm")
    pid = _custom(sup, turn.turn_id, "ready")
    started = time.monotonic()
    sup.cancel(turn.turn_id)
    _assert_cancelled_and_gone(sup, turn.turn_id, [int(pid)])  # type: ignore[arg-type]
    assert sup.status(turn.turn_id).signal == 9
    assert time.monotonic() - started >= 0.6  # both grace periods (0.3 s each) were honoured


@pytest.mark.timeout(20)
def test_three_grandchildren_one_double_forked_in_a_new_session_are_all_killed(sup: Supervisor) -> None:
    turn = sup.start_turn("grandchildren")
    pids = _custom(sup, turn.turn_id, "pids")
    assert isinstance(pids, list) and len(pids) == 3
    assert all(psutil.pid_exists(p) for p in pids)
    sup.cancel(turn.turn_id)
    _assert_cancelled_and_gone(sup, turn.turn_id, [turn.pid, *pids])  # type: ignore[list-item]


@pytest.mark.timeout(20)
def test_cancel_is_idempotent_and_a_finished_turn_is_untouched(sup: Supervisor) -> None:
    turn = sup.start_turn("cooperative")
    _custom(sup, turn.turn_id, "ready")
    for _ in range(3):
        sup.cancel(turn.turn_id, reason="again")
    _assert_cancelled_and_gone(sup, turn.turn_id, [])
    done = sup.start_turn("count", {"n": 1})
    sup.wait(done.turn_id, 10)
    info = sup.cancel(done.turn_id)
    assert info.status is TurnStatus.SUCCEEDED and not info.cancel_requested
    assert sup.status(done.turn_id).last_seq == 3


@pytest.mark.timeout(20)
def test_cancel_returns_at_once(tmp_path: Path) -> None:
    # The turn ignores the token and dies of the SIGTERM sent after cancel_grace_s:
    # a cancel that waited for the escalation would come back with a final status.
    with Supervisor(make_config(tmp_path, cancel_grace_s=1.5)) as sup:
        turn = sup.start_turn("ignore_token")
        pid = int(_custom(sup, turn.turn_id, "ready"))  # type: ignore[call-overload]
        info = sup.cancel(turn.turn_id)
        assert info.cancel_requested and info.status is TurnStatus.RUNNING
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # escalation runs on the relay thread
        assert sup.wait(turn.turn_id, 10).status is TurnStatus.CANCELLED
        assert sup.status(turn.turn_id).signal == 15


@pytest.mark.timeout(20)
def test_a_wall_timeout_uses_the_same_escalation_and_ends_timed_out(sup: Supervisor) -> None:
    turn = sup.start_turn("ignore_sigterm", timeout_s=0.2)
    info = sup.wait(turn.turn_id, 10)
    assert info.status is TurnStatus.TIMED_OUT
    assert info.error is not None and info.error.code == "timeout" and "0.2 s timeout" in info.error.message
    last = list(sup.events(turn.turn_id))[-1][1]
    assert isinstance(last, ev.RunError) and last.code == "timeout"


@pytest.mark.timeout(30)
def test_other_turns_are_untouched_by_a_cancel(sup: Supervisor) -> None:
    victim = sup.start_turn("grandchildren")
    bystander = sup.start_turn("paced", {"n": 100, "interval": 0.005})
    _custom(sup, victim.turn_id, "pids")
    sup.cancel(victim.turn_id)
    assert sup.wait(victim.turn_id, 10).status is TurnStatus.CANCELLED
    assert sup.wait(bystander.turn_id, 10).status is TurnStatus.SUCCEEDED
    assert [s for s, _ in sup.events(bystander.turn_id)] == list(range(1, 103))


@pytest.mark.timeout(20)
def test_closing_the_supervisor_cancels_running_turns(tmp_path: object) -> None:
    from conftest import make_config
    sup = Supervisor(make_config(tmp_path)).start()  # type: ignore[arg-type]
    turn = sup.start_turn("ignore_sigterm")
    _custom(sup, turn.turn_id, "ready")
    sup.close()
    assert sup.status(turn.turn_id).status is TurnStatus.CANCELLED
    assert sup.status(turn.turn_id).cancel_reason == "supervisor shutdown"
    wait_for(lambda: not sup.relay.alive, 5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_an_adopted_descendant_that_exited_on_its_own_is_reaped(tmp_path: Path, cgroups: str) -> None:
    """With a cgroup the end-of-turn sweep reads no process table unless a child of ours
    awaits reaping; a zombie the turn left with the supervisor (a subreaper) is still reaped."""
    with Supervisor(make_config(tmp_path, limits=LimitsConfig(cgroups=cgroups))) as sup:
        if cgroups == "auto" and sup.containment.mode == "polling":
            pytest.skip(f"no cgroup per turn here: {sup.containment.reason}")
        turn = sup.start_turn("orphan_exits")
        pid = _custom(sup, turn.turn_id, "zombie")
        assert isinstance(pid, int)
        assert sup.wait(turn.turn_id, 10).status is TurnStatus.SUCCEEDED
        with pytest.raises(ChildProcessError):  # reaped by the supervisor, not left to us
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.timeout(30)
def test_a_stopped_turn_is_cancelled_by_sigkill_and_the_relay_goes_on(sup: Supervisor) -> None:
    # Setting the token must not wait for the turn's process: a SIGSTOPped turn
    # once hung the relay thread (and with it every other turn) on its cancel.
    stopped = sup.start_turn("wait_forever")
    pid = _custom(sup, stopped.turn_id, "ready")
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGSTOP)
    sup.cancel(stopped.turn_id)
    bystander = sup.start_turn("count", {"n": 3})
    assert sup.wait(bystander.turn_id, 10).status is TurnStatus.SUCCEEDED
    info = sup.wait(stopped.turn_id, 10)
    assert info.status is TurnStatus.CANCELLED and info.signal == signal.SIGKILL


@pytest.mark.timeout(20)
def test_cancel_nowait_sets_a_running_turns_token_and_leaves_other_turns_to_cancel(tmp_path: Path) -> None:
    # The HTTP cancel's first half, on the event loop: only a turn running here.
    with Supervisor(make_config(tmp_path, max_running_turns=1)) as sup:
        running = sup.start_turn("async_agent")
        queued = sup.start_turn("count", {"n": 1})
        _custom(sup, running.turn_id, "ready")
        assert sup.cancel_nowait(queued.turn_id) is None  # queued: cancel() ends it
        assert sup.cancel_nowait("01AAAAAAAAAAAAAAAAAAAAAAAA") is None
        ack = sup.cancel_nowait(running.turn_id, reason="by test")
        assert ack is not None and ack.wait(5)
        info = sup.status(running.turn_id)
        assert info.cancel_requested and info.cancel_reason == "by test"
        assert sup.wait(running.turn_id, 10).status is TurnStatus.CANCELLED
        names = [getattr(e, "name", None) for _, e in sup.events(running.turn_id, follow=False)]
        assert "task_cancelled" in names  # the token reached the agent: the cooperative path
        sup.cancel(queued.turn_id)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("agent", ["returns_when_cancelled", "cooperative"])
def test_an_answer_read_before_the_relay_drained_the_cancel_still_ends_cancelled(sup: Supervisor, agent: str) -> None:
    # post_cancel sets the token from the caller's thread, so the agent's answer (a normal
    # return, or Cancelled) can be read in a relay step whose commands were drained just
    # before the cancel was queued. Forced here: drains see nothing until the answer is in.
    turn = sup.start_turn(agent)
    _custom(sup, turn.turn_id, "ready")
    relay = sup.relay
    real_drain = relay._drain_commands
    held = threading.Event()
    held.set()

    def drain(woken: bool) -> dict[str, Any]:
        return {} if held.is_set() else real_drain(woken)

    relay._drain_commands = drain  # type: ignore[method-assign]
    try:
        ack = relay.post_cancel(turn.turn_id, "raced")
        wait_for(lambda: (live := relay.table.live(turn.turn_id)) is None or live.done is not None)
    finally:
        held.clear()
        relay._wake()
    assert ack.wait(10)
    info = sup.wait(turn.turn_id, 10)
    assert info.status is TurnStatus.CANCELLED and info.cancel_requested and info.cancel_reason == "raced"
