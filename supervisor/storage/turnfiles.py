"""The file backend of ``TurnStore``: ``<state_dir>/turns/<id>.meta.json``, replaced atomically."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec

from ipc.events import RunError, RunFinished, decode_event
from supervisor.errors import InvalidTurnId
from supervisor.ids import validate_turn_id
from supervisor.logs import get_logger
from supervisor.storage.eventlog import FileEventLog, unlink_file
from supervisor.storage.lines import line_seq
from supervisor.turns import TurnError, TurnInfo, TurnStatus

log = get_logger("runnerd.turnfiles")
_meta_decoder = msgspec.json.Decoder(TurnInfo)


class FileTurnStore:
    """Records beside the event logs; a lost record is rebuilt from its log."""

    def __init__(self, events: FileEventLog) -> None:
        self.events = events
        self.dir = events.dir
        self._cas_lock = threading.Lock()

    def _meta_path(self, turn_id: str) -> Path:
        return self.dir / f"{validate_turn_id(turn_id)}.meta.json"

    def put(self, info: TurnInfo, *, durable: bool = True) -> None:
        """Replace atomically: temp file, (fsync,) rename.

        ``durable=False`` skips the fsync for intermediate states (created,
        running): a daemon crash keeps them (the page cache survives it);
        only a power loss could, and the log itself still names the turn.
        """
        path = self._meta_path(info.turn_id)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")  # one per writer thread
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, msgspec.json.encode(info))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def transition(self, info: TurnInfo, expect: frozenset[TurnStatus], *, durable: bool = True) -> bool:
        with self._cas_lock:
            current = self.get(info.turn_id)
            if current is not None and current.status not in expect:
                return False
            self.put(info, durable=durable)
            return True

    def remove(self, turn_id: str) -> int:
        return unlink_file(self._meta_path(turn_id))

    def get(self, turn_id: str) -> TurnInfo | None:
        try:
            return _meta_decoder.decode(self._meta_path(turn_id).read_bytes())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError as exc:
            log.warning("turn_metadata_corrupt", turn_id=turn_id, error=str(exc))
            return None

    def load_all(self) -> list[TurnInfo]:
        """Every turn on disk; a missing or corrupt metadata file is rebuilt from the log."""
        ids = self.events.turn_ids()
        for p in self.dir.glob("*.meta.json"):
            try:
                ids.add(validate_turn_id(p.name.split(".", 1)[0]))
            except InvalidTurnId:
                continue  # not ours
        out = []
        for turn_id in sorted(ids):
            info = self.get(turn_id)
            if info is None:
                info = self._rebuild_meta(turn_id)
                if info is None:
                    continue
                log.warning("turn_metadata_rebuilt", turn_id=turn_id, status=info.status.value)
            out.append(info)
        return out

    def ending_from_log(self, turn_id: str) -> TurnInfo | None:
        """The turn's ending as its log's last event tells it, if that is a terminal event."""
        info = self._rebuild_meta(turn_id)
        return info if info is not None and info.ended else None

    def _rebuild_meta(self, turn_id: str) -> TurnInfo | None:
        """From the log alone: last seq, and the ending if the terminal event is there."""
        if not self.events.has_raw(turn_id):
            return None
        info = TurnInfo(turn_id=turn_id, agent="unknown", status=TurnStatus.STARTING)
        last = self.events.last_line(turn_id)
        if last is None:
            return info
        info.last_seq = line_seq(last)
        try:
            event = decode_event(last)
        except msgspec.DecodeError:
            return info
        if isinstance(event, RunFinished):
            info.status = TurnStatus.CANCELLED if event.outcome.type == "cancelled" else TurnStatus.SUCCEEDED
        elif isinstance(event, RunError):
            info.status = {"timeout": TurnStatus.TIMED_OUT, "lost": TurnStatus.LOST}.get(
                event.code, TurnStatus.FAILED)
            info.error = TurnError(event.code, event.message)
        return info
