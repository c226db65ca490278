"""runnerctl against a real daemon: the real console script, real exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import wait_for
from daemon_fixture import BIN, Daemon, child_env, start_daemon, stopped, write_config


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


@pytest.mark.timeout(60)
def test_json_is_accepted_after_the_subcommand_too(daemon: Daemon) -> None:
    tid = json.loads(daemon.ctl("start", "count", "--input", '{"n": 2}').stdout)["turn_id"]
    assert [t["turn_id"] for t in json.loads(daemon.ctl("--no-json", "list", "--json").stdout)] == [tid]
    human = daemon.ctl("list", "--no-json")
    assert human.returncode == 0 and human.stdout.startswith(tid) and not human.stdout.startswith("[")
    assert json.loads(daemon.ctl("--no-json", "status", tid, "--json").stdout)["turn_id"] == tid
    assert "count" in json.loads(daemon.ctl("--no-json", "agents", "--json").stdout)


@pytest.mark.timeout(60)
def test_status_on_a_terminal_shows_dates_and_durations(daemon: Daemon) -> None:
    r = daemon.ctl("start", "count", "--input", '{"n": 3}', "--follow")
    tid = json.loads(r.stdout.splitlines()[0])["threadId"]  # no session: the thread is the turn
    out = daemon.ctl("--no-json", "status", tid).stdout
    rows = dict(line.split(None, 1) for line in out.splitlines())
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \(\d+(ms|\.\d+s|m\d\ds) ago\)"
    for field in ("created_at", "started_at", "ended_at"):
        assert re.fullmatch(date, rows[field]), (field, rows[field])
    assert re.fullmatch(r"\d+ms|\d+\.\ds", rows["duration"]) and rows["status"] == "succeeded"
    assert not re.search(r"\d{10}\.\d", out)  # no epoch float left


@pytest.mark.timeout(60)
def test_demo_summary_is_human_with_ag_ui_type_names(daemon: Daemon) -> None:
    r = daemon.ctl("--no-json", "demo", "--prompt", "hi")
    assert r.returncode == 0, r.stderr
    counts = dict(re.findall(r"^  ([A-Z_]+) +(\d+)$", r.stderr, re.M))
    assert counts["RUN_STARTED"] == "1" and counts["RUN_FINISHED"] == "1" and "TOOL_CALL_ARGS" in counts
    assert "RunFinished" not in r.stderr and "export of turn" in r.stderr
    piped = daemon.ctl("demo", "--prompt", "hi")
    summary = json.loads(piped.stderr.split("export: ", 1)[1].splitlines()[0])
    assert summary["by_type"]["RUN_FINISHED"] == 1 and summary["status"] == "succeeded"


@pytest.mark.timeout(60)
def test_shutdown_stops_the_daemon_gracefully(daemon: Daemon) -> None:
    r = daemon.ctl("shutdown")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"status": "stopped", "pid": daemon.proc.pid}
    assert daemon.proc.wait(20) == 0
    assert "runnerd_stopped" in daemon.log.read_text()
    assert not Path(daemon.socket).exists()


@pytest.mark.timeout(30)
def test_shutdown_takes_json_only(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.post("/v1/shutdown", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        assert c.get("/v1/shutdown").status_code == 405  # no state change on GET
        assert c.get("/v1/health").status_code == 200


@pytest.mark.timeout(60)
def test_the_daemon_is_named_runnerd_in_ps_and_top(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    # As `runnerctl demo` starts it: `python -m`, so the kernel's name would be python's.
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.server.daemon", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    d = Daemon(proc, str(tmp_path / "run" / "runnerd.sock"), config, tmp_path / "unused.log")
    try:
        wait_for(lambda: d.ctl("agents").returncode == 0, 20, 0.05)  # ready: SIGTERM is its own now
        p = psutil.Process(proc.pid)
        assert p.name() == "runnerd"
        # setproctitle writes one string over argv: ps shows it as the command line
        assert " ".join(p.cmdline()).split() == ["runnerd", "--config", str(config)]
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "runnerd"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


@pytest.mark.timeout(30)
def test_runnerd_url_accepts_a_unix_socket(daemon: Daemon, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RUNNERD_SOCKET", "RUNNERD_URL")}
    r = subprocess.run([str(BIN / "runnerctl"), "agents"], capture_output=True, text=True, timeout=20,
                       env={**env, "RUNNERD_URL": f"unix://{daemon.socket}"})
    assert r.returncode == 0 and "count" in json.loads(r.stdout), r.stderr
    r = subprocess.run([str(BIN / "runnerctl"), "agents"], capture_output=True, text=True, timeout=20,
                       env={**env, "RUNNERD_URL": "unix://relative.sock"})
    assert r.returncode == 2 and r.stderr.startswith("runnerctl: a unix URL needs an absolute path")


@pytest.mark.timeout(60)
def test_list_watch_prints_the_list_then_each_status_change(daemon: Daemon) -> None:
    old = json.loads(daemon.ctl("start", "count", "--input", '{"n": 1}', "--follow").stdout.splitlines()[0])["threadId"]
    watch = subprocess.Popen([str(BIN / "runnerctl"), "--socket", daemon.socket, "list", "--watch"],
                             stdout=subprocess.PIPE, text=True, env=daemon.env)
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # the list comes first
        assert first["turn_id"] == old and first["status"] == "succeeded"
        tid = json.loads(daemon.ctl("start", "count", "--input", '{"n": 2}').stdout)["turn_id"]
        seen = []
        while not seen or seen[-1] != "succeeded":
            info = json.loads(watch.stdout.readline())
            assert info["turn_id"] == tid
            seen.append(info["status"])
        assert "running" in seen and seen.count("succeeded") == 1
    finally:
        watch.terminate()
        watch.wait(10)
        if watch.stdout:
            watch.stdout.close()
