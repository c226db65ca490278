"""Compaction of a finished turn into its snapshot form (AG-UI serialization guidance).

``TEXT_MESSAGE_*``, ``REASONING_MESSAGE_*`` and ``TOOL_CALL_*`` (with results)
fold into one ``MESSAGES_SNAPSHOT``; ``STATE_SNAPSHOT``/``STATE_DELTA`` (RFC
6902) fold into one final ``STATE_SNAPSHOT``; every other type (``RUN_*``,
``STEP_*``, ``RAW``, ``CUSTOM``, ``ACTIVITY_*``, ``REASONING_START``/``END``,
``SUBAGENT_*`` …) is kept as it was.

Seq: a kept event keeps its seq; each snapshot carries the seq of the last
event it folds and sits at that position. So the compacted form is still in
seq order, and a reader resuming at any N reads N+1 … from the full log while
that exists (the compacted form is for replay from the start).

Bounded: no event of the compacted form exceeds ``max_event_bytes``. When the
one ``MESSAGES_SNAPSHOT`` would, the history is restated in pieces AG-UI
clients apply in order: a ``MESSAGES_SNAPSHOT`` of the longest prefix of
messages that fits (a snapshot replaces the list, so there is only this one),
then each later message as ``TEXT_MESSAGE_START``/``CONTENT``…/``END`` (its
text cut into pieces), its tool calls as ``TOOL_CALL_START``/``ARGS``…/``END``,
tool results as ``TOOL_CALL_RESULT``. The pieces take the seqs of the folded
message events, in order (the last one keeps the last folded seq), so the form
keeps distinct, increasing seqs; a history that cannot be restated so (more
pieces than folded events, a final state over the cap) is a ``CompactionError``
and the turn keeps its full log.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import jsonpatch
import jsonpointer
import msgspec

from ipc import events as ev
from supervisor.storage.lines import splice

_MESSAGE_TYPES = frozenset({"TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END",
                            "REASONING_MESSAGE_START", "REASONING_MESSAGE_CONTENT", "REASONING_MESSAGE_END",
                            "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT",
                            "MESSAGES_SNAPSHOT"})
_STATE_TYPES = frozenset({"STATE_SNAPSHOT", "STATE_DELTA"})


class CompactionError(ValueError):
    """The history cannot be folded (an unterminated message, a bad patch …)."""


class _Head(msgspec.Struct):
    seq: int
    type: str


_head = msgspec.json.Decoder(_Head)
_any = msgspec.json.Decoder()


def compact(lines: Iterable[bytes], *, max_event_bytes: int = 1 << 20) -> list[bytes]:
    """Fold a turn's stored lines (``{"seq":N,"type":…}``) into the compacted form."""
    try:
        return _compact(lines, max_event_bytes)
    except (KeyError, TypeError, AttributeError, msgspec.DecodeError) as exc:
        # Validated events keep their fields, but an agent's own MESSAGES_SNAPSHOT
        # or state can hold anything: never let that kill the keeper thread.
        raise CompactionError(f"unexpected event content: {exc!r}") from None


def _compact(lines: Iterable[bytes], max_event_bytes: int) -> list[bytes]:
    kept: list[tuple[int, bytes]] = []
    message_seqs: list[int] = []  # of every folded message event: the seqs the pieces may take
    messages: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    open_messages: set[str] = set()
    calls: dict[str, dict[str, Any]] = {}
    open_calls: set[str] = set()
    state: Any = None
    state_seen = False
    last_message_seq = last_state_seq = 0
    previous = 0
    for line in lines:
        try:
            head = _head.decode(line)
        except msgspec.DecodeError as exc:
            raise CompactionError(f"unreadable line after seq {previous}: {exc}") from None
        if head.seq != previous + 1:
            raise CompactionError(f"seq {head.seq} follows {previous}: the log has a hole")
        previous = head.seq
        kind = head.type
        if kind not in _MESSAGE_TYPES and kind not in _STATE_TYPES:
            kept.append((head.seq, line))
            continue
        e = _any.decode(line)
        if kind in _STATE_TYPES:
            last_state_seq = head.seq
            if kind == "STATE_SNAPSHOT":
                state = copy.deepcopy(e["snapshot"])
                state_seen = True
            else:
                try:
                    state = jsonpatch.apply_patch(state, e["delta"])
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as exc:
                    raise CompactionError(f"STATE_DELTA at seq {head.seq} does not apply: {exc}") from None
                state_seen = True
            continue
        last_message_seq = head.seq
        message_seqs.append(head.seq)
        if kind in ("TEXT_MESSAGE_START", "REASONING_MESSAGE_START"):
            if e["messageId"] not in by_id:
                started = {"id": e["messageId"], "role": e.get("role", "assistant"), "content": []}
                for optional in ("name", "subagentRunId"):
                    if optional in e:
                        started[optional] = e[optional]
                by_id[started["id"]] = started
                messages.append(started)
            open_messages.add(e["messageId"])
        elif kind in ("TEXT_MESSAGE_CONTENT", "REASONING_MESSAGE_CONTENT"):
            if e["messageId"] not in open_messages:
                raise CompactionError(f"content for message {e['messageId']} outside START/END at seq {head.seq}")
            target = by_id[e["messageId"]]
            if not isinstance(target.get("content"), list):  # it came from an agent's snapshot
                target["content"] = [target.get("content") or ""]
            target["content"].append(e["delta"])  # joined once at the end: linear
        elif kind in ("TEXT_MESSAGE_END", "REASONING_MESSAGE_END"):
            open_messages.discard(e["messageId"])
        elif kind == "TOOL_CALL_START":
            parent_id = e.get("parentMessageId") or f"msg-{e['toolCallId']}"
            found = by_id.get(parent_id)
            if found is None:
                found = {"id": parent_id, "role": "assistant"}
                by_id[parent_id] = found
                messages.append(found)
            parent = found
            new_call = {"id": e["toolCallId"], "type": "function",
                        "function": {"name": e["toolCallName"], "arguments": []}}
            parent.setdefault("toolCalls", []).append(new_call)
            calls[e["toolCallId"]] = new_call
            open_calls.add(e["toolCallId"])
        elif kind == "TOOL_CALL_ARGS":
            if e["toolCallId"] not in open_calls:
                raise CompactionError(f"args for tool call {e['toolCallId']} outside START/END at seq {head.seq}")
            calls[e["toolCallId"]]["function"]["arguments"].append(e["delta"])
        elif kind == "TOOL_CALL_END":
            open_calls.discard(e["toolCallId"])
        elif kind == "TOOL_CALL_RESULT":
            result = {"id": e["messageId"], "role": "tool", "content": e["content"],
                      "toolCallId": e["toolCallId"]}
            by_id[e["messageId"]] = result
            messages.append(result)
        elif kind == "MESSAGES_SNAPSHOT":  # the agent's own snapshot replaces what came before
            messages = [dict(m) for m in e["messages"]]
            by_id = {m["id"]: m for m in messages if isinstance(m, dict) and "id" in m}
    if open_messages:
        raise CompactionError(f"message {sorted(open_messages)[0]} was never ended")
    if open_calls:
        raise CompactionError(f"tool call {sorted(open_calls)[0]} was never ended")
    for msg in messages:  # pieces collected above, joined once
        if isinstance(msg, dict) and isinstance(msg.get("content"), list):
            msg["content"] = "".join(msg["content"])
        for call in msg.get("toolCalls", []) if isinstance(msg, dict) else []:
            if isinstance(call.get("function", {}).get("arguments"), list):
                call["function"]["arguments"] = "".join(call["function"]["arguments"])
    out = list(kept)
    if last_message_seq:
        pieces = _restate(messages, max_event_bytes)
        if len(pieces) > len(message_seqs):
            raise CompactionError(f"the messages need {len(pieces)} events of at most {max_event_bytes} bytes, "
                                  f"more than the {len(message_seqs)} they fold")
        seqs = message_seqs[len(message_seqs) - len(pieces):]  # increasing; the last is last_message_seq
        out += [(seq, splice(seq, piece)) for seq, piece in zip(seqs, pieces)]
    if state_seen:
        line = splice(last_state_seq, ev.encode_event(ev.StateSnapshot(snapshot=state)))
        if len(line) > max_event_bytes:
            raise CompactionError(f"the final state is {len(line)} bytes, over max_event_bytes {max_event_bytes}")
        out.append((last_state_seq, line))
    out.sort(key=lambda item: item[0])
    return [line for _, line in out]


_SEQ_ROOM = 32  # '{"seq":<up to 19 digits>,' and slack


def _restate(messages: list[Any], max_event_bytes: int) -> list[bytes]:
    """The messages as events of at most ``max_event_bytes`` (with their seq): one snapshot
    when it fits, else a snapshot of the prefix that fits and the rest as streamed events."""
    cap = max_event_bytes - _SEQ_ROOM
    whole = ev.encode_event(ev.MessagesSnapshot(messages=messages))
    if len(whole) <= cap:
        return [whole]
    sizes = [len(msgspec.json.encode(m)) + 1 for m in messages]
    base = len(ev.encode_event(ev.MessagesSnapshot(messages=[])))
    prefix, used = 0, base
    while prefix < len(messages) and used + sizes[prefix] <= cap:
        used += sizes[prefix]
        prefix += 1
    pieces = [ev.encode_event(ev.MessagesSnapshot(messages=messages[:prefix]))] if prefix else []
    for message in messages[prefix:]:
        pieces += _message_events(message, cap)
    return pieces


def _cut(text: str, room: int) -> list[str]:
    """``text`` in pieces whose JSON encoding fits ``room`` bytes (escapes counted)."""
    out: list[str] = []
    start = 0
    while start < len(text):
        n = min(len(text) - start, room - 2)  # the quotes
        while (size := len(msgspec.json.encode(text[start:start + n]))) > room:
            n = max(1, n * room // size - 1)  # escapes and multi-byte characters take more
        out.append(text[start:start + n])
        start += n
    return out


def _message_events(message: Any, cap: int) -> list[bytes]:
    if not isinstance(message, dict) or not isinstance(message.get("id"), str):
        raise CompactionError("a message without an id cannot be restated in pieces")
    role, mid = message.get("role", "assistant"), message["id"]
    content = message.get("content")
    events: list[ev.Event] = []
    if role == "tool":
        events.append(ev.ToolCallResult(message_id=mid, tool_call_id=str(message.get("toolCallId", "")),
                                        content=str(content or ""), role="tool"))
    elif role in ("assistant", "user", "system", "developer") and isinstance(content, (str, type(None))):
        if content or not message.get("toolCalls"):
            room = cap - len(ev.encode_event(ev.TextMessageContent(message_id=mid, delta="x"))) + 3
            events += [ev.TextMessageStart(message_id=mid, role=role),
                       *(ev.TextMessageContent(message_id=mid, delta=d) for d in _cut(content or "", room)),
                       ev.TextMessageEnd(message_id=mid)]
    else:
        raise CompactionError(f"message {mid[:64]!r} (role {str(role)[:16]!r}) cannot be restated in pieces")
    for call in message.get("toolCalls") or []:
        cid, function = call["id"], call["function"]
        room = cap - len(ev.encode_event(ev.ToolCallArgs(tool_call_id=cid, delta="x"))) + 3
        events += [ev.ToolCallStart(tool_call_id=cid, tool_call_name=function["name"], parent_message_id=mid),
                   *(ev.ToolCallArgs(tool_call_id=cid, delta=d) for d in _cut(function.get("arguments") or "", room)),
                   ev.ToolCallEnd(tool_call_id=cid)]
    encoded = [ev.encode_event(e) for e in events]
    if any(len(e) > cap for e in encoded):
        raise CompactionError(f"message {mid[:64]!r} has a part over max_event_bytes")
    return encoded
