"""A CI-sized chaos run (scripts/chaos.py): random SIGKILLs of turns and of the daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))

import chaos  # noqa: E402


@pytest.mark.timeout(180)
def test_chaos_keeps_every_invariant(tmp_path: Path) -> None:
    report = chaos.run(tmp_path, turns=40, concurrency=4, events=800, kill_prob=0.1, daemon_kills=2, seed=7,
                       pause=0.01)
    print("\n".join(report.lines()))
    assert report.violations == []
    assert report.turns == 40 and report.daemon_kills == 2
    assert sum(report.endings.values()) == 40  # exactly one terminal event each
    assert report.turn_kills >= 1 and report.endings["crashed"] >= 1
    assert report.endings["lost"] >= 1
    assert report.leftover_processes == 0
