"""The API's value types (``TurnInfo``, ``TurnStatus``, ``ExportPage``) and how an ending is classified.

Lifecycle: ``queued -> starting -> running -> succeeded | failed | cancelled |
timed_out | lost``. Light on purpose: the ``Client`` imports it without the runtime.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import msgspec

from ipc import events as ev
from ipc.protocol import ExitCode
from supervisor.storage.lines import line_seq


class TurnStatus(str, enum.Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({TurnStatus.SUCCEEDED, TurnStatus.FAILED, TurnStatus.CANCELLED,
                    TurnStatus.TIMED_OUT, TurnStatus.LOST})


class TurnError(msgspec.Struct, frozen=True):
    code: str  # agent_error | agent_unavailable | crashed | timeout | memory_limit | limit_exceeded | lost | storage_error
    message: str


class TurnUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What the turn's cgroup counted, read when the turn ended.

    ``memory_peak_bytes``: the cgroup's memory high-water mark (v1
    ``memory.max_usage_in_bytes``, v2 ``memory.peak``: page cache and kernel
    memory included). ``cpu_seconds``: user + system CPU time of every process
    that ran in it. ``tasks_peak``: most tasks (threads count) at once, from
    ``pids.peak``; ``tasks_peak_sampled`` says it was sampled instead (no
    ``pids.peak`` on this kernel), so a short burst may be missed.
    """

    memory_peak_bytes: int | None = None
    cpu_seconds: float | None = None
    tasks_peak: int | None = None
    tasks_peak_sampled: bool = False
    source: str = ""  # "cgroup-v1" | "cgroup-v2"


class TurnInfo(msgspec.Struct, kw_only=True):
    """A snapshot of one turn; also the metadata file and the HTTP body."""

    turn_id: str
    agent: str
    session_id: str | None = None
    run_id: str | None = None  # the AG-UI client's runId (RUN_STARTED/RUN_FINISHED carry it); else the turn id
    status: TurnStatus = TurnStatus.QUEUED
    last_seq: int = 0
    pid: int | None = None
    pid_create_time: float | None = None  # psutil create time: pid reuse safety
    created_at: float = 0.0  # wall clock, seconds since the epoch
    started_at: float | None = None
    ended_at: float | None = None
    timeout_s: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: TurnError | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    compaction: str | None = None  # "done" or "failed" once tried (finished turns only)
    compaction_error: str | None = None
    raw_removed: bool = False  # retention dropped the full log; the compacted form remains
    queue_position: int | None = None  # 1-based, while queued
    output_bytes: int = 0  # the turn's stdout/stderr kept in <id>.output
    output_dropped: int = 0  # beyond limits.output_bytes: counted, not kept
    usage: TurnUsage | None = None  # from the turn's cgroup, once ended (None without cgroups)

    @property
    def ended(self) -> bool:
        return self.status.ended

    @property
    def agui_run_id(self) -> str:
        return self.run_id or self.turn_id


class Intent(str, enum.Enum):
    """Why the supervisor is ending a turn, recorded before any signal."""

    NONE = "none"
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"  # the child broke the wire protocol
    STORAGE = "storage"  # the event log could not be written
    MEMORY = "memory"  # the process tree went over limits.memory_bytes
    LIMIT = "limit"  # another per-turn limit (events, bytes, processes)


class Ending(msgspec.Struct, frozen=True):
    status: TurnStatus
    terminal: ev.Event
    error: TurnError | None


def classify(
    *,
    run_id: str,
    thread_id: str,
    intent: Intent,
    intent_message: str,
    done_outcome: str | None,
    done_message: str,
    result_json: bytes,
    exitcode: int | None,
) -> Ending:
    """Decide the turn's status and its one terminal event.

    The exit code counts only with the matching ``Done`` frame, so an agent
    calling ``os._exit(3)`` is a crash, not an agent error.
    """
    def error(status: TurnStatus, code: str, message: str) -> Ending:
        return Ending(status, ev.RunError(message=message, code=code, timestamp=_now_ms()),
                      TurnError(code, message))

    if intent is Intent.CANCEL:
        return Ending(TurnStatus.CANCELLED,
                      ev.RunFinished(thread_id=thread_id, run_id=run_id,
                                     outcome=ev.Outcome("cancelled"), timestamp=_now_ms()),
                      None)
    if intent is Intent.TIMEOUT:
        return error(TurnStatus.TIMED_OUT, "timeout", intent_message)
    if intent is Intent.PROTOCOL:
        return error(TurnStatus.FAILED, "crashed", intent_message)
    if intent is Intent.STORAGE:
        return error(TurnStatus.FAILED, "storage_error", intent_message)
    if intent is Intent.MEMORY:
        return error(TurnStatus.FAILED, "memory_limit", intent_message)
    if intent is Intent.LIMIT:
        return error(TurnStatus.FAILED, "limit_exceeded", intent_message)
    if done_outcome == "success" and exitcode == ExitCode.OK:
        finished = ev.RunFinished(thread_id=thread_id, run_id=run_id,
                                  outcome=ev.Outcome("success"), timestamp=_now_ms())
        if result_json:
            finished.result = msgspec.Raw(result_json)
        return Ending(TurnStatus.SUCCEEDED, finished, None)
    if done_outcome == "agent_error" and exitcode == ExitCode.AGENT_ERROR:
        return error(TurnStatus.FAILED, "agent_error", done_message)
    if done_outcome == "agent_unavailable" and exitcode == ExitCode.AGENT_UNAVAILABLE:
        return error(TurnStatus.FAILED, "agent_unavailable", done_message)
    if done_outcome == "containment_failed" and exitcode == ExitCode.CONTAINMENT_FAILED:
        return error(TurnStatus.FAILED, "crashed", done_message)
    if done_outcome == "cancelled" and exitcode == ExitCode.CANCELLED:  # nobody asked for a cancel
        return error(TurnStatus.FAILED, "agent_error", "the agent raised Cancelled, but no cancel was requested")
    return error(TurnStatus.FAILED, "crashed", describe_exit(exitcode))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the turn's process vanished without an exit status"
    if exitcode < 0:
        import signal as _signal
        try:
            name = _signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the turn's process was killed by {name}"
    return f"the turn's process exited with code {exitcode} without reporting a result"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def info_copy(info: TurnInfo, **changes: Any) -> TurnInfo:
    return msgspec.structs.replace(info, **changes)


class SeqRange(msgspec.Struct):
    from_: int = msgspec.field(name="from")
    to: int


class Gap(msgspec.Struct):
    """The cursor points before what is retained: said out loud, never skipped silently."""

    after: int
    missing: SeqRange
    available: SeqRange | None
    form: str  # what follows instead: "compacted"
    reason: str


class ExportPage(msgspec.Struct):
    """A page of a turn's history; ``events`` are the stored bytes, spliced unchanged."""

    turn: TurnInfo
    events: list[msgspec.Raw]
    total: int
    returned: int
    truncated: bool
    next_after: int
    compacted: bool = False  # events are the snapshot form (see supervisor.storage.compaction)
    gap: Gap | msgspec.UnsetType = msgspec.UNSET

    def items(self) -> list[tuple[int, ev.Event]]:
        return [(line_seq(bytes(r)), ev.decode_event(bytes(r))) for r in self.events]
