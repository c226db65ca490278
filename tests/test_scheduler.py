"""Concurrency limits, the FIFO queue and session policy, on real turns."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config, wait_for

from ipc import events as ev
from supervisor.embedded import Supervisor
from supervisor.errors import InvalidRequest, QueueFull, SessionBusy
from supervisor.turns import TurnStatus


@pytest.mark.timeout(30)
def test_turns_over_the_limit_queue_in_fifo_order(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, max_running_turns=2, max_queued=2)) as sup:
        a = sup.start_turn("cooperative")
        b = sup.start_turn("cooperative")
        c = sup.start_turn("count", {"n": 1})
        d = sup.start_turn("count", {"n": 1})
        assert (sup.status(c.turn_id).status, sup.status(c.turn_id).queue_position) == (TurnStatus.QUEUED, 1)
        assert sup.status(d.turn_id).queue_position == 2
        with pytest.raises(QueueFull, match="2 turns are queued"):
            sup.start_turn("count", {"n": 1})
        assert len(sup.list_turns()) == 4  # the refused one left nothing behind
        assert not sup.status(c.turn_id).ended
        sup.cancel(a.turn_id)
        assert sup.wait(c.turn_id, 10).status is TurnStatus.SUCCEEDED  # the first queued ran first
        sup.cancel(b.turn_id)
        assert sup.wait(d.turn_id, 10).status is TurnStatus.SUCCEEDED
        assert sup.status(c.turn_id).started_at < sup.status(d.turn_id).started_at  # type: ignore[operator]


@pytest.mark.timeout(30)
def test_cancelling_a_queued_turn_ends_it_without_a_process(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, max_running_turns=1)) as sup:
        running = sup.start_turn("cooperative")
        queued = sup.start_turn("count", {"n": 1})
        info = sup.cancel(queued.turn_id, reason="changed my mind")
        assert info.status is TurnStatus.CANCELLED and info.pid is None
        events = [e for _, e in sup.events(queued.turn_id)]
        assert [type(e).__name__ for e in events] == ["RunStarted", "RunFinished"]
        assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "cancelled"
        sup.cancel(running.turn_id)


@pytest.mark.timeout(30)
def test_session_policies(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path)) as sup:
        first = sup.start_turn("cooperative", session_id="s")
        with pytest.raises(SessionBusy):
            sup.start_turn("count", {"n": 1}, session_id="s")  # reject is the default
        second = sup.start_turn("count", {"n": 1}, session_id="s", multitask="enqueue")
        assert sup.status(second.turn_id).status is TurnStatus.QUEUED
        other = sup.start_turn("count", {"n": 1}, session_id="other")  # other sessions go on
        assert sup.wait(other.turn_id, 10).status is TurnStatus.SUCCEEDED
        assert sup.status(second.turn_id).status is TurnStatus.QUEUED
        sup.cancel(first.turn_id)
        assert sup.wait(second.turn_id, 10).status is TurnStatus.SUCCEEDED
        third = sup.start_turn("ignore_sigterm", session_id="s")
        wait_for(lambda: sup.status(third.turn_id).status is TurnStatus.RUNNING)
        fourth = sup.start_turn("count", {"n": 2}, session_id="s", multitask="interrupt")
        assert sup.wait(fourth.turn_id, 10).status is TurnStatus.SUCCEEDED
        ended = sup.status(third.turn_id)
        assert ended.status is TurnStatus.CANCELLED and "interrupted by a new turn" in (ended.cancel_reason or "")
        assert ended.ended_at <= sup.status(fourth.turn_id).started_at  # type: ignore[operator]
        with pytest.raises(InvalidRequest, match="multitask"):
            sup.start_turn("count", {"n": 1}, session_id="s", multitask="bogus")


@pytest.mark.timeout(30)
def test_closing_ends_queued_turns_cancelled(tmp_path: Path) -> None:
    sup = Supervisor(make_config(tmp_path, max_running_turns=1)).start()
    running = sup.start_turn("cooperative")
    queued = sup.start_turn("count", {"n": 1})
    sup.close()
    assert sup.status(running.turn_id).status is TurnStatus.CANCELLED
    assert sup.status(queued.turn_id).status is TurnStatus.CANCELLED


@pytest.mark.timeout(30)
def test_a_cancel_while_the_turn_is_being_spawned_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    with Supervisor(make_config(tmp_path)) as sup:
        entered, release = threading.Event(), threading.Event()
        real_spawn = sup.spawner.spawn

        def gated_spawn(spec):  # type: ignore[no-untyped-def]
            entered.set()
            release.wait(10)
            return real_spawn(spec)

        monkeypatch.setattr(sup.spawner, "spawn", gated_spawn)
        started: list[str] = []
        t = threading.Thread(target=lambda: started.append(sup.start_turn("ignore_sigterm").turn_id))
        t.start()
        assert entered.wait(10)
        turn_id = sup.list_turns()[0].turn_id
        info = sup.cancel(turn_id, reason="early")
        assert info.status is TurnStatus.STARTING and info.cancel_requested
        release.set()
        t.join(10)
        ended = sup.wait(turn_id, 15)
        assert ended.status is TurnStatus.CANCELLED and ended.cancel_reason == "early"
