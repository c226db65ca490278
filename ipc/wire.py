"""Typed frames over a multiprocessing Pipe, and the two ends that move them.

(By default events take the shared-memory ring, ``ipc/ring.py``; the pipe still
carries what is too big for it, and everything when the ring is off.)

The child writes synchronously with ``Connection.send_bytes`` (one ``write``
for a small frame): no feeder thread, so an event whose ``emit`` returned is
already in the kernel pipe and survives a SIGKILL of the child. Threads that
emit while another write is in flight are coalesced into one frame (group
commit). The parent reads the raw fd in large non-blocking chunks and splits
frames itself, so one wake-up of the relay handles every frame in the pipe.
"""

from __future__ import annotations

import os
import struct
import threading
from multiprocessing.connection import Connection
from typing import Protocol, Union

import msgspec

__all__ = [
    "Ready", "Batch", "Done", "Frame", "FrameWriter", "FrameReader",
    "encode_frame", "decode_frame", "write_frame", "FrameSink", "EVENT_PREFIX", "FRAME_BUDGET",
    "max_frame_bytes",
]

# msgspec writes the tag first, so every valid encoded event starts with this.
EVENT_PREFIX = b'{"type":"'


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """The agent was imported; the turn is running."""

    pid: int


class Batch(msgspec.Struct, tag="batch", array_like=True):
    """Pre-encoded AG-UI events (JSON), in emit order."""

    events: list[bytes]


class Done(msgspec.Struct, tag="done", array_like=True):
    """The child's own account of how the agent ended, sent just before exit.

    ``outcome`` is ``success`` (``result`` is JSON or empty), ``cancelled``,
    ``agent_error`` or ``agent_unavailable`` (``message`` says why).
    """

    outcome: str
    result: bytes = b""
    message: str = ""


Frame = Union[Ready, Batch, Done]

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)
_HEADER = struct.Struct("!i")  # multiprocessing.Connection's own framing
_BIG_HEADER = struct.Struct("!Q")


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(data: bytes | memoryview) -> Frame:
    return _decoder.decode(data)


def write_frame(fd: int, payload: bytes) -> None:
    """``Connection.send_bytes``' framing, in one ``write(2)`` for small frames."""
    size = len(payload)
    data = _HEADER.pack(size) + payload if size < 0x7FFFFFFF else (
        _HEADER.pack(-1) + _BIG_HEADER.pack(size) + payload)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FrameSink(Protocol):
    """What the child's ``TurnContext`` writes to: the pipe (``FrameWriter``) or the ring."""

    def send(self, frame: Frame) -> None: ...

    def send_events(self, events: list[bytes]) -> None: ...

    def close(self) -> None: ...


FRAME_BUDGET = 4 << 20  # bytes of events per frame: the reader's limit is this plus one event


def _split_batch(events: list[bytes]) -> list[list[bytes]]:
    frames: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for event in events:
        if current and size + len(event) > FRAME_BUDGET:
            frames.append(current)
            current, size = [], 0
        current.append(event)
        size += len(event)
    if current:
        frames.append(current)
    return frames


def max_frame_bytes(max_event_bytes: int) -> int:
    """What a reader must accept: a full frame plus one event, plus msgpack overhead."""
    return FRAME_BUDGET + max_event_bytes + 64 * 1024


class FrameWriter:
    """Child side: write frames synchronously; coalesce concurrent emitters."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[bytes] = []

    def send(self, frame: Frame) -> None:
        with self._write_lock:
            self._write(_encoder.encode(frame))

    def send_events(self, events: list[bytes]) -> None:
        """Return only once ``events`` are in the pipe.

        Uncontended (the common case), the events go out at once as one frame.
        A thread that finds another write in flight leaves its events in
        ``_pending``; whoever takes the write lock next sends all of them as
        one frame, so a backlog becomes one write instead of many.
        """
        if not self._pending and self._write_lock.acquire(blocking=False):
            try:
                for frame in _split_batch(events):
                    self._write(_encoder.encode(Batch(frame)))
            finally:
                self._write_lock.release()
            return  # a thread queued behind us flushes its own events
        with self._pending_lock:
            self._pending.extend(events)
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            # empty: a thread before us already wrote our events
            for frame in _split_batch(batch):
                self._write(_encoder.encode(Batch(frame)))

    def _write(self, payload: bytes) -> None:
        write_frame(self._fd, payload)

    def close(self) -> None:
        self._conn.close()


class FrameReader:
    """Parent side: non-blocking chunked reads, split into decoded frames."""

    def __init__(self, conn: Connection, *, max_frame_bytes: int) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._buf = bytearray()
        self._max = max_frame_bytes
        self.eof = False
        self.error: str | None = None

    @property
    def fds(self) -> tuple[int, ...]:
        """What the relay waits on for this reader."""
        return (self.fd,)

    def pending(self) -> bool:
        """Published but unread without a wake-up: never, for a pipe (its fd says so)."""
        return False

    def read(self, chunk: int = 1 << 20) -> list[Frame]:
        """Read what the pipe holds now (never blocks) and return whole frames.

        On garbage, ``error`` is set and the frames before it are still
        returned: nothing the child wrote correctly is lost.
        """
        while not self.eof and self.error is None:
            try:
                data = os.read(self.fd, chunk)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            self._buf += data
            if len(data) < chunk:
                break
        return self._split()

    def _split(self) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            while self.error is None and end - pos >= 4:
                (size,) = _HEADER.unpack_from(view, pos)
                start = pos + 4
                if size == -1:  # Connection's header for frames >= 2 GiB
                    if end - start < 8:
                        break
                    (size,) = _BIG_HEADER.unpack_from(view, start)
                    start += 8
                if size < 0 or size > self._max:
                    self.error = f"frame of {size} bytes (limit {self._max})"
                    break
                if end - start < size:
                    break
                try:
                    frames.append(_decoder.decode(view[start:start + size]))
                except msgspec.DecodeError as exc:
                    self.error = f"undecodable frame: {exc}"
                    break
                pos = start + size
        del buf[:pos]
        return frames

    @property
    def partial(self) -> int:
        """Bytes of an incomplete frame left in the buffer."""
        return len(self._buf)

    def close(self) -> None:
        self.conn.close()
