"""ipc.ring: the shared-memory ring, alone (real memfd, eventfd, pipe) and under a real Supervisor."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import signal
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from pathlib import Path

import pytest
from conftest import make_config, wait_for

from ipc import events as ev
from ipc.ring import RING_SUPPORTED, RingChannel, RingReader, RingWriter
from ipc.wire import Batch, Done, Frame, Ready
from supervisor.embedded import Supervisor

pytestmark = pytest.mark.skipif(not RING_SUPPORTED, reason="the ring is x86-64 only (see ipc/ring.py)")

CTX = multiprocessing.get_context("forkserver")
_U64 = struct.Struct("@Q")
RING_AGENTS = {name: f"ring_agents:{name}" for name in ("burst_then_sigkill", "big_and_small", "gated")}


class Pair:
    """A writer and a reader on one ring and one real pipe, as child and relay hold them."""

    def __init__(self, capacity: int) -> None:
        channel = RingChannel.create(capacity)
        r, w = CTX.Pipe(duplex=False)
        self.reader = RingReader(RingChannel(os.dup(channel.memfd), os.dup(channel.eventfd), capacity), r,
                                 max_frame_bytes=1 << 24)
        self.writer_efd = channel.eventfd
        self.writer = RingWriter(channel, w)

    def read_until(self, count: int, timeout: float = 20.0) -> list[Frame]:
        """Frames until they hold ``count`` events, waiting on the reader's fds as the relay does."""
        frames: list[Frame] = []
        while sum(len(f.events) for f in frames if isinstance(f, Batch)) < count:
            if not wait(list(self.reader.fds), timeout):
                raise AssertionError(f"no wake-up within {timeout} s")
            frames += self.reader.read()
            assert self.reader.error is None
        return frames

    def unread(self) -> int:
        mm = self.reader._mm
        return int(_U64.unpack_from(mm, 0)[0] - _U64.unpack_from(mm, 64)[0])

    def close(self) -> None:
        self.writer.close()
        os.close(self.writer_efd)
        self.writer._words.release()
        self.writer._mm.close()
        self.reader.close()


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(getattr(request, "param", 4096))
    yield p
    p.close()


def _event(i: int, pad: int = 0) -> bytes:
    return b'{"type":"CUSTOM","name":"i","value":%d,"pad":"%s"}' % (i, b"p" * pad)


def _events(frames: list[Frame]) -> list[bytes]:
    return [e for f in frames if isinstance(f, Batch) for e in f.events]


def _in_thread(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


@pytest.mark.timeout(30)
def test_the_ring_wraps_around_many_times_and_keeps_order(pair: Pair) -> None:
    sent = [_event(i, pad=i % 300) for i in range(3000)]  # records of 48..360 bytes: wraps land anywhere

    def produce() -> None:
        for data in sent:
            pair.writer.send_events([data])

    thread = _in_thread(produce)
    got = _events(pair.read_until(len(sent)))
    thread.join(10)
    assert got == sent
    assert pair.writer._head > 50 * 4096  # it went round the 4 KiB ring dozens of times


@pytest.mark.timeout(30)
def test_a_full_ring_blocks_the_producer_and_drops_nothing(pair: Pair) -> None:
    sent = [_event(i, pad=40) for i in range(200)]  # ~96-byte records: ~40 fill the 4 KiB ring
    done = threading.Event()

    def produce() -> None:
        for data in sent:
            pair.writer.send_events([data])
        done.set()

    thread = _in_thread(produce)
    wait_for(lambda: pair.unread() > 4096 - 96)  # full: no record fits any more
    assert not done.is_set()  # blocked, not overwriting
    assert pair.unread() <= 4096
    got = _events(pair.read_until(len(sent)))
    assert done.wait(10)
    thread.join(10)
    assert got == sent


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pair", [65536], indirect=True)
def test_frames_too_big_for_the_ring_go_over_the_pipe_in_emit_order(pair: Pair) -> None:
    # Over a quarter of the ring goes on the pipe; 200 KiB is more than the pipe's buffer too.
    sizes = [10, 200_000, 10, 10, 20_000, 300_000, 10]
    sent = [_event(i, pad=size) for i, size in enumerate(sizes * 3)]

    def produce() -> None:
        pair.writer.send(Ready(1))
        for data in sent[:10]:
            pair.writer.send_events([data])
        pair.writer.send_events(sent[10:])  # one batch mixing both paths
        pair.writer.send(Done("success", result=b"r" * 30_000))

    thread = _in_thread(produce)
    frames: list[Frame] = []
    while not any(isinstance(f, Done) for f in frames):
        assert wait(list(pair.reader.fds), 20)
        frames += pair.reader.read()
        assert pair.reader.error is None
    thread.join(10)
    assert isinstance(frames[0], Ready) and isinstance(frames[-1], Done)
    assert frames[-1].result == b"r" * 30_000
    assert _events(frames) == sent


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.mark.timeout(30)
def test_a_sleeping_relay_is_woken_once_per_sleep(pair: Pair) -> None:
    efd = pair.reader.channel.eventfd
    assert pair.reader.read() == []  # nothing there: the reader arms itself and may sleep
    assert not _readable(efd, 0)
    pair.writer.send_events([_event(0)])
    assert _readable(efd, 10)  # the producer saw it asleep and woke it
    for i in range(1, 50):
        pair.writer.send_events([_event(i)])
    assert os.eventfd_read(efd) == 1  # one wake-up for that sleep, not one per event
    assert _events(pair.reader.read()) == [_event(i) for i in range(50)]
    pair.writer.send_events([_event(50)])  # asleep again: a later event wakes it again
    assert _readable(efd, 10)
    assert _events(pair.reader.read()) == [_event(50)]


def _emit_in_bursts(channel: RingChannel, conn: object, n: int) -> None:
    """A real child: a burst of 1-20 events, then it waits until the reader has taken
    them all, and starts the next burst just as the reader goes back to sleep."""
    rng = random.Random(5)
    writer = RingWriter(channel, conn)  # type: ignore[arg-type]
    i = 0
    while i < n:
        for _ in range(rng.randint(1, 20)):
            if i < n:
                writer.send_events([_event(i)])
                i += 1
        deadline = time.monotonic() + 30
        while writer._words[8] != writer._head and time.monotonic() < deadline:  # word 8: the tail
            time.sleep(rng.choice((0, 0.00002)))


@pytest.mark.timeout(120)
def test_no_wake_up_is_lost_between_processes() -> None:
    """Every time the reader sleeps, the child must wake it: the child waits for the
    reader between bursts, so a lost wake-up hangs both (no safety net here, unlike
    the relay's once-a-second tick)."""
    n = 20_000
    channel = RingChannel.create(1 << 16)
    r, w = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_emit_in_bursts, args=(channel, w, n))
    proc.start()
    w.close()
    reader = RingReader(channel, r, max_frame_bytes=1 << 20)
    got: list[bytes] = []
    sleeps = 0
    try:
        while len(got) < n:
            if not wait(list(reader.fds), 0):
                sleeps += 1  # nothing ready: it blocks below until the child wakes it
                assert wait(list(reader.fds), 10), f"lost wake-up after {len(got)} events"
            got += _events(reader.read())
            assert reader.error is None
    finally:
        proc.join(30)
        reader.close()
    assert got == [_event(i) for i in range(n)]
    assert sleeps > 100  # the sleep/wake path was taken, many times


@pytest.mark.timeout(30)
@pytest.mark.parametrize("relay_state", ["asleep", "awake"])
def test_a_child_whose_supervisor_is_gone_fails_at_emit_long_before_the_ring_is_full(relay_state: str) -> None:
    pair = Pair(1 << 20)
    try:
        assert pair.reader.read() == []  # asleep
        if relay_state == "awake":  # died in the middle of a read: no wake-up is ever written
            pair.reader._set_epoch(awake=True)
        pair.writer.send_events([_event(0)])
        pair.reader._pipe.close()  # the supervisor's end of the pipe: gone, as when the daemon dies
        sent = 1

        def emit_fails() -> bool:
            nonlocal sent
            try:
                pair.writer.send_events([_event(sent)])
            except BrokenPipeError:
                return True
            sent += 1
            return False

        wait_for(emit_fails, timeout=10, interval=0.001)
        assert pair.writer._head < (1 << 20) // 2  # not the full ring: the pipe was asked
    finally:
        pair.writer.close()
        os.close(pair.writer_efd)
        pair.writer._words.release()
        pair.writer._mm.close()
        pair.reader._words.release()
        pair.reader._mm.close()
        pair.reader.channel.close()


@pytest.mark.timeout(30)
def test_a_child_that_scribbles_on_the_ring_fails_after_what_it_published(pair: Pair) -> None:
    pair.writer.send_events([_event(0), _event(1)])
    mm = pair.writer._mm
    head = pair.writer._head
    struct.pack_into("@II", mm, 4096 + head, 5, 9)  # a record of an unknown kind
    _U64.pack_into(mm, 0, head + 16)
    frames = pair.reader.read()
    assert _events(frames) == [_event(0), _event(1)]
    assert pair.reader.error is not None and "bad ring record" in pair.reader.error
    other = Pair(4096)
    try:
        _U64.pack_into(other.writer._mm, 0, 1 << 40)  # a head beyond the ring
        assert other.reader.read() == []
        assert other.reader.error is not None and "out of bounds" in other.reader.error
    finally:
        other.close()


# -- through a real Supervisor ---------------------------------------------------------


def _customs(sup: Supervisor, turn_id: str) -> tuple[list[object], ev.Event]:
    sup.wait(turn_id, 30)
    events = [e for _, e in sup.events(turn_id)]
    assert sum(isinstance(e, (ev.RunFinished, ev.RunError)) for e in events) == 1
    return [e.value for e in events if isinstance(e, ev.Custom)], events[-1]


@pytest.mark.timeout(120)
def test_every_event_emitted_before_a_sigkill_arrives(tmp_path: Path) -> None:
    """The child SIGKILLs itself the moment its last emit returns; some of what it
    published is still unread in the ring then, and must all be relayed first."""
    n = 20_000
    unread_at_kill = []
    with Supervisor(make_config(tmp_path, agents=RING_AGENTS)) as sup:
        for attempt in range(5):  # until a kill caught the relay behind (it usually does at once)
            report = tmp_path / f"unread-{attempt}"
            turn = sup.start_turn("burst_then_sigkill", {"n": n, "report": str(report)})
            values, end = _customs(sup, turn.turn_id)
            assert values == list(range(n)), (len(values), end)
            assert isinstance(end, ev.RunError) and end.code == "crashed"
            assert sup.status(turn.turn_id).signal == signal.SIGKILL
            unread_at_kill.append(int(report.read_text()))
            if unread_at_kill[-1] > 0:
                break
    assert unread_at_kill[-1] > 0, f"the relay was never behind at the kill: {unread_at_kill}"


@pytest.mark.timeout(60)
def test_big_events_go_over_the_pipe_in_order_through_the_relay(tmp_path: Path) -> None:
    config = make_config(tmp_path, agents=RING_AGENTS, ring_bytes=65536)
    with Supervisor(config) as sup:
        turn = sup.start_turn("big_and_small", {"n": 30, "big": 100_000})
        values, end = _customs(sup, turn.turn_id)
    assert isinstance(end, ev.RunFinished)
    assert [v["i"] for v in values] == list(range(30))  # type: ignore[index]
    assert [len(v["pad"]) for v in values] == [100_000 if i % 3 == 1 else 10 for i in range(30)]  # type: ignore[index]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ring_bytes", [0, 65536])
def test_a_relay_that_slept_gets_a_later_event(tmp_path: Path, ring_bytes: int) -> None:
    """The agent emits one event, then waits until the test has read it: between
    events the relay has nothing to do and sleeps; each event must wake it."""
    with Supervisor(make_config(tmp_path, agents=RING_AGENTS, ring_bytes=ring_bytes)) as sup:
        turn = sup.start_turn("gated", {"n": 5, "dir": str(tmp_path)})
        seen = []
        for _seq, event in sup.events(turn.turn_id, timeout=20):
            if isinstance(event, ev.Custom):
                seen.append(event.value)
                (tmp_path / f"go-{event.value}").touch()  # only now does the agent go on
        assert seen == list(range(5))
        assert isinstance(event, ev.RunFinished)
