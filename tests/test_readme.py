"""The README's examples are real: the Python API example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_every_python_block_compiles() -> None:
    assert len(BLOCKS) >= 3
    for block in BLOCKS:
        compile(block, "README.md", "exec")


@pytest.mark.timeout(60)
def test_the_embedded_example_runs_as_written(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "with Supervisor(config)" in b)
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=50,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "1 RunStarted" and lines[-3].endswith("RunFinished")
    assert lines[-2].startswith("40 True [36, 37, 38, 39, 40]")
    assert lines[-1] == "TurnStatus.SUCCEEDED"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"
    assert command in README
    assert command in ci.splitlines()
