"""The cgroup filesystem, file by file: what ``supervisor.runtime.cgroups`` reads and writes.

Small, policy-free helpers: where the hierarchies are mounted, this process's
own cgroups, counters files, writes that must not raise on a kill path,
freezing (v1), removal, and inotify (which has no standard-library wrapper).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

from supervisor.logs import get_logger

log = get_logger("runnerd.cgroups")

FREEZE_WAIT_S = 1.0
_IN_MODIFY = 0x2


def own_cgroups() -> dict[str, str]:
    """controller -> the daemon's cgroup path ("" is the v2 hierarchy)."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def mounts() -> dict[str, tuple[str, set[str]]]:
    """mount point -> (fs type, v1 controllers from the super options)."""
    out: dict[str, tuple[str, set[str]]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = (right.split() + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                out[left.split()[4]] = (fstype, set(options.split(",")))
    return out


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def read_int(path: str) -> int | None:
    text = read(path).strip()
    return int(text) if text.isdigit() else None


def counters(path: str) -> dict[str, int]:
    """``name value`` lines (memory.events, pids.events, memory.oom_control, cpu.stat)."""
    out = {}
    for line in read(path).splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def try_write(path: str, value: str) -> None:
    """A write on the kill path: logged if refused, never raised into the relay."""
    try:
        write(path, value)
    except OSError as exc:
        log.warning("cgroup_write_failed", path=path, error=exc.strerror)


def write_if_there(path: str, value: str) -> None:
    if os.path.exists(path):
        write(path, value)


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # exited after the listing


def freeze(freezer: str) -> bool:
    state = os.path.join(freezer, "freezer.state")
    try:
        write(state, "FROZEN")
    except OSError:
        return False
    deadline = time.monotonic() + FREEZE_WAIT_S
    while time.monotonic() < deadline:
        if read(state).strip() == "FROZEN":
            return True
        time.sleep(0.001)  # FREEZING: tasks are still being stopped
    return False  # kill anyway; pids.max 0 keeps the list finite


def rmdir(d: str) -> bool:
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cgroup_remove_failed", path=d, error=exc.strerror)
        return False
    return True


def wait_rmdir(d: str, timeout: float = 2.0) -> int:
    """rmdir once the killed members have left (EBUSY until then); 1 if removed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(d)
            return 1
        except FileNotFoundError:
            return 0
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                log.warning("cgroup_remove_failed", path=d, error=exc.strerror)
                return 0
        time.sleep(0.005)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_libc = ctypes.CDLL(None, use_errno=True)


def inotify_init() -> int:
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def inotify_watch(fd: int, path: str) -> None:
    if _libc.inotify_add_watch(fd, path.encode(), _IN_MODIFY) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
