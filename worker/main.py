"""Entry point of a turn's process: isolate, load the agent, run it, report.

The exit code is a protocol (``ipc.protocol.ExitCode``) and is always paired
with a ``Done`` frame; the supervisor decides what it means.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import inspect
import logging
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import msgspec
import structlog

from ipc.protocol import TURN_ENV, ExitCode, TurnSpec, process_mark
from ipc.ring import RingChannel, RingWriter
from ipc.token import CancelToken
from ipc.wire import Done, FrameSink, FrameWriter, Ready
from worker.asyncrun import CancelWatch, cancel_on_token
from worker.context import Cancelled, TurnContext

# Signals a daemon may have handled; the turn gets the defaults back so
# SIGTERM/SIGINT end it and it never runs its parent's handlers.
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                  signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGALRM)
_PR_SET_NAME = 15


def run(spec: TurnSpec, conn: Connection, token: CancelToken, output: Connection | None = None,
        ring: RingChannel | None = None) -> None:
    """The process target (started by name through ``ipc.boot``); events go through
    ``ring`` when the supervisor made one, else over ``conn``."""
    if output is not None:  # stdout and stderr go to the supervisor, which caps what it keeps
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
    writer: FrameSink = RingWriter(ring, conn) if ring is not None else FrameWriter(conn)
    try:
        _join_cgroups(spec.cgroup_procs)
    except OSError as exc:
        _finish(writer, Done("containment_failed", message=f"cannot join the turn's cgroup: {exc}"),
                ExitCode.CONTAINMENT_FAILED)
    _isolate(spec)
    log = structlog.get_logger("runnerd.worker").bind(turn_id=spec.turn_id)
    try:
        agent = _load(spec.agent_target)
    except Exception as exc:  # any import-time failure of agent code
        log.error("agent_unavailable", agent=spec.agent_name, error=repr(exc))
        _finish(writer, Done("agent_unavailable", message=f"cannot load agent {spec.agent_name!r}: {exc!r}"),
                ExitCode.AGENT_UNAVAILABLE)
    writer.send(Ready(os.getpid()))
    cancel = CancelWatch(token)
    ctx = TurnContext(turn_id=spec.turn_id, thread_id=spec.thread_id, writer=writer,
                      token=cancel, max_event_bytes=spec.max_event_bytes)
    try:
        value = _call(agent, ctx, msgspec.json.decode(spec.input_json), cancel)
        ctx.close_chunks()  # a chunk stream ends with the agent, as AG-UI's chunks imply
        result = b"" if value is None else msgspec.json.encode(value)
        if len(result) > spec.max_event_bytes:  # it travels inside RUN_FINISHED: same cap
            raise ValueError(f"the agent's result is {len(result)} bytes; the limit is {spec.max_event_bytes}")
    except (Cancelled, asyncio.CancelledError):
        _finish(writer, Done("cancelled"), ExitCode.CANCELLED)
    except BaseException as exc:  # the agent's failure, reported, never re-raised
        log.error("agent_error", error=repr(exc))
        message = "".join(traceback.format_exception_only(exc)).strip()
        _finish(writer, Done("agent_error", message=message), ExitCode.AGENT_ERROR)
    _finish(writer, Done("success", result=result), ExitCode.OK)


def _join_cgroups(procs_files: tuple[str, ...]) -> None:
    """Move this process into the turn's cgroup, first: still one thread, no agent
    code imported, so every process the agent ever forks is born inside."""
    pid = str(os.getpid())
    for path in procs_files:
        with open(path, "w") as f:
            f.write(pid)


def _isolate(spec: TurnSpec) -> None:
    os.setsid()  # own session and process group: killed as a group
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a mask survives exec: a host's blocked SIGTERM too
    for name in list(os.environ):  # only the daemon talks to systemd
        if name == "NOTIFY_SOCKET" or name.startswith("LISTEN_"):
            del os.environ[name]
    if spec.env_allowlist is not None:  # agents see only what the operator allowed
        for name in list(os.environ):
            if name not in spec.env_allowlist:
                del os.environ[name]
    os.environ[TURN_ENV] = spec.turn_id  # marks exec'd descendants
    _set_comm(process_mark(spec.turn_id).encode())  # marks forked descendants
    if not spec.core_dumps:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec.open_files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.open_files, spec.open_files))
    if spec.nproc is not None:  # without a cgroup: counts every process of the (dedicated) user
        resource.setrlimit(resource.RLIMIT_NPROC, (spec.nproc, spec.nproc))
    if spec.gid is not None:
        os.setgroups([])
        os.setgid(spec.gid)
    if spec.uid is not None:
        os.setuid(spec.uid)  # last: dropping the user first would forbid the rest
    level = getattr(logging, spec.log_level.upper(), logging.INFO)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _set_comm(name: bytes) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    func = getattr(importlib.import_module(module), name)
    if not callable(func):
        raise TypeError(f"{target} is not callable")
    return func  # type: ignore[no-any-return]


def _call(agent: Callable[..., Any], ctx: TurnContext, value: Any, token: CancelWatch) -> Any:
    if inspect.iscoroutinefunction(agent):
        return asyncio.run(cancel_on_token(agent(ctx, value), token))
    out = agent(ctx, value)
    if inspect.isawaitable(out):
        return asyncio.run(cancel_on_token(out, token))
    return out


def _finish(writer: FrameSink, done: Done, code: ExitCode) -> NoReturn:
    try:
        writer.send(done)
    except OSError:
        pass  # the supervisor is gone; the exit code still tells the story
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: no atexit hooks and no joining of threads the agent left behind.
    os._exit(code)
