"""GET /v1/turns/events: every status change, numbered, resumable; and the ring behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from daemon_fixture import Daemon, start_daemon, stopped
from httpx_sse import connect_sse

from supervisor.errors import UnknownTurn
from supervisor.runtime.turnfeed import TurnFeed
from supervisor.turns import TurnInfo, TurnStatus


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from stopped(start_daemon(tmp_path))


def read_feed(c: httpx.Client, until: Any, headers: dict[str, str] | None = None,
              params: dict[str, str] | None = None) -> list[tuple[str, int, Any]]:
    """Frames (event, id, data) until ``until(frames)`` holds; the stream is then closed."""
    frames: list[tuple[str, int, Any]] = []
    with connect_sse(c, "GET", "/v1/turns/events", headers=headers or {}, params=params) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            frames.append((sse.event, int(sse.id), json.loads(sse.data)))
            if until(frames):
                return frames
    raise AssertionError(f"stream ended early: {frames}")


def statuses(frames: list[tuple[str, int, Any]], turn_id: str) -> list[str]:
    return [d["status"] for e, _, d in frames if e == "turn" and d["turn_id"] == turn_id]


@pytest.mark.timeout(60)
def test_a_snapshot_then_every_status_change_in_order(daemon: Daemon) -> None:
    with daemon.http(30) as c:
        old = c.post("/v1/turns", json={"agent": "count", "input": {"n": 1}}).json()["turn_id"]
        wait_for(lambda: c.get(f"/v1/turns/{old}").json()["status"] == "succeeded", 20)
        frames: list[tuple[str, int, Any]] = []
        new: list[str] = []

        def done(fs: list[tuple[str, int, Any]]) -> bool:
            if len(fs) == 1:  # the snapshot is in: now start a turn
                assert fs[0][0] == "snapshot" and [t["turn_id"] for t in fs[0][2]["turns"]] == [old]
                with daemon.http() as c2:
                    new.append(c2.post("/v1/turns", json={"agent": "count", "input": {"n": 3}}).json()["turn_id"])
            return bool(new) and "succeeded" in statuses(fs, new[0])

        frames = read_feed(c, done)
        seen = statuses(frames, new[0])
        assert seen[-1] == "succeeded" and seen == sorted(set(seen), key=seen.index)  # no repeats
        assert {"starting", "running", "succeeded"} <= set(seen)
        assert all(s in ("queued", "starting", "running", "succeeded") for s in seen)
        ids = [i for _, i, _ in frames]
        assert ids == sorted(ids) and len(set(ids[1:])) == len(ids) - 1
        last = [d for e, _, d in frames if e == "turn"][-1]
        assert last["last_seq"] == 5 and last["ended_at"] is not None


@pytest.mark.timeout(60)
def test_resume_after_a_cursor_gives_the_rest_with_no_gap_and_no_duplicate(daemon: Daemon) -> None:
    with daemon.http(30) as c:
        before = read_feed(c, lambda fs: True)[0][1]  # the snapshot's feed position
        tids = [c.post("/v1/turns", json={"agent": "count", "input": {"n": 2}}).json()["turn_id"] for _ in range(3)]
        for tid in tids:
            wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["status"] == "succeeded", 20)
        frames = read_feed(c, lambda fs: sum(1 for e, _, d in fs if d.get("status") == "succeeded") == 3,
                           headers={"last-event-id": str(before)})
        assert all(e == "turn" for e, _, _ in frames) and {d["turn_id"] for _, _, d in frames} == set(tids)
        ids = [i for _, i, _ in frames]
        assert ids == list(range(before + 1, before + 1 + len(ids)))  # consecutive: nothing skipped
        middle = ids[len(ids) // 2]
        rest = read_feed(c, lambda fs: fs[-1][1] == ids[-1], headers={"last-event-id": str(middle)})
        assert [i for _, i, _ in rest] == [i for i in ids if i > middle]
        assert [d for _, _, d in rest] == [d for _, i, d in frames if i > middle]
        assert read_feed(c, lambda fs: True, params={"after": str(middle)})[0][1] == middle + 1


@pytest.mark.timeout(30)
def test_a_cursor_from_an_earlier_run_gets_a_fresh_snapshot_and_bad_ones_400(daemon: Daemon) -> None:
    with daemon.http() as c:
        frames = read_feed(c, lambda fs: True, headers={"last-event-id": "17"})
        assert frames[0][0] == "snapshot" and frames[0][2] == {"turns": []}
        for bad in ("abc", "-1", str(1 << 60)):
            r = c.get("/v1/turns/events", headers={"last-event-id": bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


@pytest.mark.timeout(30)
def test_feed_streams_are_counted_and_closed_at_shutdown(daemon: Daemon) -> None:
    def feed_streams() -> int:
        with daemon.http() as c:
            text = c.get("/metrics").text
        return int(next(line.split()[1] for line in text.splitlines()
                        if line.startswith("runnerd_turn_feed_streams ")))

    assert feed_streams() == 0
    with daemon.http(30) as c:
        with connect_sse(c, "GET", "/v1/turns/events") as source:
            events = source.iter_sse()
            assert next(events).event == "snapshot"
            assert feed_streams() == 1
            daemon.proc.terminate()
            assert next(events).event == "shutdown"
    assert daemon.proc.wait(20) == 0


def test_the_ring_is_bounded_and_says_when_a_cursor_is_too_old() -> None:
    infos = {f"T{i}": TurnInfo(turn_id=f"T{i}", agent="a", status=TurnStatus.RUNNING) for i in range(10)}

    def snapshot(turn_id: str) -> TurnInfo:
        if turn_id not in infos:
            raise UnknownTurn(turn_id)
        return infos[turn_id]

    feed = TurnFeed(snapshot, capacity=4)
    start = feed.last_id
    assert feed.since(start) == []
    for i in range(10):
        feed.publish(f"T{i}")
    assert feed.last_id == start + 10
    assert feed.since(start) is None and feed.since(start + 5) is None  # fell out of the ring
    assert [c.info.turn_id for c in feed.since(start + 6) or []] == ["T6", "T7", "T8", "T9"]
    assert feed.since(start + 10) == [] and feed.since(start + 11) is None  # not from this run
    feed.publish("unknown")  # a turn already forgotten: nothing recorded
    assert feed.last_id == start + 10
