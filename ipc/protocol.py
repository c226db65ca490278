"""What parent and child agree on besides frames: exit codes, the spec, the marks on a turn's processes."""

from __future__ import annotations

import enum

import msgspec

# Every process of a turn carries its id, so the supervisor finds descendants
# that left the tree: exec'd ones by this environment variable (``/proc/<pid>/environ``
# shows the environment as of the last exec), forked ones by ``process_mark``.
TURN_ENV = "RUNNERD_TURN_ID"


def process_mark(turn_id: str) -> str:
    """The process name (``comm``, at most 15 bytes) the child gives itself: inherited by every fork."""
    return "rd-" + turn_id[-11:]


class ExitCode(enum.IntEnum):
    """A child's exit code says which path it left by (gunicorn's idea).

    The parent trusts a code only together with the matching ``Done`` frame,
    so an agent calling ``os._exit(3)`` is still a crash.
    """

    OK = 0
    AGENT_ERROR = 3
    AGENT_UNAVAILABLE = 4
    CANCELLED = 5
    CONTAINMENT_FAILED = 6  # could not join the turn's cgroup: no agent code ran


class TurnSpec(msgspec.Struct, frozen=True):
    """Everything the child needs to run one turn (pickled to the child)."""

    turn_id: str
    thread_id: str
    agent_name: str
    agent_target: str  # "module:function", from the configuration only
    input_json: bytes  # the input, JSON-encoded ("null" when none)
    max_event_bytes: int
    log_level: str = "info"
    env_allowlist: tuple[str, ...] | None = None  # None: inherit the whole environment
    open_files: int | None = None  # RLIMIT_NOFILE
    core_dumps: bool = False  # RLIMIT_CORE 0 unless True
    uid: int | None = None  # drop to this user/group before loading the agent
    gid: int | None = None
    cgroup_procs: tuple[str, ...] = ()  # cgroup.procs files the child joins before anything else
    nproc: int | None = None  # RLIMIT_NPROC (only without cgroups, with uid: counts that user's processes)
