"""Every ending closes what the turn left open, innermost first, before its terminal event."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import make_config, wait_for

from ipc import events as ev
from ipc.openitems import OpenItems
from supervisor.embedded import Supervisor
from supervisor.ids import new_turn_id
from supervisor.runtime.recovery import recover_lost
from supervisor.storage.compaction import compact
from supervisor.storage.eventlog import FileEventLog
from supervisor.storage.lines import event_line
from supervisor.storage.turnfiles import FileTurnStore
from supervisor.turns import TurnInfo, TurnStatus

AGENTS = {"leave_open": "agui_agents:leave_open", "helpers": "agui_agents:helpers",
          "async_helpers": "agui_agents:async_helpers"}
# What _open_everything leaves open, closed innermost first:
CLOSERS = [("TOOL_CALL_END", "c1"), ("TEXT_MESSAGE_END", "m1"), ("REASONING_END", "r1"),
           ("SUBAGENT_ERROR", "sub-1"), ("STEP_FINISHED", "plan")]


def verify(events: list[ev.Event]) -> None:
    """AG-UI's ordering rules, as verifyEvents applies them: nothing open at RUN_FINISHED."""
    items = OpenItems()
    assert isinstance(events[0], ev.RunStarted)
    for e in events[1:-1]:
        items.observe(e)
    assert isinstance(events[-1], (ev.RunFinished, ev.RunError))
    if isinstance(events[-1], ev.RunFinished):
        assert len(items) == 0, items.open_items()


def closers(events: list[ev.Event]) -> list[tuple[str, str]]:
    out = []
    for e in events:
        if isinstance(e.metadata, dict) and "runnerd" in e.metadata:
            ident = getattr(e, "message_id", None) or getattr(e, "tool_call_id", None) or \
                getattr(e, "step_name", None) or getattr(e, "subagent_run_id")
            out.append((type(e).__struct_config__.tag, ident))
    return out


@pytest.fixture
def sup(tmp_path: Path) -> Any:
    config = make_config(tmp_path, agents=AGENTS)
    with Supervisor(config) as s:
        yield s


def _ready(sup: Supervisor, turn_id: str) -> None:
    for _, e in sup.events(turn_id, timeout=15):
        if isinstance(e, ev.Custom) and e.name == "ready":
            return
    raise AssertionError("never ready")


def _ended(sup: Supervisor, turn_id: str) -> list[ev.Event]:
    sup.wait(turn_id, 15)
    events = [e for _, e in sup.events(turn_id)]
    verify(events)
    return events


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode, how, status, code", [
    ("hang", "cancel", TurnStatus.CANCELLED, None),            # SIGTERM after the grace
    ("ignore_term", "cancel", TurnStatus.CANCELLED, None),     # SIGKILL after both graces
    ("hang", "timeout", TurnStatus.TIMED_OUT, "timeout"),
    ("crash", None, TurnStatus.FAILED, "crashed"),
    ("return", None, TurnStatus.SUCCEEDED, None),              # a success with items left open
])
def test_every_ending_closes_open_items_innermost_first(
        sup: Supervisor, mode: str, how: str | None, status: TurnStatus, code: str | None) -> None:
    turn = sup.start_turn("leave_open", {"mode": mode}, timeout_s=1.0 if how == "timeout" else None)
    _ready(sup, turn.turn_id)
    if how == "cancel":
        sup.cancel(turn.turn_id)
    events = _ended(sup, turn.turn_id)
    info = sup.status(turn.turn_id)
    assert info.status is status and (info.error.code if info.error else None) == code
    assert closers(events) == CLOSERS
    n = len(CLOSERS)
    assert closers(events[-1 - n:-1]) == CLOSERS  # right before the terminal event
    reason = code or status.value
    assert all(e.metadata == {"runnerd": {"closed": reason}} for e in events[-1 - n:-1])
    attributed = [e for e in events[-1 - n:-1] if not isinstance(e, ev.StepFinished)]
    assert all(getattr(e, "subagent_run_id") == "sub-1" for e in attributed)  # as their openers
    wait_for(lambda: sup.status(turn.turn_id).compaction, 10)
    assert sup.status(turn.turn_id).compaction == "done", sup.status(turn.turn_id).compaction_error


@pytest.mark.timeout(30)
def test_a_limit_kill_closes_open_items_too(tmp_path: Path) -> None:
    from supervisor.config import LimitsConfig
    config = make_config(tmp_path, agents=AGENTS, limits=LimitsConfig(max_events=50))
    with Supervisor(config) as s:
        turn = s.start_turn("leave_open", {"mode": "flood"})
        events = _ended(s, turn.turn_id)
        info = s.status(turn.turn_id)
    assert info.error is not None and info.error.code == "limit_exceeded"
    n = len(CLOSERS)
    assert closers(events[-1 - n:-1]) == CLOSERS and isinstance(events[-1], ev.RunError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("agent", ["helpers", "async_helpers"])
def test_the_context_helpers_close_themselves_on_cancel(sup: Supervisor, agent: str) -> None:
    turn = sup.start_turn(agent)
    _ready(sup, turn.turn_id)
    sup.cancel(turn.turn_id)
    events = _ended(sup, turn.turn_id)
    assert sup.status(turn.turn_id).status is TurnStatus.CANCELLED
    assert closers(events) == []  # the agent closed them; the supervisor had nothing left
    ends = [type(e).__struct_config__.tag for e in events if type(e).__struct_config__.tag.endswith(("_END", "_FINISHED"))]
    assert ends[-1] == "RUN_FINISHED" and "STEP_FINISHED" in ends and "TEXT_MESSAGE_END" in ends


def test_a_lost_turn_closes_what_it_left_open_before_its_run_error(tmp_path: Path) -> None:
    log = FileEventLog(tmp_path)
    info = TurnInfo(turn_id=new_turn_id(), agent="a", status=TurnStatus.RUNNING,
                    created_at=time.time())
    log.create(info.turn_id)
    FileTurnStore(log).put(info)
    opened: list[ev.Event] = [ev.RunStarted(thread_id="t", run_id=info.turn_id), ev.StepStarted(step_name="s"),
                              ev.TextMessageStart(message_id="m"), ev.TextMessageContent(message_id="m", delta="x")]
    log.append(info.turn_id, [event_line(i, e) for i, e in enumerate(opened, 1)])
    log.close(info.turn_id)
    events_again = FileEventLog(tmp_path)
    recover_lost(events_again, FileTurnStore(events_again))
    lines = FileEventLog(tmp_path).read_after(info.turn_id, 0, 100, 1 << 62)
    events = [ev.decode_event(line) for line in lines]
    verify(events)
    assert [type(e).__struct_config__.tag for e in events[4:]] == ["TEXT_MESSAGE_END", "STEP_FINISHED", "RUN_ERROR"]
    assert [e.seq for e in events] == list(range(1, 8))
    compact(lines)  # and the stream compacts


def test_compaction_accepts_every_event_type_runnerd_stores() -> None:
    from agui_samples import every_event_type
    stream = [e for e in every_event_type() if type(e).__struct_config__.tag not in ev.LIFECYCLE_TYPES]
    stream = [ev.RunStarted(thread_id="t", run_id="r"), *stream,
              ev.RunFinished(thread_id="t", run_id="r", outcome=ev.Outcome("success"))]
    lines = []
    for i, e in enumerate(stream, 1):
        e.seq = i
        lines.append(ev.encode_event(e))
    out = [msgspec.json.decode(line) for line in compact(lines)]
    snapshot = next(e for e in out if e["type"] == "MESSAGES_SNAPSHOT")
    roles = [m["role"] for m in snapshot["messages"]]
    assert "reasoning" in roles
    kept = {e["type"] for e in out}
    assert {"ACTIVITY_SNAPSHOT", "SUBAGENT_STARTED", "REASONING_START", "REASONING_ENCRYPTED_VALUE"} <= kept


@pytest.mark.timeout(60)
@pytest.mark.parametrize("plain", [False, True])
def test_a_sync_agent_running_a_coroutine_gets_cancel_through_ctx_run_async(tmp_path: Path, plain: bool) -> None:
    agents = {"sync_async": "agui_agents:sync_wrapping_async"}
    with Supervisor(make_config(tmp_path, agents=agents, cancel_grace_s=20.0 if not plain else 0.3)) as s:
        turn = s.start_turn("sync_async", {"plain": plain})
        _ready(s, turn.turn_id)
        s.cancel(turn.turn_id)
        events = _ended(s, turn.turn_id)
        info = s.status(turn.turn_id)
    assert info.status is TurnStatus.CANCELLED
    names = [e.name for e in events if isinstance(e, ev.Custom)]
    if plain:  # asyncio.run of its own: the token is never looked at; SIGTERM after the grace ends it
        assert names == ["ready"] and info.signal == 15
    else:  # the task was cancelled, well inside a long grace: no signal was needed
        assert names == ["ready", "task_cancelled"] and info.exit_code == 5 and info.signal is None
