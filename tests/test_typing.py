"""The packages stay `mypy --strict` clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.timeout(240)
def test_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "ipc", "worker", "supervisor"],
                       cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert r.returncode == 0, r.stdout + r.stderr
