"""The daemon and CLI subprocesses run this work tree's code, whatever else is on the path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from daemon_fixture import BIN, REPO, TESTS, child_env, start_daemon, stopped


@pytest.fixture
def decoy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Another copy of the packages, first on the inherited PYTHONPATH; importing it fails."""
    root = tmp_path / "decoy"
    for package in ("supervisor", "worker", "ipc"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"raise ImportError('the decoy {package} was imported')\n")
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


@pytest.mark.timeout(60)
def test_the_daemon_and_its_turns_run_the_work_tree_not_the_decoy(tmp_path: Path, decoy: Path) -> None:
    for d in stopped(start_daemon(tmp_path)):  # the decoy would stop it from starting at all
        # What it was started with (/proc/<pid>/environ no longer shows it: setproctitle reuses that memory).
        path = d.env["PYTHONPATH"].split(":")
        assert path == [str(REPO), str(TESTS), str(decoy)]  # explicit, and no empty entry
        with d.http() as c:
            turn = c.post("/v1/turns", json={"agent": "where"}).json()
            body = c.get(f"/v1/turns/{turn['turn_id']}/events").text
        finished = json.loads(body.rsplit("data: ", 1)[1])
        assert finished["type"] == "RUN_FINISHED", finished
        files = {name: Path(f) for name, f in finished["result"].items()}
        assert all(f.is_relative_to(REPO) for f in files.values()), files
        assert files["supervisor.config"] == REPO / "supervisor" / "config.py"
        r = d.ctl("agents")
        assert r.returncode == 0 and "where" in json.loads(r.stdout), r.stderr


def test_a_cli_subprocess_imports_the_work_tree(tmp_path: Path, decoy: Path) -> None:
    r = subprocess.run([str(BIN / "python"), "-c", "import supervisor; print(supervisor.__file__)"],
                       capture_output=True, text=True, timeout=30, env=child_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == REPO / "supervisor" / "__init__.py"
