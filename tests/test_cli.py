"""runnerctl against a real daemon: the real console script, real exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import wait_for
from daemon_fixture import BIN, Daemon, child_env, start_daemon, stopped


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from stopped(start_daemon(tmp_path))


@pytest.mark.timeout(60)
def test_start_follow_export_status(daemon: Daemon, tmp_path: Path) -> None:
    r = daemon.ctl("start", "count", "--input", '{"n": 20}')
    assert r.returncode == 0, r.stderr
    turn = json.loads(r.stdout)  # piped: JSON
    tid = turn["turn_id"]
    r = daemon.ctl("follow", tid)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and [e["seq"] for e in lines] == list(range(1, 23))
    assert lines[-1]["type"] == "RUN_FINISHED"
    r = daemon.ctl("follow", tid, "--after", "20")
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == [21, 22]
    page = json.loads(daemon.ctl("export", tid, "--limit", "5").stdout)
    assert [e["seq"] for e in page["events"]] == [18, 19, 20, 21, 22]
    assert page["total"] == 22 and page["truncated"] is True
    r = daemon.ctl("export", tid, "--after", "2", "--limit", "2", "--format", "jsonl")
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == [3, 4]
    assert json.loads(daemon.ctl("status", tid).stdout)["status"] == "succeeded"
    assert [t["turn_id"] for t in json.loads(daemon.ctl("list").stdout)] == [tid]
    assert "count" in json.loads(daemon.ctl("agents").stdout)
    text = daemon.ctl("--no-json", "export", tid, "--limit", "3").stdout
    assert "[run] finished: success" in text and "3 of 22 events (turn succeeded)" in text


@pytest.mark.timeout(60)
def test_start_with_input_from_a_file_and_stdin_and_follow(daemon: Daemon, tmp_path: Path) -> None:
    f = tmp_path / "in.json"
    f.write_text('{"n": 3}')
    r = daemon.ctl("start", "count", "--input", f"@{f}", "--follow")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5
    r = daemon.ctl("start", "result_value", "--input", "-", "--follow", input='{"x": 1}')
    assert json.loads(r.stdout.splitlines()[-1])["result"] == {"echo": {"x": 1}}
    r = daemon.ctl("--no-json", "start", "demo", "--input", '{"delay": 0}', "--follow")
    assert r.returncode == 0 and "assistant: runnerd runs each agent turn" in r.stdout
    assert "[tool] search(" in r.stdout and "[run] finished: success" in r.stdout
    r = daemon.ctl("start", "fail", "--follow")
    assert r.returncode == 1 and json.loads(r.stdout.splitlines()[-1])["code"] == "agent_error"


@pytest.mark.timeout(60)
def test_cancel_through_the_cli_leaves_no_process(daemon: Daemon) -> None:
    tid = json.loads(daemon.ctl("start", "grandchildren").stdout)["turn_id"]
    pids: list[int] = []

    def grandchildren_reported() -> bool:
        with daemon.http() as c:
            page = c.get(f"/v1/turns/{tid}/export").json()
        for e in page["events"]:
            if e.get("name") == "pids":
                pids.extend(e["value"])
                return True
        return False

    wait_for(grandchildren_reported, 15)
    r = daemon.ctl("cancel", tid, "--wait", "--reason", "test")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["status"] == "cancelled" and info["cancel_reason"] == "test"
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(30)
def test_errors_are_one_line_with_an_exit_code(daemon: Daemon, tmp_path: Path) -> None:
    r = daemon.ctl("start", "nope")
    assert r.returncode == 4 and r.stderr.startswith("runnerctl: unknown agent 'nope'")
    r = daemon.ctl("status", "01M80G34PMMFJ1N1BN5GV52C57")
    assert r.returncode == 4 and "unknown turn" in r.stderr
    r = daemon.ctl("status", "../../etc/passwd")
    assert r.returncode == 2 and "invalid turn id" in r.stderr
    r = daemon.ctl("start", "count", "--input", "{nope")
    assert r.returncode == 2 and "--input is not valid JSON" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    import subprocess
    r = subprocess.run([str(BIN / "runnerctl"), "--socket", str(tmp_path / "none.sock"), "list"],
                       capture_output=True, text=True, timeout=20, env=child_env())
    assert r.returncode == 3
    assert "runnerd is not answering" in r.stderr and "start it with `runnerd`" in r.stderr
