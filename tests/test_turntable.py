"""supervisor.runtime.turntable and the read path's decision, without processes."""

from __future__ import annotations

import threading

import pytest

from supervisor.errors import UnknownTurn
from supervisor.ids import new_turn_id
from supervisor.runtime.reader import Batch, Step, next_step
from supervisor.runtime.scheduler import Pending
from supervisor.runtime.turntable import TurnTable
from supervisor.storage.eventlog import FileEventLog
from supervisor.storage.turnfiles import FileTurnStore
from supervisor.turns import TurnInfo, TurnStatus


def _pending(status: TurnStatus = TurnStatus.QUEUED, session: str | None = None,
             turn_id: str | None = None) -> Pending:
    info = TurnInfo(turn_id=turn_id or new_turn_id(), agent="a", session_id=session, status=status)
    return Pending(info.turn_id, session, (info, None))


def test_a_turn_is_in_exactly_one_place_from_admission_to_its_end() -> None:
    table = TurnTable()
    p = _pending()
    table.admit(p)
    assert table.get(p.turn_id).status is TurnStatus.QUEUED and table.busy == 1
    info = p.payload[0]
    info.status = TurnStatus.CANCELLED
    table.end(info)
    assert table.busy == 0 and table.counts()[TurnStatus.CANCELLED] == 1
    assert [i.turn_id for i in table.select()] == [p.turn_id]


def test_readers_get_copies_never_the_record() -> None:
    table = TurnTable()
    p = _pending()
    table.admit(p)
    copy = table.get(p.turn_id)
    copy.status = TurnStatus.SUCCEEDED
    assert table.get(p.turn_id).status is TurnStatus.QUEUED


def test_select_filters_and_orders_newest_first_with_queue_positions() -> None:
    table = TurnTable()
    first, second, third = sorted(new_turn_id() for _ in range(3))  # ids sort by creation
    a, b, c = _pending(session="s1", turn_id=first), _pending(session="s2", turn_id=second), \
        _pending(session="s1", turn_id=third)
    for p in (a, b, c):
        table.admit(p)
    table.queue_position = {a.turn_id: 1, b.turn_id: 2, c.turn_id: 3}.get
    assert [i.turn_id for i in table.select(session_id="s1")] == [c.turn_id, a.turn_id]
    assert [i.queue_position for i in table.select(limit=2)] == [3, 2]
    with pytest.raises(UnknownTurn):
        table.get(new_turn_id())


def test_wait_for_end_wakes_when_a_turn_ends() -> None:
    table = TurnTable()
    p = _pending()
    table.admit(p)
    woke = threading.Event()

    def waiter() -> None:
        table.wait_for_end(30)
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    info = p.payload[0]
    info.status = TurnStatus.SUCCEEDED
    while not woke.is_set():  # the end may land before the waiter sleeps: end again until it wakes
        table.end(info)
        woke.wait(0.05)
    t.join(5)
    assert woke.is_set()


@pytest.mark.parametrize(("cursor", "batch", "follow", "step"), [
    (0, Batch([b'{"seq":1,}'], 1, False), True, Step.LINES),
    (3, Batch([], 5, False), True, Step.LOST),  # counted but unreadable: never spin
    (5, Batch([], 5, True), True, Step.END),
    (5, Batch([], 5, False), False, Step.END),
    (5, Batch([], 5, False), True, Step.WAIT),
])
def test_the_follow_decision(cursor: int, batch: Batch, follow: bool, step: Step) -> None:
    assert next_step(cursor, batch, follow=follow) is step


def test_the_file_turn_store_transitions_only_from_the_expected_status(tmp_path: object) -> None:
    store = FileTurnStore(FileEventLog(str(tmp_path)))
    info = TurnInfo(turn_id=new_turn_id(), agent="a", status=TurnStatus.RUNNING)
    store.put(info)
    ended = TurnInfo(turn_id=info.turn_id, agent="a", status=TurnStatus.SUCCEEDED)
    assert not store.transition(ended, frozenset({TurnStatus.QUEUED}))
    assert store.get(info.turn_id) == info
    assert store.transition(ended, frozenset({TurnStatus.RUNNING}))
    assert store.get(info.turn_id) == ended
