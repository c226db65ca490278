"""A cgroup v1 pids + memory cgroup of the test's own: the kernel bound a hostile test
runs under, so an exponential fork bomb or a memory hog can never reach the machine.

The supervisor (and so every turn it starts) runs inside it; at the end everything
in it is killed and it is removed. Independent of any cgroup runnerd itself makes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

PIDS_ROOT = Path("/sys/fs/cgroup/pids")
MEMORY_ROOT = Path("/sys/fs/cgroup/memory")


def unavailable() -> str | None:
    """Why a bounded cgroup cannot be made here, or None."""
    if os.geteuid() != 0:
        return "creating a cgroup needs root"
    for root, knob in ((PIDS_ROOT, "pids.max"), (MEMORY_ROOT, "memory.limit_in_bytes")):
        if not (root / "cgroup.procs").exists():
            return f"no cgroup v1 controller at {root}"
        probe = root / f"runnerd-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError as exc:
            return f"cannot create a cgroup under {root}: {exc.strerror}"
        try:
            if not (probe / knob).exists():
                return f"{root} has no {knob}"
        finally:
            probe.rmdir()
    return None


def leftovers() -> list[Path]:
    """Cgroups of this test process still present (each test removes its own)."""
    prefix = f"runnerd-test-{os.getpid()}-"
    return [p for root in (PIDS_ROOT, MEMORY_ROOT) if root.is_dir() for p in root.glob(prefix + "*")]


class KernelBound:
    """``with KernelBound(pids_max=300, memory_bytes=2 << 30) as kb: kb.popen([...])``."""

    def __init__(self, *, pids_max: int, memory_bytes: int) -> None:
        name = f"runnerd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.pids = PIDS_ROOT / name
        self.memory = MEMORY_ROOT / name
        self.pids_max = pids_max
        self.memory_bytes = memory_bytes
        self.peak_pids = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> KernelBound:
        self.pids.mkdir()
        try:
            self.memory.mkdir()
            (self.pids / "pids.max").write_text(str(self.pids_max))
            (self.memory / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
            memsw = self.memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no escape into swap either
                memsw.write_text(str(self.memory_bytes))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the cgroup: a shell joins it, then execs the command."""
        join = (f'echo $$ > {self.pids}/cgroup.procs && echo $$ > {self.memory}/cgroup.procs '
                f'&& exec "$@"')
        return subprocess.Popen(["/bin/sh", "-c", join, "sh", *argv], **kwargs)

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in (self.pids / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def pids_current(self) -> int:
        return int((self.pids / "pids.current").read_text())

    def fork_refusals(self) -> int:
        """How often the kernel refused a fork at ``pids.max``."""
        return int((self.pids / "pids.events").read_text().split()[1])

    def memory_peak(self) -> int:
        return int((self.memory / "memory.max_usage_in_bytes").read_text())

    def memory_usage(self) -> int:
        return int((self.memory / "memory.usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        for line in (self.memory / "memory.oom_control").read_text().splitlines():
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
        """Kill everything in the cgroup (no new forks first), then remove it."""
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)
        if self.pids.exists():
            try:
                (self.pids / "pids.max").write_text("0")  # a bomb cannot replace what we kill
            except OSError:
                pass
            deadline = time.monotonic() + 10
            while (procs := self.procs()) and time.monotonic() < deadline:
                for pid in procs:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
        for cgroup in (self.pids, self.memory):
            deadline = time.monotonic() + 10
            while cgroup.exists():
                try:
                    cgroup.rmdir()
                except OSError:  # EBUSY until the killed tasks are reaped
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
