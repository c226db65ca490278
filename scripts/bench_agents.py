"""Agents and baseline child targets for ``scripts/bench_core.py``.

Imported by name in the turn's process (and in baseline children), so it
must stay cheap to import and must not import the benchmark itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ipc import events as ev
from ipc.ring import RingChannel, RingWriter
from worker.context import TurnContext

IMPORTED_IN_PID = os.getpid()  # a forkserver that preloaded us has another pid than the turn

# ~100-byte events: these payloads encode to 100 +- 6 bytes.
TEXT_DELTA = "x" * 6
LAT_PAD = "y" * 4
RAW_EVENT = (b'{"type":"TEXT_MESSAGE_CONTENT","timestamp":1700000000000,'
             b'"messageId":"msg-bench-1","delta":"' + TEXT_DELTA.encode() + b'"}')


class _Putter(Protocol):
    def put(self, obj: Any) -> None: ...


# -- busy work -------------------------------------------------------------------


def spin_until(deadline_ns: int) -> None:
    """Burn CPU in pure Python (no sleep, no syscall but the clock) until ``deadline_ns``."""
    acc = 0
    while time.monotonic_ns() < deadline_ns:
        for k in range(20):
            acc += k * k


def _burner(stop: threading.Event) -> None:
    """A CPU-bound background thread: competes for the GIL, never sleeps."""
    while not stop.is_set():
        sum(i * i for i in range(2000))


class Pacer:
    """Releases the i-th event at ``t0 + i / rate`` (catching up when late).

    Idle mode sleeps until the next slot; busy mode burns CPU until it, and
    also runs a CPU-bound background thread, as a child doing real work would.
    """

    def __init__(self, rate: float, busy: bool) -> None:
        self.period_ns = int(1e9 / rate)
        self.busy = busy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = time.monotonic_ns()

    def __enter__(self) -> Pacer:
        if self.busy:
            self._thread = threading.Thread(target=_burner, args=(self._stop,), daemon=True)
            self._thread.start()
        self.t0 = time.monotonic_ns()
        return self

    def wait_slot(self, i: int) -> None:
        slot = self.t0 + i * self.period_ns
        if self.busy:
            spin_until(slot)
            return
        delay = slot - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# -- runnerd agents ----------------------------------------------------------------


def noop(ctx: TurnContext, input: Any) -> None:
    """Returns at once: start-up cost only."""


def preload_probe(ctx: TurnContext, input: Any) -> None:
    """Reports whether this module came preloaded from the forkserver."""
    ctx.custom("preloaded", IMPORTED_IN_PID != os.getpid())


def flood(ctx: TurnContext, input: Any) -> None:
    """Emits ``n`` ~100-byte TEXT_MESSAGE_CONTENT events (in one started message) as fast as it can.

    ``batch`` = 1 streams one ``emit`` per token (the common agent loop);
    ``batch`` > 1 uses ``emit_many`` (the agent batches itself).
    """
    n = int(input["n"])
    batch = int(input.get("batch", 1))
    message_id = "msg-bench-1"
    ctx.emit(ev.TextMessageStart(message_id=message_id))  # content only for a started message
    if batch <= 1:
        for _ in range(n):
            ctx.emit(ev.TextMessageContent(message_id=message_id, delta=TEXT_DELTA))
    else:
        for start in range(0, n, batch):
            ctx.emit_many([ev.TextMessageContent(message_id=message_id, delta=TEXT_DELTA)
                           for _ in range(min(batch, n - start))])
    ctx.emit(ev.TextMessageEnd(message_id=message_id))


def paced(ctx: TurnContext, input: Any) -> None:
    """Emits CUSTOM "lat" events at ``rate``/s for ``seconds``, stamped with monotonic_ns.

    Ends with CUSTOM "emit_stats": how long ``emit`` itself took in this process
    (stamp -> back from the pipe write), the child's share of the latency.
    """
    n = int(float(input["rate"]) * float(input["seconds"]))
    inside: list[int] = []
    with Pacer(float(input["rate"]), bool(input.get("busy"))) as pacer:
        for i in range(n):
            pacer.wait_slot(i)
            t = time.monotonic_ns()
            ctx.custom("lat", {"t": t, "i": i, "pad": LAT_PAD})
            inside.append(time.monotonic_ns() - t)
    inside.sort()
    ctx.custom("emit_stats", {"p50_ns": inside[len(inside) // 2],
                              "p99_ns": inside[max(0, -(-99 * len(inside) // 100) - 1)],
                              "max_ns": inside[-1]})


def cooperative(ctx: TurnContext, input: Any) -> None:
    """Polls the cancel token in a tight loop with tiny sleeps."""
    ctx.custom("ready", os.getpid())
    while True:
        ctx.check_cancelled()
        time.sleep(0.0005)


def _sleep_forever() -> None:
    try:
        while True:
            time.sleep(0.05)
    finally:
        os._exit(0)  # never run the parent's Python clean-up in a forked copy


def stubborn(ctx: TurnContext, input: Any) -> None:
    """Ignores SIGTERM and the token; leaves 3 grandchildren that ignore SIGTERM too.

    Two are plain forks (same process group); the third leaves the group with
    ``setsid`` and double-forks, so it is re-parented away from the turn.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the forks below
    pids: list[int] = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            _sleep_forever()
        pids.append(pid)
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(r)
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            _sleep_forever()
        os._exit(0)
    os.close(w)
    pids.append(int(os.read(r, 32)))
    os.close(r)
    os.waitpid(middle, 0)
    ctx.custom("pids", {"agent": os.getpid(), "grandchildren": pids})
    while True:  # never looks at the token
        time.sleep(0.01)


# -- baseline children (plain multiprocessing) ---------------------------------------


def ping(conn: Connection) -> None:
    """Start-up baseline: tell the parent we run."""
    conn.send_bytes(b"up")
    conn.close()


def raw_pipe_writer(conn: Connection, n: int, per_frame: int) -> None:
    """The raw limit: pre-encoded events, ``per_frame`` joined per ``send_bytes``."""
    frame = b"\n".join([RAW_EVENT] * per_frame)
    for _ in range(n // per_frame):
        conn.send_bytes(frame)
    conn.close()


def raw_ring_writer(channel: RingChannel, conn: Connection, n: int, per_frame: int) -> None:
    """The ring's own limit: the same pre-encoded events, ``per_frame`` per ``send_events``."""
    writer = RingWriter(channel, conn)
    batch = [RAW_EVENT] * per_frame
    for _ in range(n // per_frame):
        writer.send_events(batch)
    conn.close()


def queue_writer(q: _Putter, n: int) -> None:
    """The naive pattern: one dict per ``Queue.put`` (pickled by the feeder thread)."""
    for _ in range(n):
        q.put({"type": "TEXT_MESSAGE_CONTENT", "timestamp": time.time_ns() // 1_000_000,
               "messageId": "msg-bench-1", "delta": TEXT_DELTA})
    q.put(None)


def queue_paced(q: _Putter, rate: float, seconds: float, busy: bool) -> None:
    """``paced`` for the naive pattern: same payload, same pacing, same busy work."""
    with Pacer(rate, busy) as pacer:
        for i in range(int(rate * seconds)):
            pacer.wait_slot(i)
            q.put({"type": "CUSTOM", "name": "lat",
                   "value": {"t": time.monotonic_ns(), "i": i, "pad": LAT_PAD}})
    q.put(None)
