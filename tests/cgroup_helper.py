"""A bounded outer cgroup for hostile tests: the daemon under test runs inside it.

Made under this test process's own cgroup in each v1 hierarchy, with a pids
and a memory limit, so a fork bomb or memory hog that escaped the code under
test still cannot take the machine down. Tests skip (with the reason) where
it cannot be made: not root, or no v1 pids/memory controllers.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "freezer")
_names = itertools.count()


def v1_unavailable() -> str | None:
    """Why a bounded v1 cgroup cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    own = own_cgroups()
    for c in ("pids", "memory"):
        if c not in own or not Path(f"/sys/fs/cgroup/{c}").is_dir():
            return f"no cgroup v1 {c} controller mounted at /sys/fs/cgroup/{c}"
    return None


def own_cgroups() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


class Outer:
    """pids.max and memory.limit_in_bytes around everything a test starts in it."""

    def __init__(self, pids_max: int = 200, memory_bytes: int = 1 << 30) -> None:
        own = own_cgroups()
        name = f"rdtest-{os.getpid()}-{next(_names)}"
        self.dirs: dict[str, Path] = {}
        for c in CONTROLLERS:
            mount = Path(f"/sys/fs/cgroup/{c}")
            if c in own and mount.is_dir():
                d = mount / own[c].lstrip("/") / name
                d.mkdir()
                self.dirs[c] = d
        (self.dirs["pids"] / "pids.max").write_text(str(pids_max))
        (self.dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(memory_bytes))

    def popen(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``args`` inside: the shell joins every hierarchy, then execs."""
        procs = " ".join(str(d / "cgroup.procs") for d in self.dirs.values())
        script = f'for f in {procs}; do echo $$ > "$f" || exit 97; done; exec "$@"'
        return subprocess.Popen(["sh", "-c", script, "sh", *args], **kwargs)  # type: ignore[call-overload]

    def pids(self) -> set[int]:
        """Every process inside, sub-cgroups included."""
        out: set[int] = set()
        for root, _, _ in os.walk(self.dirs["pids"]):
            text = Path(root, "cgroup.procs").read_text()
            out.update(int(x) for x in text.split())
        return out

    def subgroups(self) -> list[str]:
        """Every cgroup below the outer one, in every hierarchy."""
        found = []
        for d in self.dirs.values():
            for root, dirs, _ in os.walk(d):
                found.extend(os.path.join(root, x) for x in dirs)
        return sorted(found)

    def destroy(self) -> None:
        """Kill whatever is left (no fork can succeed at pids.max 0), remove it all."""
        (self.dirs["pids"] / "pids.max").write_text("0")
        deadline = time.monotonic() + 10
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        for d in self.dirs.values():
            for root, dirs, _ in sorted(os.walk(d, topdown=False), key=lambda t: -len(t[0])):
                for x in dirs:
                    _rmdir_when_empty(os.path.join(root, x))
            _rmdir_when_empty(str(d))


def _rmdir_when_empty(path: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
