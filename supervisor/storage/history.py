"""The history keeper: one background thread that compacts finished turns and prunes.

One turn at a time (so compaction never competes with the relay for more than
one core), after the turn's terminal event is durable. Retention runs on the
same thread every ``retention.interval_s`` and on demand (``prune``).
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Protocol

from supervisor.config import RetentionConfig
from supervisor.errors import UnknownTurn
from supervisor.logs import get_logger
from supervisor.runtime.registry import StreamRegistry
from supervisor.runtime.turntable import TurnTable
from supervisor.storage.compaction import CompactionError, compact
from supervisor.storage.lines import line_seq
from supervisor.storage.retention import Candidate, PruneReport, plan
from supervisor.storage.stores import EventStore, TurnStore
from supervisor.turns import TurnInfo

log = get_logger("runnerd.history")


def _give_back_memory() -> None:
    """Return the heap a large fold grew to the system (glibc keeps freed arenas otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory is reused by the next fold instead
_CHUNK = 10_000
MAX_COMPACT_BYTES = 256 << 20


class _Form(list[bytes]):
    """A compacted form's lines (a list subclass, so the cache can hold it weakly)."""


class SharedRetention(Protocol):
    """Retention over a store several nodes share (``runtime.cluster_retention``): one pass covers every
    node's turns, so it replaces this node's own pass over its table."""

    def prune(self, *, dry_run: bool = False, now: float | None = None, periodic: bool = False) -> PruneReport: ...


class HistoryKeeper:
    def __init__(self, *, events: EventStore, records: TurnStore, table: TurnTable, registry: StreamRegistry,
                 retention: RetentionConfig, compact_finished: bool, max_event_bytes: int = 1 << 20,
                 shared: SharedRetention | None = None) -> None:
        self.events = events
        self.shared = shared
        self.max_event_bytes = max_event_bytes
        self.records = records
        self.table = table
        self.registry = registry
        self.retention = retention
        self.compact_finished = compact_finished
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        # The form of a turn, read once and shared by every reader replaying it at the same
        # time (5 replays of a 50 MB form hold 50 MB, not 250); gone when the last one ends.
        self._forms: weakref.WeakValueDictionary[str, _Form] = weakref.WeakValueDictionary()
        self._forms_lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._meta_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="runnerd-history", daemon=True)
        self.idle = threading.Event()  # set whenever the queue has been worked off

    def start(self, backlog: list[TurnInfo]) -> None:
        for info in backlog:  # finished before a restart and never compacted
            if info.ended and info.compaction is None and not info.raw_removed:
                self.submit(info.turn_id)
        self._thread.start()

    def submit(self, turn_id: str) -> None:
        if self.compact_finished:
            self.idle.clear()
            self._queue.put(turn_id)

    def stop(self, timeout: float | None = None) -> None:
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        next_prune = time.monotonic() + self.retention.interval_s
        while True:
            try:
                turn_id = self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))
            except queue.Empty:
                turn_id = ""
            if turn_id is None:
                return
            if turn_id:
                try:
                    self.compact_one(turn_id)
                except Exception:  # noqa: BLE001 - the keeper must outlive one bad turn
                    log.exception("compaction_crashed", turn_id=turn_id)
            if self._queue.empty():
                self.idle.set()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.retention.interval_s
                try:
                    self.prune(periodic=True)
                except OSError as exc:
                    log.error("retention_pass_failed", error=str(exc))

    # -- compaction -------------------------------------------------------------

    def compact_one(self, turn_id: str) -> None:
        info = self._past(turn_id)
        if info is None or info.raw_removed:
            return
        size = self.events.size(turn_id)
        if size > MAX_COMPACT_BYTES:  # folding holds the turn in memory: bound it
            self._update(turn_id, compaction="failed",
                         compaction_error=f"{size} bytes is over the {MAX_COMPACT_BYTES}-byte compaction bound")
            return
        try:
            folded = compact(self._lines(turn_id, info.last_seq), max_event_bytes=self.max_event_bytes)
            self.events.write_compact(turn_id, folded)
            self._forms.pop(turn_id, None)
            del folded
        except CompactionError as exc:
            log.warning("compaction_failed", turn_id=turn_id, error=str(exc))
            self._update(turn_id, compaction="failed", compaction_error=str(exc))
            return
        except OSError as exc:
            log.error("compaction_write_failed", turn_id=turn_id, error=str(exc))
            self._update(turn_id, compaction="failed", compaction_error=f"cannot write: {exc.strerror}")
            return
        finally:
            _give_back_memory()
        self._update(turn_id, compaction="done", compaction_error=None)
        log.info("turn_compacted", turn_id=turn_id, events=info.last_seq)

    def _lines(self, turn_id: str, last_seq: int) -> Iterator[bytes]:
        """The full log in chunks: only the folded form is held, not the raw lines too."""
        count = last = 0
        while count < last_seq:
            chunk = self.events.read_after(turn_id, count, _CHUNK, last_seq)
            if not chunk:
                break
            count += len(chunk)
            last = line_seq(chunk[-1])
            yield from chunk
        if count != last_seq or (count and last != last_seq):
            raise CompactionError(f"the log holds {count} readable events, status says {last_seq}")

    def compacted(self, info: TurnInfo) -> list[bytes] | None:
        """The compacted form, if present and consistent with the turn's status."""
        if info.compaction != "done":
            return None
        with self._forms_lock:  # concurrent replays wait for one read instead of each reading
            lines: list[bytes] | None = self._forms.get(info.turn_id)
            if lines is None:
                read = self.events.read_compact(info.turn_id)
                if read is not None:
                    lines = self._forms[info.turn_id] = _Form(read)
                    weakref.finalize(lines, _give_back_memory)  # when the last replay of it ends
        if not lines or line_seq(lines[-1]) != info.last_seq or not lines[-1].startswith(
                b'{"seq":%d,"type":"RUN_' % info.last_seq):
            log.warning("compacted_file_disagrees", turn_id=info.turn_id)
            if not info.raw_removed:
                self._update(info.turn_id, compaction=None)
                self.submit(info.turn_id)  # the full log is still there: fold again
            return None
        return lines

    # -- retention --------------------------------------------------------------

    def prune(self, *, dry_run: bool = False, now: float | None = None, periodic: bool = False) -> PruneReport:
        if self.shared is not None:
            return self.shared.prune(dry_run=dry_run, now=now, periodic=periodic)
        with self._prune_lock:
            past = self.table.ended_records()
            candidates = [Candidate(i, self.events.size(i.turn_id)) for i in past]
            chosen = plan(candidates, self.retention, time.time() if now is None else now)
            sizes = {c.info.turn_id: c.size for c in candidates}
            report = PruneReport(removed=chosen.remove, raw_removed=chosen.remove_raw, dry_run=dry_run)
            if dry_run:
                report.bytes_freed = sum(sizes[t] for t in chosen.remove)
                return report
            for turn_id in chosen.remove:
                self.table.forget(turn_id)
                self.registry.forget(turn_id)
                report.bytes_freed += self.events.remove(turn_id) + self.records.remove(turn_id)
            for turn_id in chosen.remove_raw:
                report.bytes_freed += self.events.remove_raw(turn_id)
                self._update(turn_id, raw_removed=True)
            if chosen.remove or chosen.remove_raw:
                log.info("pruned", turns=len(chosen.remove), raw_logs=len(chosen.remove_raw),
                         bytes_freed=report.bytes_freed)
            return report

    # -- the past table ---------------------------------------------------------

    def _past(self, turn_id: str) -> TurnInfo | None:
        try:
            info = self.table.get(turn_id)
        except UnknownTurn:
            return None
        return info if info.ended else None

    def _update(self, turn_id: str, **changes: object) -> None:
        # Change and write under one lock: a stale record never lands last.
        with self._meta_lock:
            snapshot = self.table.update_ended(turn_id, **changes)
            if snapshot is None:
                return
            try:
                self.records.put(snapshot)
            except OSError as exc:
                log.error("metadata_write_failed", turn_id=turn_id, error=str(exc))
