"""RedisEventStore and RedisTurnStore against a real redis-server: the EventStore/TurnStore contracts, and fencing."""

from __future__ import annotations

import pytest
from redis_fixture import RedisServer, needs_redis

from ipc import events as ev
from supervisor.errors import StoreFenced, StoreUnavailable
from supervisor.ids import new_turn_id
from supervisor.storage.lines import event_line, line_seq
from supervisor.storage.redis_common import Keys, connect
from supervisor.storage.redis_events import PAGE, RedisEventStore
from supervisor.storage.redis_turns import RedisTurnStore
from supervisor.storage.stores import EventStore, TurnStore
from supervisor.turns import TurnInfo, TurnStatus

pytestmark = needs_redis
RUNNING = frozenset({TurnStatus.QUEUED, TurnStatus.STARTING, TurnStatus.RUNNING})


def stores(server: RedisServer, node: str = "a") -> tuple[RedisEventStore, RedisTurnStore]:
    client = connect(server.url)
    keys = Keys("t")
    events = RedisEventStore(client, keys)
    turns = RedisTurnStore(client, keys, node, events)
    typed: tuple[EventStore, TurnStore] = (events, turns)  # mypy checks the protocols here
    assert typed
    return events, turns


def text(seq: int, delta: str = "x") -> bytes:
    return event_line(seq, ev.TextMessageContent(message_id="m", delta=delta))


def lost(seq: int) -> bytes:
    return event_line(seq, ev.RunError(message="gone", code="lost"))


def finished(seq: int, turn_id: str) -> bytes:
    return event_line(seq, ev.RunFinished(thread_id=turn_id, run_id=turn_id, outcome=ev.Outcome("success")))


def test_appended_lines_read_back_in_bounded_pages(redis_server: RedisServer) -> None:
    events, _ = stores(redis_server)
    t = new_turn_id()
    n = PAGE * 2 + 7
    events.create(t)
    events.append(t, [text(s) for s in range(1, 101)])
    events.append(t, [text(s) for s in range(101, n + 1)])
    assert events.reopen(t) == n
    got = events.read_after(t, 3, limit=PAGE + 10, upto=n)
    assert [line_seq(x) for x in got] == list(range(4, PAGE + 14))
    assert got[0] == text(4)
    assert [line_seq(x) for x in events.read_after(t, n - 5, limit=100, upto=n - 2)] == [n - 4, n - 3, n - 2]
    assert events.read_after(t, n, limit=10, upto=n) == []
    assert [line_seq(x) for x in events.tail(t, PAGE + 3, upto=n - 1)] == list(range(n - PAGE - 3, n))
    assert events.last_line(t) == text(n)
    # The byte budget: past the first line, no more than max_bytes.
    big = events.read_after(t, 0, limit=n, upto=n, max_bytes=len(text(1)) * 9 + len(text(10)))
    assert [line_seq(x) for x in big] == list(range(1, 11))


def test_append_that_does_not_follow_is_fenced(redis_server: RedisServer) -> None:
    events, _ = stores(redis_server)
    t = new_turn_id()
    with pytest.raises(StoreFenced):
        events.append(t, [text(2)])  # a hole before the first event
    events.append(t, [text(1), text(2)])
    with pytest.raises(StoreFenced):
        events.append(t, [text(2, "other")])  # a duplicate seq: another writer was first
    events.append(t, [text(1), text(2)])  # the same batch again (its first answer was lost): written once
    assert events.reopen(t) == 2
    with pytest.raises(StoreFenced):
        events.append(t, [text(4)])  # a hole
    events.append(t, [text(3), lost(4)])
    with pytest.raises(StoreFenced):
        events.append(t, [text(5)])  # after the terminal event nothing is added
    assert events.reopen(t) == 4
    assert isinstance(StoreFenced("x"), OSError)  # the relay ends the turn storage_error


def test_compacted_form_and_removal(redis_server: RedisServer) -> None:
    events, turns = stores(redis_server)
    t = new_turn_id()
    events.append(t, [text(1), text(2)])
    events.write_compact(t, [text(1, "all")])  # no record: a turn retention removed gets no form
    assert events.read_compact(t) is None
    turns.put(TurnInfo(turn_id=t, agent="a", status=TurnStatus.RUNNING))
    assert events.read_compact(t) is None
    events.write_compact(t, [text(1, "all")])
    assert events.read_compact(t) == [text(1, "all")]
    assert events.has_raw(t) and events.size(t) > 0
    assert t in events.turn_ids()
    assert events.remove_raw(t) > 0
    assert not events.has_raw(t) and events.read_compact(t) == [text(1, "all")]
    assert events.remove(t) > 0
    assert events.read_compact(t) is None and events.size(t) == 0


def test_turn_records_transition_by_compare_and_set(redis_server: RedisServer) -> None:
    _, turns = stores(redis_server)
    t = new_turn_id()
    info = TurnInfo(turn_id=t, agent="demo", status=TurnStatus.STARTING, session_id="s1")
    turns.put(info)
    got = turns.get(t)
    assert got is not None and got.status is TurnStatus.STARTING and got.session_id == "s1"
    info.status = TurnStatus.RUNNING
    assert not turns.transition(info, frozenset({TurnStatus.QUEUED}))
    assert turns.get(t).status is TurnStatus.STARTING  # type: ignore[union-attr]
    assert turns.transition(info, RUNNING)
    assert turns.get(t).status is TurnStatus.RUNNING  # type: ignore[union-attr]
    assert turns.select(status="running") == [info]
    assert turns.select(status="starting") == []
    assert turns.active_of("a") == [t]


def test_an_ended_status_is_final_and_agrees_with_the_events(redis_server: RedisServer) -> None:
    events, turns = stores(redis_server, "a")
    _, other = stores(redis_server, "b")
    t = new_turn_id()
    info = TurnInfo(turn_id=t, agent="demo", status=TurnStatus.RUNNING)
    turns.put(info)
    events.append(t, [text(1), lost(2)])  # node b ended it lost first
    late = TurnInfo(turn_id=t, agent="demo", status=TurnStatus.SUCCEEDED, last_seq=2)
    with pytest.raises(StoreFenced):
        turns.put(late)  # the owner's own ending disagrees with the stream
    ended = TurnInfo(turn_id=t, agent="demo", status=TurnStatus.LOST, last_seq=2)
    assert other.transition(ended, RUNNING)
    with pytest.raises(StoreFenced):
        turns.put(late)
    assert turns.get(t).status is TurnStatus.LOST  # type: ignore[union-attr]
    assert turns.owner(t) == "a"  # b's transition did not take the turn over
    assert turns.active_of("a") == []
    ending = turns.ending_from_log(t)
    assert ending is not None and ending.status is TurnStatus.LOST and ending.last_seq == 2
    ok = new_turn_id()
    turns.put(TurnInfo(turn_id=ok, agent="demo", status=TurnStatus.RUNNING))
    events.append(ok, [text(1), finished(2, ok)])
    turns.put(TurnInfo(turn_id=ok, agent="demo", status=TurnStatus.SUCCEEDED, last_seq=2))
    compacted = TurnInfo(turn_id=ok, agent="demo", status=TurnStatus.SUCCEEDED, last_seq=2, compaction="done")
    turns.put(compacted)  # the same ending may be rewritten (compaction, retention marks)
    assert turns.get(ok) == compacted
    turns.remove(ok)  # retention removed it: a late write of its ending (its owner's compaction) is refused
    turns.put(compacted)
    assert turns.get(ok) is None and ok not in [i.turn_id for i in turns.select()]


def test_listing_is_cluster_wide_newest_first_and_load_all_is_this_nodes(redis_server: RedisServer) -> None:
    _, a = stores(redis_server, "a")
    _, b = stores(redis_server, "b")
    ids = [new_turn_id() for _ in range(5)]
    for i, t in enumerate(ids):
        (a if i % 2 == 0 else b).put(TurnInfo(turn_id=t, agent="demo", status=TurnStatus.RUNNING,
                                              session_id="s" if i < 2 else None))
    assert [i.turn_id for i in a.select()] == sorted(ids, reverse=True)
    assert [i.turn_id for i in b.select(limit=2)] == sorted(ids, reverse=True)[:2]
    assert sorted(i.turn_id for i in b.select(session_id="s")) == sorted(ids[:2])
    assert [i.turn_id for i in a.load_all()] == sorted(ids[0::2])
    assert [i.turn_id for i in b.load_all()] == sorted(ids[1::2])
    assert a.remove(ids[0]) > 0
    assert a.get(ids[0]) is None and ids[0] not in [i.turn_id for i in b.select()]
    assert [i.turn_id for i in b.select(session_id="s")] == [ids[1]]


def test_unreachable_redis_is_a_clear_error(redis_server: RedisServer) -> None:
    events, _ = stores(redis_server)
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        events.append(new_turn_id(), [text(1)])
    with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
        connect(redis_server.url)


def test_an_ended_turn_expires_whole_after_max_age_and_its_index_entries_go(redis_server: RedisServer) -> None:
    from conftest import wait_for

    client = connect(redis_server.url)
    keys = Keys("t")
    events = RedisEventStore(client, keys)
    turns = RedisTurnStore(client, keys, "a", events, max_age_s=0.5)
    t, running = new_turn_id(), new_turn_id()
    for turn_id in (t, running):
        turns.put(TurnInfo(turn_id=turn_id, agent="demo", status=TurnStatus.RUNNING, session_id="s"))
        events.append(turn_id, [text(1)])
    client.set(keys.cancel(t), "asked")
    events.append(t, [finished(2, t)])
    ended = TurnInfo(turn_id=t, agent="demo", status=TurnStatus.SUCCEEDED, last_seq=2, session_id="s")
    turns.put(ended)
    events.write_compact(t, [finished(2, t)])  # written after the ending: expires with it
    mine = [keys.turn(t), keys.events(t), keys.compact(t), keys.cancel(t)]
    ttls = [client.pttl(k) for k in mine]
    assert all(0 < ms <= 500 for ms in ttls), ttls
    assert [client.pttl(k) for k in (keys.turn(running), keys.events(running))] == [-1, -1]  # not ended
    turns.put(ended)  # re-written (compaction state): the ending's TTL is not pushed back
    assert client.pttl(keys.turn(t)) <= ttls[0]
    wait_for(lambda: client.exists(*mine) == 0, 10, 0.02)
    assert client.sismember(keys.status("succeeded"), t)  # dangling until read or dropped
    assert turns.select(status="succeeded") == []  # a read drops what it finds dangling
    assert not client.sismember(keys.status("succeeded"), t)
    assert [i.turn_id for i in turns.select(session_id="s")] == [running]
    assert turns.drop_expired() == 1  # the rest: every index it was in
    assert client.zscore(keys.turns, t) is None and not client.sismember(keys.node_turns("a"), t)
    assert client.zcard(keys.expiry) == 0 and [i.turn_id for i in turns.select()] == [running]


def test_a_full_log_marked_removed_stays_so_whatever_the_owner_writes(redis_server: RedisServer) -> None:
    events, turns = stores(redis_server)
    t = new_turn_id()
    turns.put(TurnInfo(turn_id=t, agent="demo", status=TurnStatus.RUNNING))
    events.append(t, [text(1), finished(2, t)])
    info = TurnInfo(turn_id=t, agent="demo", status=TurnStatus.SUCCEEDED, last_seq=2, compaction="done")
    turns.put(info)
    assert turns.ended_ids() == [t] and not turns.get(t).raw_removed  # type: ignore[union-attr]
    turns.mark_raw_removed(t)  # by the node that ran the retention pass
    turns.put(info)  # the owner's older copy says raw_removed=False
    assert turns.get(t).raw_removed and turns.ended([t])[0].raw_removed  # type: ignore[union-attr]
    assert events.sizes([t, new_turn_id()])[1] == 0 and events.sizes([t])[0] > 0


def test_a_dead_owners_turn_whose_terminal_event_is_stored_gets_that_ending_not_lost(
        redis_server: RedisServer, tmp_path: object) -> None:
    from supervisor.config import ClusterConfig
    from supervisor.runtime.cluster import Cluster

    events, a = stores(redis_server, "a")
    t = new_turn_id()
    a.put(TurnInfo(turn_id=t, agent="demo", status=TurnStatus.RUNNING))
    events.append(t, [text(1), finished(2, t)])  # node a died here, before its record said so
    b = Cluster(ClusterConfig(redis_url=redis_server.url, node_id="b", key_prefix="t"), str(tmp_path),
                max_queued=10)
    try:
        assert b.end_lost(t) is False  # b's liveness sweep, for a's turn
        info = a.get(t)
        assert info is not None and info.status is TurnStatus.SUCCEEDED and info.last_seq == 2
        assert a.active_of("a") == [] and events.last_line(t) == finished(2, t)  # no RUN_ERROR after it
    finally:
        b.client.close()
