"""Finding and killing every process of a turn.

A turn's processes are: its root (checked by pid *and* create time), the
root's descendants, its process group, and orphans the supervisor adopted as
subreaper that carry the turn's id in their environment. Descendants seen once
are remembered, so one that empties its environment is still found.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

import psutil

from ipc.protocol import TURN_ENV, process_mark


@dataclass
class TurnTree:
    turn_id: str
    root_pid: int
    root_create_time: float
    known: dict[int, float] = field(default_factory=dict)  # pid -> create time

    def processes(self) -> list[psutil.Process]:
        """Every live process of this turn (zombies included, for reaping)."""
        found: dict[int, psutil.Process] = {}
        root = _same(self.root_pid, self.root_create_time)
        if root is not None:
            found[root.pid] = root
            for p in _children(root):
                found[p.pid] = p
        for pid, ctime in list(self.known.items()):
            same = _same(pid, ctime)
            if same is None:
                del self.known[pid]
            else:
                found.setdefault(pid, same)
        # The group id is the root's pid: trust it only while that pid is still the root.
        for p in _ours(self.turn_id, self.root_pid if root is not None else None):
            found.setdefault(p.pid, p)
        for pid, p in found.items():
            if pid not in self.known:
                try:
                    self.known[pid] = p.create_time()
                except psutil.Error:
                    pass
        return list(found.values())

    def signal(self, sig: int) -> int:
        """Send ``sig`` to the group and to every process found; return how many live."""
        if _same(self.root_pid, self.root_create_time) is not None:
            _killpg(self.root_pid, sig)  # only while the group is surely the turn's
        alive = 0
        for p in self.processes():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                p.send_signal(sig)
                alive += 1
            except psutil.Error:
                continue
        return alive

    def sweep(self, sig: int) -> int:
        """One scan: signal what lives, reap adopted zombies; return how many live."""
        if _same(self.root_pid, self.root_create_time) is not None:
            _killpg(self.root_pid, sig)
        me = os.getpid()
        alive = 0
        for p in self.processes():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    if p.pid != self.root_pid and p.ppid() == me:
                        os.waitpid(p.pid, os.WNOHANG)
                    continue
                p.send_signal(sig)
                alive += 1
            except (psutil.Error, ChildProcessError):
                continue
        return alive


def zombie_child() -> bool:
    """Whether some child of this process has exited and awaits reaping (none is reaped here)."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False  # no children at all


def _same(pid: int, create_time: float) -> psutil.Process | None:
    """The process ``pid`` only if it is still the one created at ``create_time``."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) < 0.01:
            return p
    except (psutil.Error, OSError):  # OSError: EMFILE when the daemon is out of descriptors
        pass
    return None


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def _ours(turn_id: str, pgid: int | None) -> list[psutil.Process]:
    """Our descendants in the turn's process group or carrying its id.

    Orphans re-parented to us (we are a subreaper) are found here: by group,
    by the turn's process name (forks), or by its id in the environment (execs).
    """
    out = []
    comm = process_mark(turn_id)
    for p in _children(psutil.Process()):
        try:
            if ((pgid is not None and os.getpgid(p.pid) == pgid) or _comm(p.pid) == comm
                    or p.environ().get(TURN_ENV) == turn_id):
                out.append(p)
        except (OSError, psutil.Error):
            continue  # gone, a zombie, or not ours to read
    return out


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is gone
    except PermissionError:
        pass  # pgid was reused by a process not ours: never signal it
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def kill_marked(turn_ids: set[str]) -> int:
    """SIGKILL every process on the machine marked as one of ``turn_ids``.

    For start-up recovery: the dead daemon's turns were re-parented elsewhere,
    so they are found by their marks (process name or environment), not by
    ancestry. Returns how many were signalled.
    """
    if not turn_ids:
        return 0
    comms = {process_mark(t): t for t in turn_ids}
    killed = 0
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if _comm(p.pid) in comms or p.environ().get(TURN_ENV) in turn_ids:
                p.kill()
                killed += 1
        except (OSError, psutil.Error):
            continue  # gone, or not ours to read or signal
    return killed
