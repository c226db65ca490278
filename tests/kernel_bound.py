"""A bounded cgroup of the test's own: the kernel limit a hostile test runs under.

Made below this test process's own cgroup in each v1 hierarchy present (pids and
memory required; cpu, cpuacct and freezer too, so runnerd can nest its turn
cgroups inside), with a pids and a memory limit: an exponential fork bomb or a
memory hog that escaped the code under test still cannot reach the machine.
Tests skip (with the reason) where it cannot be made. At the end everything in
it is killed (no fork can succeed at pids.max 0) and it is removed, sub-cgroups
included. Independent of any cgroup runnerd itself makes.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "freezer")
_PREFIX = f"runnerd-test-{os.getpid()}-"
_names = itertools.count()


def own_cgroups() -> dict[str, str]:
    """Controller → this process's cgroup path (``""`` is the v2 entry)."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _parent(controller: str, own: dict[str, str]) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}") / own[controller].lstrip("/")


def unavailable() -> str | None:
    """Why a bounded cgroup cannot be made here, or None."""
    if os.geteuid() != 0:
        return "creating a cgroup needs root"
    own = own_cgroups()
    for c in ("pids", "memory"):
        if c not in own or not _parent(c, own).is_dir():
            return f"no cgroup v1 {c} controller mounted at /sys/fs/cgroup/{c}"
    return None


def leftovers() -> list[Path]:
    """Cgroups of this test process still present (each test removes its own)."""
    own = own_cgroups()
    return [p for c in CONTROLLERS if c in own and _parent(c, own).is_dir()
            for p in _parent(c, own).glob(_PREFIX + "*")]


class KernelBound:
    """``with KernelBound(pids_max=300, memory_bytes=2 << 30) as kb: kb.popen([...])``."""

    def __init__(self, *, pids_max: int, memory_bytes: int) -> None:
        own = own_cgroups()
        name = f"{_PREFIX}{next(_names)}"
        self.dirs: dict[str, Path] = {}
        self.peak_pids = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        try:
            for c in CONTROLLERS:
                if c in own and Path(f"/sys/fs/cgroup/{c}").is_dir():
                    d = _parent(c, own) / name
                    d.mkdir()
                    self.dirs[c] = d
            (self.pids_dir / "pids.max").write_text(str(pids_max))
            (self.memory_dir / "memory.limit_in_bytes").write_text(str(memory_bytes))
            memsw = self.memory_dir / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no escape into swap either
                memsw.write_text(str(memory_bytes))
        except BaseException:
            self.close()
            raise

    @property
    def pids_dir(self) -> Path:
        return self.dirs["pids"]

    @property
    def memory_dir(self) -> Path:
        return self.dirs["memory"]

    def __enter__(self) -> KernelBound:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside: a shell joins every hierarchy, then execs the command."""
        procs = " ".join(str(d / "cgroup.procs") for d in self.dirs.values())
        script = f'for f in {procs}; do echo $$ > "$f" || exit 97; done; exec "$@"'
        return subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv], **kwargs)

    def procs(self) -> set[int]:
        """Every process inside, sub-cgroups included."""
        out: set[int] = set()
        for root, _, _ in os.walk(self.pids_dir):
            try:
                out.update(int(x) for x in Path(root, "cgroup.procs").read_text().split())
            except FileNotFoundError:  # a sub-cgroup removed meanwhile
                pass
        return out

    def subgroups(self) -> list[str]:
        """Every cgroup below this one, in every hierarchy."""
        found = []
        for d in self.dirs.values():
            for root, dirs, _ in os.walk(d):
                found.extend(os.path.join(root, x) for x in dirs)
        return sorted(found)

    def pids_current(self) -> int:
        return int((self.pids_dir / "pids.current").read_text())

    def fork_refusals(self) -> int:
        """How often the kernel refused a fork at ``pids.max``."""
        return int((self.pids_dir / "pids.events").read_text().split()[1])

    def reset_memory_peak(self) -> None:
        (self.memory_dir / "memory.max_usage_in_bytes").write_text("0")

    def memory_peak(self) -> int:
        return int((self.memory_dir / "memory.max_usage_in_bytes").read_text())

    def memory_usage(self) -> int:
        return int((self.memory_dir / "memory.usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        for line in (self.memory_dir / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def sample_pids(self, interval: float = 0.001) -> None:
        """Record the peak task count (cgroup v1 keeps no peak) until ``close``."""
        def run() -> None:
            while not self._sampling.is_set():
                try:
                    self.peak_pids = max(self.peak_pids, self.pids_current())
                except (OSError, ValueError):
                    return
                time.sleep(interval)
        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def close(self) -> None:
        """Kill everything inside (no new forks first), then remove it all."""
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)
        if "pids" in self.dirs and self.pids_dir.exists():
            try:
                (self.pids_dir / "pids.max").write_text("0")  # a bomb cannot replace what we kill
            except OSError:
                pass
            deadline = time.monotonic() + 10
            while (left := self.procs()) and time.monotonic() < deadline:
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
    deadline = time.monotonic() + 10
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY until the killed tasks are reaped
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
