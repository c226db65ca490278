"""The embedded Supervisor end to end: real processes, real pipes, real files."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import msgspec
import pytest
from conftest import make_config, wait_for

from ipc import events as ev
from supervisor.embedded import Supervisor
from supervisor.errors import (
    InvalidRequest,
    InvalidSessionId,
    InvalidTurnId,
    SessionBusy,
    UnknownAgent,
    UnknownTurn,
)
from supervisor.ids import new_turn_id
from supervisor.turns import TurnStatus


def _values(events: list[tuple[int, ev.Event]]) -> list[object]:
    return [e.value for _, e in events if isinstance(e, ev.Custom)]


@pytest.mark.timeout(60)
def test_ten_thousand_events_are_contiguous_ordered_and_end_with_one_terminal(sup: Supervisor) -> None:
    turn = sup.start_turn("count", {"n": 10_000})
    got = list(sup.events(turn.turn_id, timeout=30))
    assert [seq for seq, _ in got] == list(range(1, 10_003))
    assert isinstance(got[0][1], ev.RunStarted) and got[0][1].run_id == turn.turn_id
    assert _values(got) == list(range(1, 10_001))
    terminals = [e for _, e in got if isinstance(e, (ev.RunFinished, ev.RunError))]
    assert terminals == [got[-1][1]]
    assert isinstance(got[-1][1], ev.RunFinished) and got[-1][1].outcome.type == "success"
    assert got[-1][1].result == {"n": 10_000}
    info = sup.status(turn.turn_id)
    assert info.status is TurnStatus.SUCCEEDED and info.last_seq == 10_002 and info.exit_code == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("buffer_bytes", [4 << 20, 2048], ids=["memory", "log"])
def test_readers_resuming_from_random_cursors_get_exactly_the_rest(tmp_path: Path, buffer_bytes: int) -> None:
    with Supervisor(make_config(tmp_path, buffer_bytes=buffer_bytes)) as sup:
        turn = sup.start_turn("count", {"n": 3000, "pad": 40})
        full = [seq for seq, _ in sup.events(turn.turn_id, timeout=30)]
        assert full == list(range(1, 3003))
        if buffer_bytes == 2048:
            assert sup.registry.read(turn.turn_id, 0, 1).events is None  # really from the log
        rng = random.Random(7)
        for after in [0, 1, 3001, 3002, *rng.sample(range(3002), 20)]:
            rest = [seq for seq, _ in sup.events(turn.turn_id, after=after, timeout=10)]
            assert rest == list(range(after + 1, 3003))


@pytest.mark.timeout(60)
def test_resume_while_running_from_memory_and_log(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, buffer_bytes=4096)) as sup:
        turn = sup.start_turn("paced", {"n": 1000, "interval": 0.002})
        seen: list[int] = []
        for seq, _ in sup.events(turn.turn_id, timeout=10):
            seen.append(seq)
            if seq == 150:
                break  # a dropped connection
        wait_for(lambda: sup.status(turn.turn_id).last_seq > 300)
        # 4 KiB of memory holds the newest ~60 events: 151 is only in the log now,
        # while the running turn's newest events are still in memory.
        assert sup.registry.read(turn.turn_id, 150, 1).events is None
        resumed = sup.events(turn.turn_id, after=150, timeout=10)
        for seq, _ in resumed:
            seen.append(seq)
            if seq == 300:
                break
        assert sup.status(turn.turn_id).status is TurnStatus.RUNNING
        seen += [seq for seq, _ in resumed]  # the same reader follows live to the end
        assert seen == list(range(1, 1003))


@pytest.mark.timeout(30)
def test_export_of_a_running_turn_answers_at_once(sup: Supervisor) -> None:
    turn = sup.start_turn("wait_forever")
    wait_for(lambda: sup.status(turn.turn_id).last_seq >= 7)  # RUN_STARTED + 5 + ready
    page = sup.export(turn.turn_id, limit=3)  # the turn never ends: an export that waited would hang
    assert [seq for seq, _ in page.items()] == [5, 6, 7]
    assert page.total == 7 and page.returned == 3 and page.truncated and page.next_after == 7
    assert page.turn.status is TurnStatus.RUNNING
    page = sup.export(turn.turn_id, after=2, limit=2)
    assert [seq for seq, _ in page.items()] == [3, 4] and page.truncated and page.next_after == 4
    page = sup.export(turn.turn_id, after=7)
    assert page.returned == 0 and not page.truncated and page.next_after == 7
    body = msgspec.json.decode(msgspec.json.encode(sup.export(turn.turn_id, limit=1)))
    assert body["events"] == [{"seq": 7, "type": "CUSTOM", "name": "ready", "value": turn.pid,
                               "timestamp": body["events"][0]["timestamp"]}]
    sup.cancel(turn.turn_id)
    assert sup.wait(turn.turn_id, 10).status is TurnStatus.CANCELLED


@pytest.mark.timeout(30)
def test_async_iterator_follows_to_the_end(sup: Supervisor) -> None:
    turn = sup.start_turn("count", {"n": 500})
    wait_for(lambda: sup.status(turn.turn_id).last_seq >= 10)

    async def collect() -> list[int]:
        return [seq async for seq, _ in sup.aevents(turn.turn_id, after=10, timeout=10)]

    assert asyncio.run(collect()) == list(range(11, 503))


@pytest.mark.timeout(30)
def test_many_threads_read_the_same_turn(sup: Supervisor) -> None:
    turn = sup.start_turn("paced", {"n": 200, "interval": 0.0005})
    results: list[list[int]] = [[] for _ in range(8)]

    def read(i: int) -> None:
        results[i] = [seq for seq, _ in sup.events(turn.turn_id, timeout=10)]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(r == list(range(1, 203)) for r in results)


def test_result_and_thread_id(sup: Supervisor) -> None:
    turn = sup.start_turn("result_value", {"q": [1, "two"]}, session_id="chat-1")
    events = [e for _, e in sup.events(turn.turn_id, timeout=10)]
    assert events[0] == ev.RunStarted(thread_id="chat-1", run_id=turn.turn_id, timestamp=events[0].timestamp, seq=1)
    assert isinstance(events[-1], ev.RunFinished) and events[-1].result == {"echo": {"q": [1, "two"]}}


def test_list_turns_and_status_filters(sup: Supervisor) -> None:
    a = sup.start_turn("result_value", 1, session_id="s1")
    sup.wait(a.turn_id, 10)
    b = sup.start_turn("fail")
    sup.wait(b.turn_id, 10)
    assert [t.turn_id for t in sup.list_turns()] == [b.turn_id, a.turn_id]
    assert [t.turn_id for t in sup.list_turns(status="failed")] == [b.turn_id]
    assert [t.turn_id for t in sup.list_turns(session_id="s1")] == [a.turn_id]


def test_a_session_has_one_active_turn(sup: Supervisor) -> None:
    first = sup.start_turn("cooperative", session_id="s")
    with pytest.raises(SessionBusy) as err:
        sup.start_turn("count", {"n": 1}, session_id="s")
    assert err.value.active_turn_id == first.turn_id
    sup.cancel(first.turn_id)
    sup.wait(first.turn_id, 10)
    second = sup.start_turn("count", {"n": 1}, session_id="s")
    assert sup.wait(second.turn_id, 10).status is TurnStatus.SUCCEEDED


def test_history_survives_a_restart_of_the_supervisor(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path)) as sup:
        turn = sup.start_turn("count", {"n": 50})
        sup.wait(turn.turn_id, 10)
    with Supervisor(make_config(tmp_path)) as sup:
        assert sup.status(turn.turn_id).status is TurnStatus.SUCCEEDED
        assert [s for s, _ in sup.events(turn.turn_id, after=40)] == list(range(41, 53))
        assert [s for s, _ in sup.export(turn.turn_id, limit=2).items()] == [51, 52]


# -- bad input -------------------------------------------------------------------

def test_unknown_agent_and_import_paths_are_refused(sup: Supervisor) -> None:
    with pytest.raises(UnknownAgent, match="unknown agent 'nope'"):
        sup.start_turn("nope")
    with pytest.raises(UnknownAgent):
        sup.start_turn("os:system")
    assert sup.list_turns() == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "", "A" * 200, "01m80fp1g25e9efn7kj4ag02zq", 5])
def test_invalid_turn_ids_are_refused_everywhere(sup: Supervisor, bad: object) -> None:
    for call in (sup.status, sup.cancel, sup.export, lambda t: list(sup.events(t))):
        with pytest.raises(InvalidTurnId, match="invalid turn id"):
            call(bad)  # type: ignore[operator]


def test_unknown_turn(sup: Supervisor) -> None:
    with pytest.raises(UnknownTurn, match="unknown turn"):
        sup.status(new_turn_id())


def test_bad_arguments(sup: Supervisor) -> None:
    with pytest.raises(InvalidRequest, match="JSON-serialisable"):
        sup.start_turn("count", {"n": object()})
    with pytest.raises(InvalidRequest, match="timeout_s"):
        sup.start_turn("count", {"n": 1}, timeout_s=-1)
    with pytest.raises(InvalidSessionId, match="session id"):
        sup.start_turn("count", {"n": 1}, session_id="../x")
    turn = sup.start_turn("count", {"n": 3})
    sup.wait(turn.turn_id, 10)
    with pytest.raises(InvalidRequest, match="beyond the last seq 5"):
        list(sup.events(turn.turn_id, after=6))
    with pytest.raises(InvalidRequest, match="limit"):
        sup.export(turn.turn_id, limit=-1)
    assert len(sup.list_turns()) == 1


def test_bad_events_raise_in_the_agent_and_the_turn_goes_on(sup: Supervisor) -> None:
    turn = sup.start_turn("bad_events")
    events = [e for _, e in sup.events(turn.turn_id, timeout=10)]
    assert isinstance(events[-1], ev.RunFinished)
    errors = events[-1].result
    assert "not JSON-serialisable" in errors["unserialisable"]
    assert errors["too_large"].startswith("EventTooLarge: Custom is ") and "limit is 1048576" in errors["too_large"]
    assert "written by the supervisor" in errors["lifecycle"]
    assert [e.name for e in events if isinstance(e, ev.Custom)] == ["still_fine"]


@pytest.mark.timeout(30)
def test_one_large_event_never_breaks_persist_export_or_replay(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, buffer_bytes=4096)) as sup:
        turn = sup.start_turn("big_event", {"size": 1_000_000})
        sup.wait(turn.turn_id, 10)
        assert sup.status(turn.turn_id).status is TurnStatus.SUCCEEDED
        sup.registry.evict_ended(older_than_s=-1)  # everything from disk
        replay = list(sup.events(turn.turn_id))
        assert [s for s, _ in replay] == [1, 2, 3, 4, 5]
        assert len(replay[2][1].value) == 1_000_000  # type: ignore[union-attr]
        assert [s for s, _ in sup.export(turn.turn_id, limit=2).items()] == [4, 5]
        assert [s for s, _ in sup.export(turn.turn_id, after=2, limit=1).items()] == [3]
        wait_for(lambda: sup.status(turn.turn_id).compaction == "done")
        assert len(sup.export(turn.turn_id, compact=True).events) == 5


def test_a_daemon_dying_between_terminal_event_and_metadata_gets_no_second_terminal(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path)) as sup:
        turn = sup.start_turn("count", {"n": 3})
        sup.wait(turn.turn_id, 10)
        info = sup.status(turn.turn_id)
    info.status = TurnStatus.RUNNING  # as if the metadata write never happened
    info.ended_at = None
    sup.turn_store.put(info)
    with Supervisor(make_config(tmp_path)) as sup:
        assert sup.status(turn.turn_id).status is TurnStatus.SUCCEEDED
        events = [e for _, e in sup.events(turn.turn_id)]
        assert sum(isinstance(e, (ev.RunFinished, ev.RunError)) for e in events) == 1
        assert len(events) == 5


@pytest.mark.timeout(60)
def test_many_short_turns_started_from_threads_all_succeed(sup: Supervisor) -> None:
    """Regression: finishing a turn while its fds were still in the step's ready list
    let a turn started meanwhile reuse an fd number and lose its exit status (255)."""
    results: list[TurnStatus] = []

    def run(n: int) -> None:
        for _ in range(n):
            turn = sup.start_turn("count", {"n": 1})
            results.append(sup.wait(turn.turn_id, 20).status)

    threads = [threading.Thread(target=run, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert results == [TurnStatus.SUCCEEDED] * 100
