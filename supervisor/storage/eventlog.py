"""The file backend of ``EventStore``: one append-only JSONL file per turn (and its compacted form).

Every line is one event as served, ``{"seq":N,"type":...}``. Reading after a
cursor binary-searches the file by byte offset and reading the tail reads
blocks backwards, so neither loads the whole file. Only complete lines count:
a write torn by a crash is never returned.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from supervisor.errors import InvalidTurnId, StateDirError
from supervisor.ids import validate_turn_id
from supervisor.logs import get_logger
from supervisor.storage.lines import line_seq, seq_or_none

log = get_logger("runnerd.eventlog")

_BLOCK = 64 * 1024
READ_BUDGET = 8 << 20  # bytes one read may return (always at least one line)
class FileEventLog:
    """The file backend of ``EventStore``: ``<state_dir>/turns/<id>.jsonl`` (+ ``.compact.jsonl``)."""

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

    # -- writing (relay thread) --------------------------------------------

    def create(self, turn_id: str) -> None:
        fd = os.open(self._log_path(turn_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fds[turn_id] = fd

    def reopen(self, turn_id: str) -> int:
        """Open an existing log for appending after cutting a torn last line; return its last seq."""
        path = self._log_path(turn_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with open(path, "rb") as f:
            end = self._complete_end(f)
        os.ftruncate(fd, end)
        self._fds[turn_id] = fd
        last = self.last_line(turn_id)
        return line_seq(last) if last is not None else 0

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

    def _compact_path(self, turn_id: str) -> Path:
        return self.dir / f"{validate_turn_id(turn_id)}.compact.jsonl"

    def write_compact(self, turn_id: str, lines: list[bytes]) -> None:
        """The compacted form, written whole and atomically (temp, fsync, rename)."""
        path = self._compact_path(turn_id)
        tmp = path.with_suffix(".tmp")
        with suppress(FileNotFoundError):
            tmp.unlink()  # a leftover from a crash may have another mode
        # 0600 like the raw log: the history is no one else's to read.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            for line in lines:
                f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read_compact(self, turn_id: str) -> list[bytes] | None:
        try:
            data = self._compact_path(turn_id).read_bytes()
        except FileNotFoundError:
            return None
        if data and not data.endswith(b"\n"):
            return None  # not written by write_compact: ignore it
        return data.splitlines()

    def has_raw(self, turn_id: str) -> bool:
        return self._log_path(turn_id).exists()

    def remove_raw(self, turn_id: str) -> int:
        """Delete the full log (the compacted form stays); return the bytes freed."""
        return unlink_file(self._log_path(turn_id))

    def remove(self, turn_id: str) -> int:
        """Delete the turn's events in both forms; return the bytes freed."""
        return unlink_file(self._log_path(turn_id)) + unlink_file(self._compact_path(turn_id))

    def size(self, turn_id: str) -> int:
        total = 0
        for path in (self._log_path(turn_id), self._compact_path(turn_id)):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    # -- reading (any thread) -----------------------------------------------

    def turn_ids(self) -> set[str]:
        """Every turn with events on disk (valid ids only)."""
        out = set()
        for p in self.dir.iterdir():
            if p.name.endswith(".jsonl") and not p.name.startswith("."):
                try:
                    out.add(validate_turn_id(p.name.split(".", 1)[0]))
                except InvalidTurnId:
                    continue  # not ours
        return out

    def last_line(self, turn_id: str) -> bytes | None:
        last = self.tail(turn_id, 1, 1 << 62)
        return last[0] if last else None

    def read_after(self, turn_id: str, after: int, limit: int, upto: int,
                   max_bytes: int = READ_BUDGET) -> list[bytes]:
        """Lines with ``after < seq <= upto``: at most ``limit`` of them and, past
        the first, at most ``max_bytes`` (replay memory is bounded in bytes)."""
        out: list[bytes] = []
        size = 0
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
                    seq = seq_or_none(line)
                    if seq is None or seq <= after:
                        continue
                    if seq > upto or (out and size + len(line) > max_bytes):
                        return out
                    out.append(line)
                    size += len(line)
                    if len(out) >= limit:
                        return out
        return out

    def tail(self, turn_id: str, limit: int, upto: int, max_bytes: int = READ_BUDGET) -> list[bytes]:
        """The last ``limit`` lines with ``seq <= upto`` (and, past the first, at most
        ``max_bytes``), read backwards in blocks."""
        if limit <= 0 or upto <= 0:
            return []
        with self._open(turn_id) as f:
            end = self._complete_end(f)
            found: list[bytes] = []
            held = 0
            carry = b""
            pos = end
            while pos > 0 and len(found) < limit:
                block = min(_BLOCK, pos)
                pos -= block
                f.seek(pos)
                lines = (f.read(block) + carry).split(b"\n")
                carry = lines.pop(0) if pos > 0 else b""  # may continue in the block before
                for line in reversed(lines):
                    seq = seq_or_none(line)
                    if seq is not None and seq <= upto:
                        if found and held + len(line) > max_bytes:
                            limit = len(found)  # the budget is spent: stop here
                            break
                        found.append(line)
                        held += len(line)
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
            seq = seq_or_none(line)
            if not line.endswith(b"\n") or seq is None or seq > after:
                hi = mid
            else:
                lo = start
        return lo


def unlink_file(path: Path) -> int:
    """Delete ``path`` if it is there; the bytes it held."""
    try:
        size = path.stat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0
