"""The import picture: what each layer may import, and a library that leaves logging to its host."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _imports(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
        out[str(path.relative_to(ROOT))] = names
    return out


def test_imports_point_one_way_ipc_worker_supervisor() -> None:
    bad = [(f, "worker/supervisor") for f, n in _imports("ipc").items() if n & {"worker", "supervisor"}]
    bad += [(f, "supervisor") for f, n in _imports("worker").items() if "supervisor" in n]
    bad += [(f, "worker") for f, n in _imports("supervisor").items() if "worker" in n]
    assert bad == []


def test_the_client_does_not_pull_in_the_runtime() -> None:
    code = ("import sys, supervisor.control.client, supervisor.control.cli; "
            "print(sorted(m for m in sys.modules if m == 'psutil' or m.startswith('supervisor.runtime') "
            "or m.startswith('supervisor.server') or m == 'supervisor.embedded'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_embedded_runnerd_writes_no_log_line_and_configures_no_logging(tmp_path: Path) -> None:
    """A host that configured nothing gets nothing on stdout or stderr, and its root logger is untouched."""
    code = f"""
import logging, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from supervisor import Config, Supervisor
from supervisor.config import LimitsConfig
config = Config(state_dir={str(tmp_path)!r}, agents={{"count": "fixture_agents:count"}},
                limits=LimitsConfig(max_events=2))
with Supervisor(config) as sup:  # over max_events: runnerd logs a warning
    info = sup.wait(sup.start_turn("count", {{"n": 5}}).turn_id, 30)
    assert info.error is not None and info.error.code == "limit_exceeded", info
assert logging.getLogger().handlers == [], logging.getLogger().handlers
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")


def test_a_host_that_configures_logging_gets_runnerd_records(tmp_path: Path) -> None:
    code = f"""
import logging, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
from supervisor import Config, Supervisor
with Supervisor(Config(state_dir={str(tmp_path)!r}, agents={{"count": "fixture_agents:count"}})) as sup:
    sup.wait(sup.start_turn("count", {{"n": 1}}).turn_id, 30)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "runnerd.relay" in r.stdout and "turn_ended" in r.stdout
