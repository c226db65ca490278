"""Retention policy: which finished turns (or full logs) to remove, oldest first.

Pure: it sees turn records and sizes and returns a plan, so it is tested
without files or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from supervisor.config import RetentionConfig
from supervisor.turns import TurnInfo


class PruneReport(msgspec.Struct):
    removed: list[str] = msgspec.field(default_factory=list)  # whole turns
    raw_removed: list[str] = msgspec.field(default_factory=list)  # full logs of compacted turns
    bytes_freed: int = 0
    dry_run: bool = False


@dataclass
class Candidate:
    info: TurnInfo
    size: int


@dataclass
class Plan:
    remove: list[str] = field(default_factory=list)
    remove_raw: list[str] = field(default_factory=list)


def plan(candidates: list[Candidate], cfg: RetentionConfig, now: float) -> Plan:
    """``candidates`` are finished turns; ``now`` is wall time (turn times are wall times)."""
    finished = sorted((c for c in candidates if c.info.ended),
                      key=lambda c: (c.info.ended_at or c.info.created_at, c.info.turn_id))
    out = Plan()
    keep: list[Candidate] = []
    for c in finished:
        ended = c.info.ended_at or c.info.created_at
        if cfg.max_age_s is not None and ended < now - cfg.max_age_s:
            out.remove.append(c.info.turn_id)
        else:
            keep.append(c)
    if cfg.max_turns is not None:
        while len(keep) > cfg.max_turns:
            out.remove.append(keep.pop(0).info.turn_id)
    if cfg.max_bytes is not None:
        total = sum(c.size for c in keep)
        while keep and total > cfg.max_bytes:
            gone = keep.pop(0)
            total -= gone.size
            out.remove.append(gone.info.turn_id)
    if cfg.keep_raw_s is not None:
        for c in keep:
            ended = c.info.ended_at or c.info.created_at
            if c.info.compaction == "done" and not c.info.raw_removed and ended < now - cfg.keep_raw_s:
                out.remove_raw.append(c.info.turn_id)
    return out
