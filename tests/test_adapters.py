"""worker.adapters: a framework's AG-UI stream as a runnerd turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from test_openitems import verify

from ipc import events as ev
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus

pytest.importorskip("ag_ui.core")

# Long enough that only a cancel that never reached the framework meets SIGTERM.
GRACE = 20.0
AGENTS = {"framework_free": "agui_agents:framework_free", "pydantic_ai": "agui_agents:pydantic_ai_agent"}


@pytest.fixture
def sup(tmp_path: Path) -> Any:
    with Supervisor(make_config(tmp_path, agents=AGENTS, cancel_grace_s=GRACE)) as s:
        yield s


def _run(sup: Supervisor, agent: str, input: Any, cancel_on_ready: bool = False) -> list[ev.Event]:
    turn = sup.start_turn(agent, input)
    if cancel_on_ready:
        for _, e in sup.events(turn.turn_id, timeout=20):
            if isinstance(e, ev.Custom) and e.name == "ready":
                sup.cancel(turn.turn_id)
                break
    info = sup.wait(turn.turn_id, 30)
    if cancel_on_ready:  # ended by the cancel itself, within the grace: the child's own exit, no signal
        assert info.exit_code == 5 and info.signal is None, info
    events = [e for _, e in sup.events(turn.turn_id)]
    verify(events)
    return events


def tags(events: list[ev.Event]) -> list[str]:
    return [type(e).__struct_config__.tag for e in events]


@pytest.mark.timeout(60)
def test_the_framework_lifecycle_becomes_the_turns(sup: Supervisor) -> None:
    events = _run(sup, "framework_free", {"mode": "ok"})
    assert tags(events) == [
        "RUN_STARTED", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END",
        "STEP_STARTED", "RAW", "RAW", "STEP_FINISHED", "RUN_FINISHED"]
    assert isinstance(events[0], ev.RunStarted) and events[0].run_id != "fw-run"  # the turn's, not the framework's
    raws = [e for e in events if isinstance(e, ev.Raw)]
    assert [r.source for r in raws] == ["agui-adapter:unknown-type", "agui-adapter:refused"]
    assert isinstance(events[-1], ev.RunFinished) and events[-1].result == {"from": "framework"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, kept", [("error", {"code": "refusal", "message": "the model refused"}),
                                        ("raise", {"type": "ValueError", "message": "framework exploded"})])
def test_a_framework_error_keeps_its_code_or_traceback(sup: Supervisor, mode: str, kept: dict[str, str]) -> None:
    events = _run(sup, "framework_free", {"mode": mode})
    error = next(e for e in events if isinstance(e, ev.Custom) and e.name == "runnerd.error")
    assert kept.items() <= error.value.items()
    if mode == "raise":
        assert "Traceback" in error.value["traceback"] and "_framework" in error.value["traceback"]
    assert isinstance(events[-1], ev.RunError) and events[-1].code == "agent_error"
    assert "refusal" in events[-1].message or "framework exploded" in events[-1].message


@pytest.mark.timeout(60)
def test_cancel_reaches_the_framework(sup: Supervisor) -> None:
    events = _run(sup, "framework_free", {"mode": "hang"}, cancel_on_ready=True)
    names = [e.name for e in events if isinstance(e, ev.Custom)]
    assert names == ["ready", "framework_cancelled"]
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "cancelled"
    assert "STEP_FINISHED" in tags(events)  # the open step was closed (by the supervisor)


@pytest.fixture
def pydantic_sup(tmp_path: Path) -> Any:
    pytest.importorskip("pydantic_ai")
    agents = {"calc": "agui_agents:pydantic_ai_agent", "slow": "agui_agents:pydantic_ai_slow"}
    with Supervisor(make_config(tmp_path, agents=agents, cancel_grace_s=GRACE)) as s:
        yield s


@pytest.mark.timeout(60)
def test_a_pydantic_ai_agent_runs_as_a_turn_offline(pydantic_sup: Supervisor) -> None:
    events = _run(pydantic_sup, "calc", {"threadId": "t", "runId": "r", "tools": [], "context": [],
                                         "messages": [{"id": "u1", "role": "user", "content": "2+2?"}]})
    kinds = tags(events)
    assert kinds[0] == "RUN_STARTED" and kinds[-1] == "RUN_FINISHED"
    assert {"TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT",
            "TEXT_MESSAGE_START", "TEXT_MESSAGE_END"} <= set(kinds)
    text = "".join(e.delta for e in events if isinstance(e, ev.TextMessageContent))
    assert "four" in text
    call = next(e for e in events if isinstance(e, ev.ToolCallStart))
    assert call.tool_call_name == "add"
    assert sup_status(pydantic_sup) == [TurnStatus.SUCCEEDED]


@pytest.mark.timeout(60)
def test_a_plain_prompt_becomes_one_user_message(pydantic_sup: Supervisor) -> None:
    events = _run(pydantic_sup, "calc", "what is 2+2?")
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "success"


@pytest.mark.timeout(60)
def test_cancel_reaches_the_pydantic_ai_model(pydantic_sup: Supervisor) -> None:
    events = _run(pydantic_sup, "slow", "go", cancel_on_ready=True)
    assert [e.name for e in events if isinstance(e, ev.Custom)] == ["ready", "model_cancelled"]
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "cancelled"
    assert sup_status(pydantic_sup) == [TurnStatus.CANCELLED]


def sup_status(sup: Supervisor) -> list[TurnStatus]:
    return [t.status for t in sup.list_turns()]


@pytest.fixture
def langgraph_sup(tmp_path: Path) -> Any:
    pytest.importorskip("ag_ui_langgraph")
    with Supervisor(make_config(tmp_path, agents={"graph": "agui_agents:langgraph_agent"}, cancel_grace_s=GRACE)) as s:
        yield s


@pytest.mark.timeout(60)
def test_a_langgraph_graph_runs_as_a_turn_offline(langgraph_sup: Supervisor) -> None:
    events = _run(langgraph_sup, "graph", {"threadId": "t", "runId": "r", "tools": [], "context": [],
                                           "state": {}, "messages": [{"id": "u1", "role": "user", "content": "hi"}]})
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "success", events[-1]
    text = "".join(e.delta for e in events if isinstance(e, ev.TextMessageContent))
    assert text == "hello from the graph"
    assert [e for e in events if isinstance(e, ev.Raw)] == []  # nothing refused or unknown


@pytest.mark.timeout(60)
def test_cancel_reaches_the_langgraph_node(langgraph_sup: Supervisor) -> None:
    events = _run(langgraph_sup, "graph", {"threadId": "t", "runId": "r", "tools": [], "context": [],
                                           "messages": [{"id": "u1", "role": "user", "content": "hi"}],
                                           "slow": True}, cancel_on_ready=True)
    assert [e.name for e in events if isinstance(e, ev.Custom)] == ["ready", "graph_cancelled"]
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "cancelled"


@pytest.fixture
def openai_sup(tmp_path: Path) -> Any:
    pytest.importorskip("agents")
    with Supervisor(make_config(tmp_path, agents={"oa": "agui_agents:openai_agents_agent"}, cancel_grace_s=GRACE)) as s:
        yield s


@pytest.mark.timeout(60)
def test_an_openai_agents_agent_runs_as_a_turn_offline(openai_sup: Supervisor) -> None:
    events = _run(openai_sup, "oa", "what is 2+2?")
    kinds = tags(events)
    assert isinstance(events[-1], ev.RunFinished) and events[-1].result == "four", events[-1]
    assert {"STEP_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT",
            "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "STEP_FINISHED"} <= set(kinds)
    result = next(e for e in events if isinstance(e, ev.ToolCallResult))
    assert result.tool_call_id == "call-1" and result.content == "4"
    assert "".join(e.delta for e in events if isinstance(e, ev.TextMessageContent)) == "four"
    assert [e for e in events if isinstance(e, ev.Raw)] == []


@pytest.mark.timeout(60)
def test_cancel_reaches_the_openai_agents_model(openai_sup: Supervisor) -> None:
    events = _run(openai_sup, "oa", {"slow": True, "prompt": "hi"}, cancel_on_ready=True)
    assert [e.name for e in events if isinstance(e, ev.Custom)] == ["ready", "model_cancelled"]
    assert isinstance(events[-1], ev.RunFinished) and events[-1].outcome.type == "cancelled"
