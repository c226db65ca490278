"""Compaction: pure folding, and the background keeper on real turns."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from conftest import make_config, wait_for

from ipc import events as ev
from supervisor.config import RetentionConfig
from supervisor.embedded import Supervisor
from supervisor.errors import HistoryGap
from supervisor.storage.compaction import CompactionError, compact
from supervisor.storage.retention import Candidate, plan
from supervisor.turns import TurnInfo, TurnStatus


def _lines(*events: ev.Event) -> list[bytes]:
    return [b'{"seq":%d,' % (i + 1) + ev.encode_event(e)[1:] for i, e in enumerate(events)]


def _decode(lines: list[bytes]) -> list[dict[str, object]]:
    return [msgspec.json.decode(x) for x in lines]


HISTORY = _lines(
    ev.RunStarted(thread_id="t", run_id="r"),                                   # 1
    ev.StateSnapshot(snapshot={"phase": "start", "n": 0}),                      # 2
    ev.StepStarted(step_name="s"),                                              # 3
    ev.TextMessageStart(message_id="m1"),                                       # 4
    ev.TextMessageContent(message_id="m1", delta="hel"),                        # 5
    ev.Custom(name="c", value=1),                                               # 6
    ev.TextMessageContent(message_id="m1", delta="lo"),                         # 7
    ev.TextMessageEnd(message_id="m1"),                                         # 8
    ev.ToolCallStart(tool_call_id="t1", tool_call_name="search", parent_message_id="m1"),  # 9
    ev.ToolCallArgs(tool_call_id="t1", delta='{"q":'),                         # 10
    ev.ToolCallArgs(tool_call_id="t1", delta='"x"}'),                           # 11
    ev.ToolCallEnd(tool_call_id="t1"),                                          # 12
    ev.ToolCallResult(message_id="r1", tool_call_id="t1", content="found"),     # 13
    ev.StateDelta(delta=[{"op": "replace", "path": "/phase", "value": "done"},
                         {"op": "add", "path": "/items", "value": [1]}]),       # 14
    ev.StepFinished(step_name="s"),                                             # 15
    ev.Raw(event={"x": 1}),                                                     # 16
    ev.RunFinished(thread_id="t", run_id="r", outcome=ev.Outcome("success")),   # 17
)


def test_messages_tool_calls_and_state_fold_into_snapshots_with_their_last_seq() -> None:
    out = _decode(compact(HISTORY))
    assert [(e["seq"], e["type"]) for e in out] == [
        (1, "RUN_STARTED"), (3, "STEP_STARTED"), (6, "CUSTOM"), (13, "MESSAGES_SNAPSHOT"),
        (14, "STATE_SNAPSHOT"), (15, "STEP_FINISHED"), (16, "RAW"), (17, "RUN_FINISHED")]
    messages = next(e for e in out if e["type"] == "MESSAGES_SNAPSHOT")["messages"]
    assert messages == [
        {"id": "m1", "role": "assistant", "content": "hello",
         "toolCalls": [{"id": "t1", "type": "function", "function": {"name": "search", "arguments": '{"q":"x"}'}}]},
        {"id": "r1", "role": "tool", "content": "found", "toolCallId": "t1"},
    ]
    state = next(e for e in out if e["type"] == "STATE_SNAPSHOT")["snapshot"]
    assert state == {"phase": "done", "n": 0, "items": [1]}
    for line in compact(HISTORY):  # every compacted event is a valid AG-UI event
        ev.decode_event(line)


@pytest.mark.parametrize("broken, reason", [
    (_lines(ev.RunStarted(thread_id="t", run_id="r"), ev.TextMessageStart(message_id="m1"),
            ev.TextMessageContent(message_id="m1", delta="x"), ev.RunError(message="m", code="crashed")),
     "message m1 was never ended"),
    (_lines(ev.RunStarted(thread_id="t", run_id="r"), ev.StateDelta(delta=[{"op": "remove", "path": "/x"}])),
     "STATE_DELTA at seq 2 does not apply"),
    (HISTORY[:3] + HISTORY[4:], "seq 5 follows 3"),
    (_lines(ev.ToolCallArgs(tool_call_id="zz", delta="{")), "outside START/END"),
])
def test_what_cannot_be_compacted_says_why(broken: list[bytes], reason: str) -> None:
    with pytest.raises(CompactionError, match=reason):
        compact(broken)


@pytest.mark.timeout(30)
def test_a_finished_turn_is_compacted_in_the_background_and_exported_both_ways(sup: Supervisor) -> None:
    turn = sup.start_turn("demo", {"delay": 0})
    sup.wait(turn.turn_id, 10)
    wait_for(lambda: sup.status(turn.turn_id).compaction == "done")
    raw = sup.export(turn.turn_id, after=0, limit=1000)
    assert raw.returned == 40 and not raw.compacted
    snap = sup.export(turn.turn_id, compact=True, limit=1000)
    assert snap.compacted and snap.total == 40
    types = [type(e).__name__ for _, e in snap.items()]
    assert types == ["RunStarted", "StepStarted", "StepFinished", "MessagesSnapshot", "StateSnapshot",
                     "RunFinished"]
    assert [s for s, _ in sup.events(turn.turn_id, compact=True)] == [s for s, _ in snap.items()]
    # resuming at any N still reads the full log
    assert [s for s, _ in sup.events(turn.turn_id, after=37, compact=True)] == [38, 39, 40]


@pytest.mark.timeout(30)
def test_an_uncompactable_turn_keeps_its_raw_log_and_says_why(sup: Supervisor) -> None:
    turn = sup.start_turn("segfault")  # fine: no messages at all
    sup.wait(turn.turn_id, 10)
    wait_for(lambda: sup.status(turn.turn_id).compaction is not None)
    assert sup.status(turn.turn_id).compaction == "done"
    # A log with a hole (damaged on disk) cannot be compacted: status says why.
    turn = sup.start_turn("count", {"n": 5})
    sup.wait(turn.turn_id, 10)
    wait_for(lambda: sup.status(turn.turn_id).compaction is not None)
    path = sup.event_store.dir / f"{turn.turn_id}.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:2] + [b"garbage"] + lines[3:]) + b"\n")
    sup.keeper.compact_one(turn.turn_id)
    info = sup.status(turn.turn_id)
    assert info.compaction == "failed" and info.compaction_error == "seq 4 follows 2: the log has a hole"
    sup.registry.evict_ended(older_than_s=-1)  # read from disk, where the damage is
    # The damaged line is skipped, never crashes a reader; the hole is visible in the seqs.
    assert [s for s, _ in sup.export(turn.turn_id, after=0).items()] == [1, 2, 4, 5, 6, 7]


def test_retention_plan_oldest_first() -> None:
    def c(i: int, size: int = 10, compacted: bool = True) -> Candidate:
        return Candidate(TurnInfo(turn_id=f"{i:026d}", agent="a", status=TurnStatus.SUCCEEDED,
                                  ended_at=1000.0 + i, compaction="done" if compacted else None), size)

    turns = [c(i) for i in range(10)]
    assert plan(turns, RetentionConfig(max_turns=7), 2000).remove == [f"{i:026d}" for i in range(3)]
    assert plan(turns, RetentionConfig(max_bytes=45), 2000).remove == [f"{i:026d}" for i in range(6)]
    assert plan(turns, RetentionConfig(max_age_s=995.5), 2000).remove == [f"{i:026d}" for i in range(5)]
    raw = plan(turns[:3] + [c(3, compacted=False)], RetentionConfig(keep_raw_s=998.5), 2000).remove_raw
    assert raw == [f"{i:026d}" for i in range(2)]
    running = Candidate(TurnInfo(turn_id="x" * 26, agent="a", status=TurnStatus.RUNNING), 10**9)
    assert plan([running], RetentionConfig(max_bytes=0, max_turns=0), 2000).remove == []


@pytest.mark.timeout(40)
def test_prune_removes_oldest_and_a_cursor_before_what_is_retained_gets_a_gap(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, retention=RetentionConfig(max_turns=2, keep_raw_s=0.0, interval_s=3600))
    with Supervisor(cfg) as sup:
        ids = []
        for _ in range(3):
            t = sup.start_turn("demo", {"delay": 0})
            sup.wait(t.turn_id, 10)
            ids.append(t.turn_id)
        wait_for(lambda: all(sup.status(i).compaction == "done" for i in ids))
        dry = sup.prune(dry_run=True)
        assert dry.dry_run and dry.removed == [ids[0]] and dry.bytes_freed > 0
        assert sup.status(ids[0]).status is TurnStatus.SUCCEEDED  # a dry run changes nothing
        report = sup.prune()
        assert report.removed == [ids[0]] and report.raw_removed == ids[1:]
        assert not list(sup.event_store.dir.glob(f"{ids[0]}*"))
        page = sup.export(ids[1], after=10)
        assert page.compacted and page.gap is not msgspec.UNSET
        assert msgspec.to_builtins(page.gap)["missing"] == {"from": 11, "to": 40}
        assert [type(e).__name__ for _, e in page.items()][-1] == "RunFinished"
        with pytest.raises(HistoryGap, match="events 11-40 are gone"):
            list(sup.events(ids[1], after=10))
        assert [s for s, _ in sup.events(ids[1], after=10, compact=True)][-1] == 40
    with Supervisor(cfg) as sup:  # and after a restart
        assert sup.status(ids[1]).raw_removed
        assert sorted(i.turn_id for i in sup.list_turns()) == ids[1:]


@pytest.mark.timeout(30)
def test_a_compacted_file_that_disagrees_with_its_log_is_ignored_and_rebuilt(sup: Supervisor) -> None:
    turn = sup.start_turn("demo", {"delay": 0})
    sup.wait(turn.turn_id, 10)
    wait_for(lambda: sup.status(turn.turn_id).compaction == "done")
    path = sup.event_store.dir / f"{turn.turn_id}.compact.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n")  # lost its terminal event
    page = sup.export(turn.turn_id, compact=True, limit=1000)
    assert not page.compacted and page.returned == 40  # served raw, never the bad file
    wait_for(lambda: sup.status(turn.turn_id).compaction == "done" and
             path.read_bytes().splitlines() == lines)  # folded again from the full log
    assert sup.export(turn.turn_id, compact=True).compacted


# -- bounded in bytes ------------------------------------------------------------

def _apply(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """What an AG-UI client's message list becomes after these events (the subset we write)."""
    messages: list[dict[str, object]] = []
    by_id: dict[str, dict[str, object]] = {}
    calls: dict[str, dict[str, object]] = {}
    for e in events:
        kind = e["type"]
        if kind == "MESSAGES_SNAPSHOT":
            messages = [dict(m) for m in e["messages"]]  # type: ignore[attr-defined]
            by_id = {str(m["id"]): m for m in messages}
        elif kind == "TEXT_MESSAGE_START":
            by_id[str(e["messageId"])] = {"id": e["messageId"], "role": e["role"], "content": ""}
            messages.append(by_id[str(e["messageId"])])
        elif kind == "TEXT_MESSAGE_CONTENT":
            by_id[str(e["messageId"])]["content"] = str(by_id[str(e["messageId"])]["content"]) + str(e["delta"])
        elif kind == "TOOL_CALL_START":
            parent = by_id.get(str(e["parentMessageId"]))
            if parent is None:
                parent = by_id[str(e["parentMessageId"])] = {"id": e["parentMessageId"], "role": "assistant"}
                messages.append(parent)
            call = {"id": e["toolCallId"], "type": "function",
                    "function": {"name": e["toolCallName"], "arguments": ""}}
            parent.setdefault("toolCalls", []).append(call)  # type: ignore[attr-defined]
            calls[str(e["toolCallId"])] = call
        elif kind == "TOOL_CALL_ARGS":
            fn = calls[str(e["toolCallId"])]["function"]
            fn["arguments"] += str(e["delta"])  # type: ignore[index]
        elif kind == "TOOL_CALL_RESULT":
            by_id[str(e["messageId"])] = {"id": e["messageId"], "role": "tool", "content": e["content"],
                                          "toolCallId": e["toolCallId"]}
            messages.append(by_id[str(e["messageId"])])
    return messages


def _huge_history(pieces: int, size: int) -> list[bytes]:
    text = "é\"x" * (size // 3)  # escapes: the cut counts encoded bytes
    return _lines(
        ev.RunStarted(thread_id="t", run_id="r"),
        ev.TextMessageStart(message_id="small"), ev.TextMessageContent(message_id="small", delta="hi"),
        ev.TextMessageEnd(message_id="small"),
        ev.TextMessageStart(message_id="big"),
        *(ev.TextMessageContent(message_id="big", delta=text) for _ in range(pieces)),
        ev.TextMessageEnd(message_id="big"),
        ev.ToolCallStart(tool_call_id="t1", tool_call_name="search", parent_message_id="big"),
        *(ev.ToolCallArgs(tool_call_id="t1", delta=text) for _ in range(pieces)),
        ev.ToolCallEnd(tool_call_id="t1"),
        ev.ToolCallResult(message_id="r1", tool_call_id="t1", content="found"),
        ev.TextMessageStart(message_id="after"), ev.TextMessageContent(message_id="after", delta="bye"),
        ev.TextMessageEnd(message_id="after"),
        ev.RunFinished(thread_id="t", run_id="r", outcome=ev.Outcome("success")),
    )


def test_a_history_over_max_event_bytes_is_restated_in_bounded_events() -> None:
    """50 deltas of ~3 KB: the one snapshot would be ~300 KB; the cap is 8 KiB."""
    history = _huge_history(50, 3000)
    whole = compact(history, max_event_bytes=1 << 20)
    assert len(whole) == 3 and max(len(x) for x in whole) > 200_000  # the unbounded form, for reference
    cap = 8192
    bounded = compact(history, max_event_bytes=cap)
    assert max(len(x) for x in bounded) <= cap
    for line in bounded:  # every piece is a valid AG-UI event
        ev.decode_event(line)
    seqs = [msgspec.json.decode(x)["seq"] for x in bounded]
    assert seqs == sorted(set(seqs)) and seqs[-1] == len(history)  # distinct, increasing, terminal last
    events = _decode(bounded)
    assert events[1]["type"] == "MESSAGES_SNAPSHOT" and [m["id"] for m in events[1]["messages"]] == ["small"]
    assert _apply(events) == _apply(_decode(whole))  # a client ends with the same messages


def test_a_history_that_cannot_be_restated_keeps_its_raw_log() -> None:
    # One delta of 6 KB under an 8 KiB cap becomes one content event, but a 2 KiB cap needs
    # more pieces than the turn had events: refused, rather than an oversized event.
    history = _huge_history(1, 6000)
    with pytest.raises(CompactionError, match="more than the"):
        compact(history, max_event_bytes=2048)


@pytest.mark.timeout(30)
def test_a_compacted_export_pages_through_the_snapshot_form_in_bounded_pages(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, max_page_bytes=4096)) as sup:
        turn = sup.start_turn("count", {"n": 50, "pad": 500})
        sup.wait(turn.turn_id, 10)
        wait_for(lambda: sup.status(turn.turn_id).compaction == "done")
        form = sup.keeper.compacted(sup.status(turn.turn_id))
        assert form is not None and sum(len(x) for x in form) > 5 * 4096
        got: list[bytes] = []
        after = 0
        while True:
            page = sup.export(turn.turn_id, compact=True, after=after, limit=10_000)
            assert page.compacted and sum(len(bytes(r)) + 1 for r in page.events) <= 4096
            got += [bytes(r) for r in page.events]
            if not page.truncated:
                break
            after = page.next_after
        assert got == form
