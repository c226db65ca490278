"""A daemon SIGKILLed mid-turn and restarted: the turn ends `lost`, nothing of it survives."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from conftest import wait_for
from daemon_fixture import start_daemon, stopped


@pytest.mark.timeout(60)
def test_a_turn_running_when_the_daemon_died_ends_lost_and_its_processes_are_killed(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    with d.http() as c:
        tid = c.post("/v1/turns", json={"agent": "grandchildren"}).json()["turn_id"]
        pids: list[int] = []

        def reported() -> bool:
            for e in c.get(f"/v1/turns/{tid}/export").json()["events"]:
                if e.get("name") == "pids":
                    pids.extend(e["value"])
                    return True
            return False

        wait_for(reported, 15)
        root = c.get(f"/v1/turns/{tid}").json()["pid"]
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert all(psutil.pid_exists(p) for p in [root, *pids])  # orphans, still running
    for d2 in stopped(start_daemon(tmp_path)):
        with d2.http() as c:
            info = c.get(f"/v1/turns/{tid}").json()
            assert info["status"] == "lost" and info["error"]["code"] == "lost"
            page = c.get(f"/v1/turns/{tid}/export").json()
            types = [e["type"] for e in page["events"]]
            assert types[0] == "RUN_STARTED" and types[-1] == "RUN_ERROR" and types.count("RUN_ERROR") == 1
            assert [e["seq"] for e in page["events"]] == list(range(1, page["total"] + 1))
            assert page["events"][-1]["code"] == "lost"

        def gone() -> bool:
            return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                           for p in [root, *pids])

        wait_for(gone, 10)
        with d2.http() as c:  # the restarted daemon serves new turns as usual
            r = c.post("/v1/turns", json={"agent": "count", "input": {"n": 2}})
            assert r.status_code == 201
            body = c.get(f"/v1/turns/{r.json()['turn_id']}/events").text
            assert "RUN_FINISHED" in body
