"""Durable event log: one append-only JSONL file per turn plus a metadata file.

Every line is one event as served, ``{"seq":N,"type":...}``. Reading after a
cursor binary-searches the file by byte offset and reading the tail reads
blocks backwards, so neither loads the whole file. Only complete lines count:
a write torn by a crash is never returned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec

from supervisor.errors import StateDirError
from supervisor.ids import validate_turn_id
from supervisor.turns import TurnInfo

_BLOCK = 64 * 1024
_SEQ_PREFIX = b'{"seq":'


def line_seq(line: bytes) -> int:
    """The seq of one stored line (written first, so no JSON decode is needed)."""
    return int(line[7:line.index(b",", 7)])


class EventLog(Protocol):
    """What the supervisor needs from durable storage; a Redis Streams backend fits too."""

    def create(self, info: TurnInfo) -> None: ...
    def append(self, turn_id: str, lines: list[bytes]) -> None: ...
    def close(self, turn_id: str) -> None: ...
    def write_meta(self, info: TurnInfo) -> None: ...
    def read_meta(self, turn_id: str) -> TurnInfo | None: ...
    def list_meta(self) -> list[TurnInfo]: ...
    def read_after(self, turn_id: str, after: int, limit: int, upto: int) -> list[bytes]: ...
    def tail(self, turn_id: str, limit: int, upto: int) -> list[bytes]: ...


_meta_decoder = msgspec.json.Decoder(TurnInfo)


class FileEventLog:
    """``<state_dir>/turns/<id>.jsonl`` and ``<id>.meta.json``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "turns"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StateDirError(f"state directory {self.dir} is not usable: {exc.strerror}") from None
        self._fds: dict[str, int] = {}  # open append fds, owned by the relay thread

    def _log_path(self, turn_id: str) -> Path:
        return self.dir / f"{validate_turn_id(turn_id)}.jsonl"

    def _meta_path(self, turn_id: str) -> Path:
        return self.dir / f"{validate_turn_id(turn_id)}.meta.json"

    # -- writing (relay thread) --------------------------------------------

    def create(self, info: TurnInfo) -> None:
        fd = os.open(self._log_path(info.turn_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fds[info.turn_id] = fd
        self.write_meta(info)

    def reopen(self, turn_id: str) -> int:
        """Open an existing log for appending after cutting a torn last line; return its last seq."""
        path = self._log_path(turn_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with open(path, "rb") as f:
            end = self._complete_end(f)
        os.ftruncate(fd, end)
        self._fds[turn_id] = fd
        last = self.tail(turn_id, 1, 1 << 62)
        return line_seq(last[0]) if last else 0

    def append(self, turn_id: str, lines: list[bytes]) -> None:
        fd = self._fds[turn_id]
        data = b"\n".join(lines) + b"\n"
        view = memoryview(data)
        while view:  # one write per batch; loop only on a short write
            written = os.write(fd, view)
            view = view[written:]

    def close(self, turn_id: str) -> None:
        fd = self._fds.pop(turn_id, None)
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_meta(self, info: TurnInfo) -> None:
        """Replace atomically: temp file, fsync, rename."""
        path = self._meta_path(info.turn_id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, msgspec.json.encode(info))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # -- reading (any thread) -----------------------------------------------

    def read_meta(self, turn_id: str) -> TurnInfo | None:
        try:
            return _meta_decoder.decode(self._meta_path(turn_id).read_bytes())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            return None

    def list_meta(self) -> list[TurnInfo]:
        out = []
        for path in sorted(self.dir.glob("*.meta.json")):
            try:
                out.append(_meta_decoder.decode(path.read_bytes()))
            except (OSError, msgspec.DecodeError):
                continue  # a half-written or foreign file is not a turn
        return out

    def read_after(self, turn_id: str, after: int, limit: int, upto: int) -> list[bytes]:
        """Lines with ``after < seq <= upto``, at most ``limit`` of them."""
        out: list[bytes] = []
        if limit <= 0 or after >= upto:
            return out
        with self._open(turn_id) as f:
            pos = self._find(f, after)
            f.seek(pos)
            rest = b""
            while len(out) < limit:
                block = f.read(_BLOCK * 4)
                if not block:
                    break
                lines = (rest + block).split(b"\n")
                rest = lines.pop()  # incomplete (or empty after a final newline)
                for line in lines:
                    seq = line_seq(line)
                    if seq <= after:
                        continue
                    if seq > upto:
                        return out
                    out.append(line)
                    if len(out) >= limit:
                        return out
        return out

    def tail(self, turn_id: str, limit: int, upto: int) -> list[bytes]:
        """The last ``limit`` lines with ``seq <= upto``, read backwards in blocks."""
        if limit <= 0 or upto <= 0:
            return []
        with self._open(turn_id) as f:
            end = self._complete_end(f)
            found: list[bytes] = []
            carry = b""
            pos = end
            while pos > 0 and len(found) < limit:
                size = min(_BLOCK, pos)
                pos -= size
                f.seek(pos)
                lines = (f.read(size) + carry).split(b"\n")
                carry = lines.pop(0) if pos > 0 else b""  # may continue in the block before
                for line in reversed(lines):
                    if line and line_seq(line) <= upto:
                        found.append(line)
                        if len(found) >= limit:
                            break
            found.reverse()
            return found

    @staticmethod
    def _complete_end(f: BinaryIO) -> int:
        """Offset just past the last newline: a torn final write is left out."""
        pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            size = min(_BLOCK, pos)
            f.seek(pos - size)
            i = f.read(size).rfind(b"\n")
            if i >= 0:
                return pos - size + i + 1
            pos -= size
        return 0

    def _open(self, turn_id: str) -> BinaryIO:
        try:
            return open(self._log_path(turn_id), "rb")
        except FileNotFoundError:
            from supervisor.errors import UnknownTurn
            raise UnknownTurn(f"no event log for turn {turn_id}") from None

    @staticmethod
    def _find(f: BinaryIO, after: int) -> int:
        """Byte offset of a line at or before the first line with ``seq > after``."""
        if after <= 0:
            return 0
        lo, hi = 0, f.seek(0, os.SEEK_END)
        while hi - lo > _BLOCK:
            mid = (lo + hi) // 2
            f.seek(mid)
            f.readline()  # skip to the next line start
            start = f.tell()
            line = f.readline()
            if not line.endswith(b"\n") or line_seq(line) > after:
                hi = mid
            else:
                lo = start
        return lo
