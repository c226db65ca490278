"""Starting a turn's process: forkserver (default) or spawn, by name only.

Two traps are designed out here:
- spawn and forkserver children re-run the parent's ``__main__`` (150+ ms when
  that is the daemon); the parent's main module is hidden while a process
  starts, and the target (``ipc.boot.boot``) never needs it;
- a forkserver that imports agent code could die on an agent's import error;
  agents are preloaded through ``worker.preload``, which survives them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ipc.boot import boot
from ipc.protocol import TurnSpec
from ipc.ring import RingChannel
from ipc.token import CancelToken, new_token

WORKER_ENTRY = "worker.main:run"
PRELOAD_ENV = "RUNNERD_PRELOAD"
PRELOAD_PATH_ENV = "RUNNERD_PRELOAD_PATH"
_PR_SET_CHILD_SUBREAPER = 36
_start_lock = threading.Lock()  # hiding __main__ is process-wide


@dataclass
class Spawned:
    process: Any  # multiprocessing BaseProcess of the chosen context
    reader: Connection
    token: CancelToken
    output: Connection  # the child's stdout and stderr
    ring: RingChannel | None = None  # the shared-memory ring events come through, when on


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Let multiprocessing see a main module without a file or spec."""
    real = sys.modules["__main__"]
    stub = types.ModuleType("__main__")
    sys.modules["__main__"] = stub
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def become_subreaper() -> bool:
    """Adopt orphaned descendants, so a double-forked grandchild is still ours to kill."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def exitcode(process: Any) -> int | None:
    """``process.exitcode``, read under the start lock.

    ``Process.start()`` polls every earlier child (``multiprocessing.process._cleanup``)
    from the starting thread; two threads polling one forkserver Popen race on its
    sentinel, and the loser reads EOF and records exit code 255 for a healthy turn.
    """
    with _start_lock:
        return process.exitcode  # type: ignore[no-any-return]


class Spawner:
    """Starts worker processes; knows nothing of events or HTTP."""

    def __init__(self, method: str, preload_modules: list[str], ring_bytes: int = 0) -> None:
        self.method = method
        self.ring_bytes = ring_bytes  # 0: events over the pipe only
        self.ctx: multiprocessing.context.BaseContext = multiprocessing.get_context(method)
        self._preload = preload_modules
        self._warm = False

    def warm_up(self) -> None:
        """Start the forkserver now (once), with the worker and agents preloaded."""
        if self.method != "forkserver" or self._warm:
            return
        with _start_lock:
            if self._warm:
                return
            multiprocessing.forkserver.set_forkserver_preload(["ipc.boot", "worker.main", "worker.preload"])
            # The forkserver ignores the parent's sys.path (3.11): hand it over too,
            # or agents importable only through a host-added path are not preloaded.
            saved = {k: os.environ.get(k) for k in (PRELOAD_ENV, PRELOAD_PATH_ENV)}
            os.environ[PRELOAD_ENV] = ",".join(self._preload)
            os.environ[PRELOAD_PATH_ENV] = os.pathsep.join(sys.path)
            # The forkserver inherits this thread's signal mask through exec; a host that
            # blocks SIGCHLD would leave it deaf to its children's exits (every turn hangs).
            mask = signal.pthread_sigmask(signal.SIG_SETMASK, ())
            try:
                with _main_hidden():
                    multiprocessing.forkserver.ensure_running()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            self._warm = True

    def spawn(self, spec: TurnSpec) -> Spawned:
        self.warm_up()
        reader, writer = self.ctx.Pipe(duplex=False)
        out_reader, out_writer = self.ctx.Pipe(duplex=False)
        token = new_token(self.ctx)
        ring = RingChannel.create(self.ring_bytes) if self.ring_bytes else None
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=boot,
            args=(WORKER_ENTRY, spec, writer, token, out_writer, ring),
            name=f"runnerd-turn-{spec.turn_id}",
            daemon=False,
        )
        try:
            with _start_lock, _main_hidden():
                process.start()
        except BaseException:
            if ring is not None:
                ring.close()
            raise
        finally:
            writer.close()  # the child holds the only write ends: EOF means it is gone
            out_writer.close()
        return Spawned(process, reader, token, out_reader, ring)

