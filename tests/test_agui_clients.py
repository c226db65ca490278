"""The official AG-UI clients (@ag-ui/client HttpAgent, verifyEvents, the zod schemas of @ag-ui/core)
against a real runnerd: every run, however it ends, passes with zero warnings."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from daemon_fixture import Daemon, start_daemon, stopped

CLIENTS = Path(__file__).parent / "agui"
AGENTS = {"agui_chat": "agui_agents:agui_chat"}
TOKEN = "agui-client-token-0123456789"  # TCP needs the token, loopback too: HttpAgent sends it as a header


def _clients_or_skip() -> str:
    node = shutil.which("node")
    installed = (CLIENTS / "node_modules" / "@ag-ui" / "client").is_dir()
    if node and installed:
        return node
    reason = "node is not installed" if not node else "run `npm ci` in tests/agui first"
    if os.environ.get("RUNNERD_REQUIRE_AGUI_CLIENTS"):  # .ci/run: these tests must run there
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tcp_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    port = _free_port()
    tmp = tmp_path_factory.mktemp("agui")
    token = tmp / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    d = start_daemon(tmp, agents=AGENTS, tcp=f"127.0.0.1:{port}", token_file=str(token))
    for running in stopped(d):
        yield running, f"http://127.0.0.1:{port}"


def run_node(base: str, scenarios: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    node = _clients_or_skip()
    spec = json.dumps({"base": base, "agent": "agui_chat", "token": TOKEN, "scenarios": scenarios})
    done = subprocess.run([node, str(CLIENTS / "run_agents.mjs"), spec], cwd=CLIENTS, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}


def assert_clean(report: dict[str, Any]) -> None:
    assert report["warnings"] == [], report["warnings"]
    assert report["schemaErrors"] == [], report["schemaErrors"]
    assert report["verifyError"] is None, report["verifyError"]
    assert report["rawTypes"][0] == "RUN_STARTED"
    assert all("seq" not in e for e in report["raw"])


def closers(report: dict[str, Any]) -> list[str]:
    return [e["type"] for e in report["raw"] if "runnerd" in (e.get("metadata") or {})]


def turn_of(daemon: Daemon, thread: str) -> dict[str, Any]:
    with daemon.http() as c:
        turns: list[dict[str, Any]] = c.get("/v1/turns", params={"session_id": thread}).json()["turns"]
    assert len(turns) == 1
    return turns[0]


@pytest.mark.timeout(120)
def test_http_agent_runs_every_ending_cleanly(tcp_daemon: tuple[Daemon, str]) -> None:
    daemon, base = tcp_daemon
    hang = {"mode": "hang"}
    reports = run_node(base, [
        {"name": "success", "threadId": "t-ok", "runId": "r-ok"},
        {"name": "abort", "threadId": "t-abort", "runId": "r-abort", "forwardedProps": hang, "onReady": "abort"},
        {"name": "cancel", "threadId": "t-cancel", "runId": "r-cancel", "forwardedProps": hang,
         "onReady": "cancel"},
        {"name": "error", "threadId": "t-error", "runId": "r-error", "forwardedProps": {"mode": "error"}},
        {"name": "timeout", "threadId": "t-timeout", "runId": "r-timeout",
         "forwardedProps": {"mode": "hang", "runnerd": {"timeout_s": 1}}},
        {"name": "killed", "threadId": "t-killed", "runId": "r-killed",
         "forwardedProps": {"mode": "ignore_term"}, "onReady": "cancel"},
        {"name": "retry", "threadId": "t-ok", "runId": "r-ok"},  # the same run again: attached, not restarted
    ])
    for report in reports.values():
        assert_clean(report)

    ok = reports["success"]
    assert ok["outcome"] == {"ok": True, "result": {"answered": True}, "newMessages": 3}
    assert {"STEP_STARTED", "STEP_FINISHED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END",
            "TOOL_CALL_RESULT", "STATE_SNAPSHOT", "STATE_DELTA", "TEXT_MESSAGE_CONTENT"} <= set(ok["types"])
    assert ok["raw"][0]["runId"] == "r-ok" and ok["raw"][0]["threadId"] == "t-ok"
    assert ok["raw"][-1] == {**ok["raw"][-1], "type": "RUN_FINISHED", "runId": "r-ok"}
    assert ok["state"]["phase"] == "done"
    answer = [m for m in ok["messages"] if m["role"] == "assistant" and m.get("content")]
    assert answer[-1]["content"] == "you said: hello"
    assert [m["role"] for m in ok["messages"]][:1] == ["user"]
    assert turn_of(daemon, "t-ok")["status"] == "succeeded"  # one turn for both POSTs of (t-ok, r-ok)
    assert reports["retry"]["raw"] == ok["raw"] and reports["retry"]["outcome"] == ok["outcome"]

    # abortRun(): the client ends its side; the disconnect cancels the run on ours.
    assert reports["abort"]["types"][-1] == "RUN_ERROR"
    wait_for(lambda: turn_of(daemon, "t-abort")["status"] == "cancelled", 15)

    cancel = reports["cancel"]
    assert cancel["raw"][-1]["type"] == "RUN_FINISHED" and cancel["raw"][-1]["outcome"] == {"type": "cancelled"}
    assert closers(cancel) == []  # the agent's own context managers closed its message
    assert turn_of(daemon, "t-cancel")["status"] == "cancelled"

    error = reports["error"]
    assert error["raw"][-1] == {**error["raw"][-1], "type": "RUN_ERROR", "code": "agent_error"}
    assert "failed on purpose" in error["raw"][-1]["message"]

    timeout = reports["timeout"]
    assert timeout["raw"][-1]["type"] == "RUN_ERROR" and timeout["raw"][-1]["code"] == "timeout"

    killed = reports["killed"]  # SIGKILL mid-message: the supervisor closed the message
    assert killed["raw"][-1]["type"] == "RUN_FINISHED" and killed["raw"][-1]["outcome"] == {"type": "cancelled"}
    assert closers(killed) == ["TEXT_MESSAGE_END"]
    info = turn_of(daemon, "t-killed")
    assert info["status"] == "cancelled" and info["signal"] == 9


@pytest.mark.timeout(60)
def test_the_python_models_accept_every_event_a_run_streamed(tcp_daemon: tuple[Daemon, str]) -> None:
    core = pytest.importorskip("ag_ui.core")
    from pydantic import TypeAdapter
    daemon, base = tcp_daemon
    adapter: TypeAdapter[object] = TypeAdapter(core.Event)
    body = {"threadId": "t-py", "runId": "r-py", "messages": [{"id": "u", "role": "user", "content": "hi"}],
            "tools": [], "context": [], "state": {}}
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        text = c.post("/v1/agents/agui_chat/ag-ui", json=body).text
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "RUN_FINISHED"
    for e in events:
        adapter.validate_python(e)
