"""The README's examples are real: the Python API example runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_fixture import child_env, start_daemon, stopped

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


@pytest.mark.timeout(60)
def test_the_agent_example_runs_and_emits_what_it_says(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "def agent(ctx: TurnContext" in b)
    (tmp_path / "readme_agent.py").write_text(block)
    script = (
        "import sys, tempfile, msgspec\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from supervisor import Config, Supervisor\n"
        "config = Config(state_dir=tempfile.mkdtemp(), agents={'readme': 'readme_agent:agent'})\n"
        "with Supervisor(config) as sup:\n"
        "    turn = sup.start_turn('readme', {})\n"
        "    for seq, event in sup.events(turn.turn_id):\n"
        "        print(msgspec.json.encode(event).decode())\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, cwd=tmp_path,
                       env=child_env())
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "RUN_STARTED" and events[1] == {**events[1], "type": "STATE_SNAPSHOT",
                                                       "snapshot": {"phase": "thinking"}}
    assert {"TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT", "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_END"} <= set(types), types
    assert [e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT"] == ["hello", " world"]
    assert types[-1] == "RUN_FINISHED" and events[-1]["result"] == {"words": 2}


@pytest.mark.timeout(60)
def test_the_client_example_runs_against_a_daemon(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "with Client() as client" in b)
    for d in stopped(start_daemon(tmp_path)):
        r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=50,
                           cwd=tmp_path, env=child_env({"RUNNERD_SOCKET": d.socket}))
        assert r.returncode == 0, r.stderr
        with d.http() as c:
            turns = c.get("/v1/turns").json()["turns"]
        # It started the demo turn and followed it to its end.
        assert [(t["agent"], t["status"]) for t in turns] == [("demo", "succeeded")]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    command = ("bash scripts/install-test-deps.sh && python3 -m venv .venv && .venv/bin/pip install -e '.[test]'"
               " && .venv/bin/python -m pytest -q")
    assert command in README
    assert command in ci.splitlines()
