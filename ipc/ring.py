"""A shared-memory ring from a turn's process to the relay: no system call per event.

The supervisor creates, per turn, a ``memfd`` (the ring) and an ``eventfd``
(the wake-up) and hands both to the child as it hands it the pipe (file
descriptors duplicated through multiprocessing). The child is the only
producer, the relay the only consumer.

Layout: one header page, then ``capacity`` bytes of records. Each record is an
8-byte header (length, kind), the payload, and padding to 8 bytes. The header
page holds three 8-byte counters on separate cache lines: ``head`` (bytes
published, written by the child), ``tail`` (bytes consumed, written by the
relay) and ``epoch`` (the relay's sleep state: odd while it may block).

The SIGKILL promise: the child writes a record's bytes, then stores the new
``head`` (one aligned 8-byte store). ``emit`` returns after that store, so an
event whose emit returned is in memory the relay maps; the relay drains the
ring up to ``head`` after the child is gone, before the terminal event. x86-64
keeps stores in program order (TSO), so whoever sees a ``head`` sees the bytes
before it; other architectures do not, and get the pipe (``RING_SUPPORTED``).

The wake-up, and why none is lost. Producer: store ``head``, full fence, load
``epoch``; if odd (and not yet done for this epoch), write the eventfd, with the
GIL held (``ctypes.PyDLL``: a busy agent thread would otherwise take the GIL
for a 5 ms switch interval). Relay, before it may block: store an odd
``epoch``, full fence, load ``head``; if there is more, it does not sleep.
TSO may move a load before an earlier store; the fence forbids that on both
sides (Dekker's pattern), so either the child sees the odd epoch and wakes the
relay, or the relay sees the new head and does not sleep. Python has no fence
statement: a ``threading.Lock`` acquire or release is a locked
read-modify-write in glibc's semaphore, which x86-64 executes as a full
barrier. The child's fence is the release of its own write lock (the head is
stored inside it, the epoch loaded after it); the relay takes a lock of its
own. The relay also re-checks every ring once a second (its housekeeping
tick), so even a wake-up lost to a mistake here delays events, never loses them.

A full ring blocks the producer (never drops): it polls for space with a short,
growing sleep. A supervisor that went away (the pipe's read end closed) fails
``emit`` with ``BrokenPipeError``, as a pipe write would: ``emit`` asks the
pipe at most every 10 ms (a ``poll``, with the GIL held), and while waiting
for space. A record too big for the ring travels on the pipe: the child puts a
``PIPE`` marker in the ring first, so the relay reads ring and pipe in emit order.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import select
import struct
import threading
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from ipc.wire import Batch, Frame, FrameReader, decode_frame, encode_frame, write_frame

__all__ = ["RING_SUPPORTED", "RingChannel", "RingWriter", "RingReader", "DEFAULT_RING_BYTES"]

RING_SUPPORTED = platform.machine() in ("x86_64", "AMD64")
DEFAULT_RING_BYTES = 1 << 20

_PAGE = 4096
# Indexes of the three counters in the mapping seen as 8-byte words: separate cache lines.
_HEAD, _TAIL, _EPOCH = 0, 8, 16
# The counters are read and written through ``memoryview(mm).cast("Q")``: CPython moves one
# item with a memcpy of 8 bytes, compiled to one aligned load or store (single-copy
# atomic). Not ``struct.pack_into``: it zeroes the bytes first, and a reader that
# looks in between sees a counter of 0.
_REC = struct.Struct("@II")  # payload length, kind
_EVENT, _FRAME, _PIPE, _WRAP = 1, 2, 3, 4
_BACKOFF_S = (0.00002, 0.001)  # producer waiting for space: first and longest sleep

_fence_lock = threading.Lock()


def _fence() -> None:
    """A full memory barrier on x86-64 (see the module doc): a locked RMW acquire, another on release."""
    _fence_lock.acquire()
    _fence_lock.release()


class RingChannel:
    """The two descriptors of one turn's ring; pickled to the child as duplicated fds."""

    def __init__(self, memfd: int, eventfd: int, capacity: int) -> None:
        self.memfd = memfd
        self.eventfd = eventfd
        self.capacity = capacity

    @classmethod
    def create(cls, capacity: int) -> RingChannel:
        if capacity < _PAGE or capacity & 7:
            raise ValueError(f"ring capacity must be a multiple of 8 and at least {_PAGE}")
        memfd = os.memfd_create("runnerd-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, _PAGE + capacity)
            eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            os.close(memfd)
            raise
        channel = cls(memfd, eventfd, capacity)
        channel._write(_EPOCH, 1)  # the relay starts asleep: the first event wakes it
        return channel

    def _write(self, index: int, value: int) -> None:
        with mmap.mmap(self.memfd, _PAGE) as mm, memoryview(mm) as view, view.cast("Q") as words:
            words[index] = value

    def map(self) -> mmap.mmap:
        return mmap.mmap(self.memfd, _PAGE + self.capacity)

    def close_memfd(self) -> None:
        """The mapping keeps the memory; the descriptor is only needed to hand it on."""
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1

    def close(self) -> None:
        """Both descriptors (a channel whose turn never started)."""
        self.close_memfd()
        if self.eventfd >= 0:
            os.close(self.eventfd)
            self.eventfd = -1

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (reduction.DupFd(self.memfd), reduction.DupFd(self.eventfd), self.capacity)


def _rebuild(memfd: Any, eventfd: Any, capacity: int) -> RingChannel:
    return RingChannel(memfd.detach(), eventfd.detach(), capacity)


# libc's write(2) and poll(2) called with the GIL held (see the module doc).
_libc = ctypes.PyDLL(None, use_errno=True)
_libc_write = _libc.write
_libc_write.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_libc_write.restype = ctypes.c_ssize_t
_ONE = ctypes.c_uint64(1)


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


_libc_poll = _libc.poll
_libc_poll.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int)
_libc_poll.restype = ctypes.c_int
_GONE_CHECK_S = 0.01  # how often emit asks whether the supervisor is gone


class RingWriter:
    """Child side: ``send``/``send_events`` return once the bytes are published in the ring."""

    def __init__(self, channel: RingChannel, conn: Connection) -> None:
        self._mm = channel.map()
        self._words = memoryview(self._mm).cast("Q")
        channel.close_memfd()
        self._efd = channel.eventfd
        self._cap = channel.capacity
        self._max_record = channel.capacity // 4  # bigger goes on the pipe
        self._conn = conn
        self._fd = conn.fileno()
        self._lock = threading.Lock()
        self._head: int = self._words[_HEAD]
        self._tail: int = self._words[_TAIL]  # a cached copy; refreshed when short of space
        self._woken = 0  # the relay's sleep epoch this process last woke
        self._closed = False
        self._pollfd = _PollFd(self._fd, 0, 0)  # no events asked: only POLLERR, the read end closed
        self._next_check = 0.0

    def send(self, frame: Frame) -> None:
        with self._lock:
            self._check_open()
            self._put(_FRAME, encode_frame(frame))
            self._words[_HEAD] = self._head
        self._wake_if_asleep()

    def send_events(self, events: list[bytes]) -> None:
        """The hot path, inlined: a record per event, then one store publishes them all."""
        with self._lock:  # its release is a locked RMW too: the fence before the epoch load
            if self._closed:
                self._check_open()
            mm, cap, head = self._mm, self._cap, self._head
            for data in events:
                n = len(data)
                size = (n + 15) & ~7  # header + payload, padded to 8
                pos = head % cap
                if pos + size > cap or head + size - self._tail > cap or n > self._max_record:
                    self._head = head  # wrap, full or too big: the general path
                    self._put(_EVENT, data)
                    head = self._head
                    continue
                start = _PAGE + pos
                _REC.pack_into(mm, start, n, _EVENT)
                mm[start + 8:start + 8 + n] = data
                head += size
            self._head = head
            self._words[_HEAD] = head  # the publish: one aligned store
        epoch = self._words[_EPOCH]
        if epoch & 1 and epoch != self._woken:
            self._wake(epoch)
        else:
            self._check_reader()

    def _put(self, kind: int, data: bytes) -> None:
        n = len(data)
        if n > self._max_record:
            self._via_pipe(kind, data)
            return
        size = (n + 15) & ~7  # header + payload, padded to 8
        pos = self._head % self._cap
        skip = self._cap - pos if pos + size > self._cap else 0  # no room before the end: wrap
        self._reserve(skip + size)
        mm = self._mm
        if skip:
            _REC.pack_into(mm, _PAGE + pos, 0, _WRAP)
            self._head += skip
            pos = 0
        _REC.pack_into(mm, _PAGE + pos, n, kind)
        start = _PAGE + pos + 8
        mm[start:start + n] = data
        self._head += size

    def _reserve(self, size: int) -> None:
        if self._head + size - self._tail <= self._cap:
            return
        self._tail = self._words[_TAIL]
        delay = _BACKOFF_S[0]
        while self._head + size - self._tail > self._cap:
            # Full: let the relay see what is there, make sure it is awake, and wait.
            self._words[_HEAD] = self._head
            self._woken = 0
            self._wake_if_asleep()
            self._sleep(delay)
            delay = min(delay * 2, _BACKOFF_S[1])
            self._tail = self._words[_TAIL]

    def _sleep(self, seconds: float) -> None:
        """Sleep (``poll`` counts whole milliseconds, too coarse here), then notice a
        supervisor that is gone (a pipe write end reports POLLERR)."""
        time.sleep(seconds)
        poller = select.poll()
        poller.register(self._fd, 0)
        if poller.poll(0):
            raise BrokenPipeError("the supervisor closed the turn's channel")

    def _via_pipe(self, kind: int, data: bytes) -> None:
        """A marker in the ring, then the frame on the pipe: the relay reads them in this order."""
        self._reserve(8)
        pos = self._head % self._cap
        _REC.pack_into(self._mm, _PAGE + pos, 0, _PIPE)  # 8 bytes always fit: records are 8-aligned
        self._head += 8
        self._words[_HEAD] = self._head
        self._wake_if_asleep()
        write_frame(self._fd, data if kind == _FRAME else encode_frame(Batch([data])))

    def _wake_if_asleep(self) -> None:
        _fence()  # the head store before the epoch load (see the module doc)
        epoch = self._words[_EPOCH]
        if epoch & 1 and epoch != self._woken:
            self._wake(epoch)
        else:
            self._check_reader()

    def _wake(self, epoch: int) -> None:
        """The relay may sleep: wake it, once per sleep, keeping the GIL."""
        self._woken = epoch
        if _libc_write(self._efd, ctypes.byref(_ONE), 8) < 0 and ctypes.get_errno() != errno.EAGAIN:
            raise OSError(ctypes.get_errno(), "eventfd write failed")

    def _check_reader(self) -> None:
        """Every 10 ms of emits, ask the pipe whether the supervisor is gone, as a write
        to it would tell (no system call per event would not tell us otherwise)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + _GONE_CHECK_S
            if _libc_poll(ctypes.byref(self._pollfd), 1, 0) > 0:  # keeps the GIL too
                raise BrokenPipeError("the supervisor closed the turn's channel")

    def _check_open(self) -> None:
        if self._closed:  # as a write to a closed pipe fails
            raise OSError(errno.EBADF, "the turn's channel is closed")

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._conn.close()


class RingReader:
    """Relay side: drains the ring (and the pipe, where a marker says so) into frames.

    The child is not trusted: every counter and record is bounds-checked, and
    anything out of place sets ``error`` after returning the frames before it.
    """

    def __init__(self, channel: RingChannel, conn: Connection, *, max_frame_bytes: int) -> None:
        self._mm = channel.map()
        self._words = memoryview(self._mm).cast("Q")
        channel.close_memfd()
        self.channel = channel
        self._cap = channel.capacity
        self._pipe = FrameReader(conn, max_frame_bytes=max_frame_bytes)
        self._tail = 0  # ours alone: never read back from shared memory
        self._epoch = 1
        self._on_pipe = 0  # markers consumed whose frame has not come off the pipe yet
        self.error: str | None = None

    @property
    def fds(self) -> tuple[int, ...]:
        return self._pipe.fd, self.channel.eventfd

    @property
    def eof(self) -> bool:
        return self._pipe.eof

    def pending(self) -> bool:
        """Anything published that has not been read (the relay's once-a-second safety net)."""
        return self.error is None and self._words[_HEAD] != self._tail

    def read(self) -> list[Frame]:
        """Everything published so far, in emit order; never blocks."""
        try:
            os.eventfd_read(self.channel.eventfd)
        except BlockingIOError:
            pass
        self._set_epoch(awake=True)
        frames: list[Frame] = []
        self._drain(frames)
        if self.error is None and not self._pipe.eof:
            self._set_epoch(awake=False)
            _fence()  # the epoch store before the head load
            if self._words[_HEAD] != self._tail:
                # More came in: stay awake and come back at once, without the child's help.
                self._set_epoch(awake=True)
                os.eventfd_write(self.channel.eventfd, 1)
        return frames

    def _set_epoch(self, *, awake: bool) -> None:
        if bool(self._epoch & 1) == awake:
            self._epoch += 1
            self._words[_EPOCH] = self._epoch

    def _drain(self, frames: list[Frame]) -> None:
        pipe_frames = self._pipe.read()
        pipe_frames.reverse()  # popped from the end, oldest first
        while self._on_pipe and pipe_frames:
            frames.append(pipe_frames.pop())
            self._on_pipe -= 1
        if not self._on_pipe:  # else the ring waits behind the frame still on the pipe
            self._drain_ring(frames, pipe_frames)
        if self.error is None and self._pipe.error:  # after the ring: what came before is kept
            self.error = self._pipe.error
        elif self.error is None and pipe_frames:
            self.error = "a frame on the pipe that the ring did not announce"

    def _drain_ring(self, frames: list[Frame], pipe_frames: list[Frame]) -> None:
        head: int = self._words[_HEAD]
        if head < self._tail or head - self._tail > self._cap or head & 7:
            self.error = f"ring head {head} out of bounds (tail {self._tail})"
            return
        mm, cap, tail = self._mm, self._cap, self._tail
        events: list[bytes] = []
        while tail < head:
            pos = tail % cap
            n, kind = _REC.unpack_from(mm, _PAGE + pos)
            size = (n + 15) & ~7
            if kind == _EVENT and pos + size <= cap and tail + size <= head:
                start = _PAGE + pos + 8
                events.append(mm[start:start + n])
                tail += size
                continue
            if events:
                frames.append(Batch(events))
                events = []
            if kind == _WRAP and n == 0 and tail + cap - pos <= head:
                tail += cap - pos
            elif kind == _FRAME and pos + size <= cap and tail + size <= head:
                start = _PAGE + pos + 8
                try:
                    frames.append(decode_frame(mm[start:start + n]))
                except msgspec.DecodeError as exc:
                    self.error = f"undecodable frame in the ring: {exc}"
                    break
                tail += size
            elif kind == _PIPE and n == 0:
                tail += 8
                if pipe_frames:
                    frames.append(pipe_frames.pop())
                else:
                    self._on_pipe += 1
                    break
            else:
                self.error = f"bad ring record (kind {kind}, {n} bytes) at {tail}"
                break
        if events:
            frames.append(Batch(events))
        self._tail = tail
        self._words[_TAIL] = tail

    def close(self) -> None:
        self._pipe.close()
        self._words.release()
        self._mm.close()
        self.channel.close()
