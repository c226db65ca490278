"""ipc.wire: frames through a real multiprocessing Pipe."""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.connection import Connection

import pytest

from ipc.wire import Batch, Done, FrameReader, FrameWriter, Ready, encode_frame

CTX = multiprocessing.get_context("forkserver")


def _emit_then_die(conn: Connection, n: int) -> None:
    writer = FrameWriter(conn)
    writer.send(Ready(os.getpid()))
    for i in range(n):
        writer.send_events([b'{"type":"CUSTOM","name":"i","value":%d}' % i])
    os.kill(os.getpid(), signal.SIGKILL)  # right after the last emit returned


def _read_all(reader: FrameReader) -> list[object]:
    frames: list[object] = []
    while not reader.eof:
        frames += reader.read()
    return frames


@pytest.mark.timeout(20)
def test_every_event_whose_emit_returned_survives_sigkill() -> None:
    r, w = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_emit_then_die, args=(w, 5000))
    p.start()
    w.close()
    reader = FrameReader(r, max_frame_bytes=1 << 20)
    frames = []
    while not reader.eof:  # blocking-free reads; wait on the fd between them
        multiprocessing.connection.wait([reader.fd], 5)
        frames += reader.read()
    p.join(5)
    assert p.exitcode == -signal.SIGKILL
    assert isinstance(frames[0], Ready)
    values = [e for f in frames[1:] for e in f.events]  # type: ignore[attr-defined]
    assert values == [b'{"type":"CUSTOM","name":"i","value":%d}' % i for i in range(5000)]
    r.close()


def test_frames_split_across_reads_and_garbage_keeps_what_came_before() -> None:
    r, w = multiprocessing.Pipe(duplex=False)
    reader = FrameReader(r, max_frame_bytes=1024)
    w.send_bytes(encode_frame(Batch([b"a", b"b"])))
    w.send_bytes(encode_frame(Done("success", result=b"1")))
    w.send_bytes(b"\xc1garbage")  # 0xc1 is never valid msgpack
    w.send_bytes(encode_frame(Done("success")))
    frames = reader.read(chunk=3)  # tiny reads: frames straddle chunk boundaries
    assert frames == [Batch([b"a", b"b"]), Done("success", result=b"1")]
    assert reader.error is not None and "undecodable" in reader.error
    w.close()
    r.close()


def test_an_oversized_frame_header_is_an_error_not_an_allocation() -> None:
    r, w = multiprocessing.Pipe(duplex=False)
    reader = FrameReader(r, max_frame_bytes=1024)
    os.write(w.fileno(), (2_000_000).to_bytes(4, "big"))
    assert reader.read() == []
    assert reader.error is not None and "limit 1024" in reader.error
    w.close()
    r.close()


def test_eof_is_seen() -> None:
    r, w = multiprocessing.Pipe(duplex=False)
    reader = FrameReader(r, max_frame_bytes=1024)
    w.send_bytes(encode_frame(Ready(1)))
    w.close()
    assert _read_all(reader) == [Ready(1)]
    assert reader.eof and reader.partial == 0
    r.close()
