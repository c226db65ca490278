"""``POST /v1/agents/{agent}/ag-ui``: an AG-UI ``RunAgentInput`` in, the run's events out as SSE.

What ``HttpAgent`` of ``@ag-ui/client`` (and CopilotKit through it) speaks:

- ``threadId`` is the session (its ``multitask`` policy applies); ``runId`` is
  kept on the turn and echoed in ``RUN_STARTED``/``RUN_FINISHED``. The same
  ``(threadId, runId)`` POSTed again attaches to that run, from
  ``Last-Event-ID`` when sent: the agent never starts twice.
- The agent gets the whole ``RunAgentInput`` (as sent, unknown fields too) as
  its ``input``. The run is an ordinary turn for ``/v1``, runnerctl and Client.
- Each frame is ``id: <seq>`` and ``data: <event>``, the event without ``seq``
  (AG-UI has no such field; its clients warn about it). What ``/v1`` says with
  ``event: gap`` / ``event: shutdown`` frames is a ``CUSTOM`` event here
  (``runnerd.gap``, ``runnerd.shutdown``): those clients only read ``data:``.
- Bad input is a JSON error before any stream byte: 400 (bad JSON or types,
  a bad cursor), 404 (unknown agent), 409 (busy thread, a runId already used
  with another agent), 413 (too large), 429 (queue full).
- A client that disconnects before the end cancels the run, unless
  ``on_disconnect`` is ``continue`` (``[agui]`` in the config; per request
  ``?on_disconnect=`` or ``forwardedProps.runnerd.on_disconnect``).
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from supervisor.embedded import Supervisor
from supervisor.errors import InvalidCursor, InvalidRequest, RunnerdError, UnknownAgent
from supervisor.server.bodies import read_json
from supervisor.server.sse import EventStream, Framing, StreamSet
from supervisor.storage.lines import line_seq, unsplice
from supervisor.turns import TurnInfo

__all__ = ["agui_routes", "RunAgentInput", "openapi_paths"]

_MULTITASK = ("reject", "enqueue", "interrupt")


class RunAgentInput(msgspec.Struct, rename="camel"):
    """The fields runnerd reads; the rest travels to the agent untouched."""

    thread_id: str
    run_id: str
    messages: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    context: list[dict[str, Any]] = []
    state: Any = None
    forwarded_props: Any = None
    parent_run_id: str | None = None
    protocol_version: str | None = None


class RunIdConflict(RunnerdError):
    code = "run_id_conflict"
    status = 409


class Options(msgspec.Struct, forbid_unknown_fields=True):
    """``forwardedProps.runnerd`` and the query string (which wins)."""

    on_disconnect: str | None = None
    multitask: str = "reject"
    timeout_s: float | None = None


def agui_routes(sup: Supervisor, *, streams: StreamSet, max_body_bytes: int, keepalive_s: float,
                send_timeout_s: float) -> list[Route]:
    endpoint = AguiEndpoint(sup, streams=streams, max_body_bytes=max_body_bytes,
                            keepalive_s=keepalive_s, send_timeout_s=send_timeout_s)
    return [Route("/v1/agents/{agent}/ag-ui", endpoint.run, methods=["POST"])]


class AguiEndpoint:
    def __init__(self, sup: Supervisor, *, streams: StreamSet, max_body_bytes: int, keepalive_s: float,
                 send_timeout_s: float) -> None:
        self.sup = sup
        self.streams = streams
        self.max_body_bytes = max_body_bytes
        self.keepalive_s = keepalive_s
        self.send_timeout_s = send_timeout_s
        self._start_lock = threading.Lock()  # find-or-start of one (threadId, runId) is atomic

    async def run(self, request: Request) -> EventStream:
        agent = request.path_params["agent"]
        if agent not in self.sup.agents:
            raise UnknownAgent(f"unknown agent {agent[:64]!r}; configured: {', '.join(sorted(self.sup.agents))}")
        raw = await self._body(request)
        try:
            run = msgspec.convert(raw, RunAgentInput)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"invalid RunAgentInput: {exc}") from None
        options = _options(run, request)
        after = _cursor(request.headers.get("last-event-id"))
        info = await run_in_threadpool(self._find_or_start, agent, run, raw, options)
        if after > info.last_seq:
            raise InvalidCursor(f"Last-Event-ID {after} is beyond the run's last event {info.last_seq}")
        mode = options.on_disconnect or self.sup.config.agui.on_disconnect
        turn_id = info.turn_id

        async def cancel() -> None:
            await run_in_threadpool(self.sup.cancel, turn_id, reason="the AG-UI client disconnected")

        return EventStream(self.sup, turn_id, after=after, keepalive_s=self.keepalive_s, streams=self.streams,
                           send_timeout_s=self.send_timeout_s, framing=AGUI_FRAMING,
                           on_abandoned=cancel if mode == "cancel" else None)

    async def _body(self, request: Request) -> Any:
        raw = await read_json(request, Any, self.max_body_bytes)
        if not isinstance(raw, dict):
            raise InvalidRequest("a RunAgentInput is a JSON object")
        return raw

    def _find_or_start(self, agent: str, run: RunAgentInput, raw: dict[str, Any], options: Options) -> TurnInfo:
        with self._start_lock:
            for info in self.sup.list_turns(session_id=run.thread_id):
                if info.run_id == run.run_id:
                    if info.agent != agent:
                        raise RunIdConflict(f"runId {run.run_id[:64]!r} of this thread is a run of "
                                               f"agent {info.agent!r}")
                    return info  # a retry or a reattach: never a second start
            return self.sup.start_turn(agent, raw, session_id=run.thread_id, run_id=run.run_id,
                                       multitask=options.multitask, timeout_s=options.timeout_s)


def openapi_paths() -> dict[str, Any]:
    """This route in the OpenAPI document (``supervisor.server.openapi``)."""
    errors = {str(code): {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"}}}} for code in (400, 404, 409, 413, 429, 503)}
    option = {"in": "query", "required": False}
    return {"/v1/agents/{agent}/ag-ui": {"post": {
        "summary": "Run an agent for an AG-UI client: RunAgentInput in, AG-UI events out (SSE, seq in id: only)",
        "parameters": [{"name": "agent", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "on_disconnect", **option, "schema": {"enum": ["cancel", "continue"]}},
                       {"name": "multitask", **option, "schema": {"enum": list(_MULTITASK)}},
                       {"name": "timeout_s", **option, "schema": {"type": "number"}},
                       {"name": "Last-Event-ID", "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0}}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": msgspec.json.schema(RunAgentInput)}}},
        "responses": {"200": {"description": "AG-UI event stream",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}, **errors}}}}


def _options(run: RunAgentInput, request: Request) -> Options:
    given: dict[str, Any] = {}
    props = run.forwarded_props
    if isinstance(props, dict) and isinstance(props.get("runnerd"), dict):
        given.update(props["runnerd"])
    for key in ("on_disconnect", "multitask", "timeout_s"):
        value = request.query_params.get(key)
        if value is not None:
            given[key] = float(value) if key == "timeout_s" and _is_number(value) else value
    try:
        options = msgspec.convert(given, Options)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid runnerd options: {exc}") from None
    if options.on_disconnect not in (None, "cancel", "continue"):
        raise InvalidRequest("on_disconnect must be 'cancel' or 'continue'")
    if options.multitask not in _MULTITASK:
        raise InvalidRequest(f"multitask must be one of {', '.join(_MULTITASK)}")
    return options


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _cursor(header: str | None) -> int:
    if header is None or header.strip() == "":
        return 0
    value = header.strip()
    if not (value.isascii() and value.isdigit()) or int(value) > 1 << 62:
        raise InvalidCursor(f"Last-Event-ID must be a non-negative integer, got {value[:32]!r}")
    return int(value)


def agui_frames(lines: list[bytes]) -> bytes:
    """``id: <seq>`` and the stored event without its ``seq`` (AG-UI has no such field)."""
    return b"".join([b"id: %d\ndata: %s\n\n" % (line_seq(line), unsplice(line)) for line in lines])


def custom_frame(name: str, value: Any) -> bytes:
    """A notice as these clients read it: a ``CUSTOM`` event named ``runnerd.<name>``, no ``event:`` line."""
    event = msgspec.json.encode({"type": "CUSTOM", "name": "runnerd." + name, "value": value})
    return b"data: %s\n\n" % event


AGUI_FRAMING = Framing(agui_frames, custom_frame, resend_snapshot=False)
