"""Kernel containment: a cgroup per turn, for limits, kill and figures.

The daemon's base is ``<own>/runnerd-<state hash>-<pid>`` in each hierarchy,
where ``<own>`` is the daemon's own cgroup (``/proc/self/cgroup``): turn
cgroups (``<base>/turn-<id>``) are made nowhere else. The state hash ties a
base to one state directory, so start-up recovery removes only what a dead
daemon of the same state directory left behind.

The child joins its cgroup itself, first thing in ``worker.main.run`` (the
paths travel in ``TurnSpec.cgroup_procs``), while it is still single-threaded
and before any agent code is imported: everything the agent forks is born
inside. The supervisor creates the cgroup, with its limits, before the spawn.

cgroup v1 (controllers mounted apart): ``pids`` and ``memory`` are required;
``cpu``, ``cpuacct`` and ``freezer`` are used when present. cgroup v2 (a
unified hierarchy with ``pids`` and ``memory`` available): one directory.

CPU under contention: the daemon must relay, stream and cancel while its turns
keep every core busy. v1: every turn is below the base in the ``cpu``
hierarchy and the base weighs as one busy task per CPU, so all turns together
can still fill the machine beside other processes of the daemon's cgroup (the
base's parent, where the daemon stays), while each daemon thread outweighs
any one turn. v2: the turns are siblings of the daemon's leaf, which gets the
top ``cpu.weight`` (10000, a turn's is 100): with N busy turns the daemon can
take 10000/(10000 + 100 N) of the CPU (N = 50: two thirds); written only when
the daemon moved to a leaf (a daemon in the root cgroup competes as tasks).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from dataclasses import dataclass, field

import msgspec

from supervisor.config import LimitsConfig
from supervisor.errors import ResourceUnavailable
from supervisor.logs import get_logger
from supervisor.runtime import cgroupfs as fs
from supervisor.runtime.stoppolicy import Breach
from supervisor.turns import Intent, TurnUsage

log = get_logger("runnerd.cgroups")

V1_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "freezer")
RUNNERD_TASKS = 1  # tasks of a turn that are runnerd's, not the agent's: not charged to max_processes
V1_REQUIRED = ("pids", "memory")
DAEMON_CPU_WEIGHT = 10000  # v2's highest cpu.weight (a turn's default is 100)
V1_TURNS_CPU_SHARES = 1024 * (os.cpu_count() or 1)  # 1024: one task at nice 0
CPU_PERIOD_US = 100_000


class Containment(msgspec.Struct, frozen=True):
    """What contains a turn's processes, as /v1/health shows it."""

    mode: str  # "cgroup-v2" | "cgroup-v1" | "polling"
    controllers: list[str]
    reason: str  # why this mode (why not a better one)


@dataclass
class TurnCgroup:
    """One turn's cgroup (a directory per v1 hierarchy, or one v2 directory)."""

    version: int
    dirs: dict[str, str]  # controller -> directory ("" for v2's one directory)
    limits: LimitsConfig
    watch: list[int] = field(default_factory=list)  # fds readable on an OOM (or v2 pids) event
    pids_seen: int = 0  # highest pids.current sampled, when the kernel keeps no peak
    killed: set[int] = field(default_factory=set)  # to reap if they were re-parented to us

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files the child writes its pid into (one per hierarchy)."""
        return tuple(sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()}))

    def _dir(self, controller: str) -> str | None:
        return self.dirs.get("" if self.version == 2 else controller)

    # -- limits and events -------------------------------------------------------

    def breach(self) -> Breach | None:
        """The kernel's own account of a limit hit: an OOM kill, a refused fork."""
        lim = self.limits
        mem = self._dir("memory")
        if mem is not None:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            counters = fs.counters(os.path.join(mem, name))
            if counters.get("oom_kill", 0) or counters.get("oom_group_kill", 0):
                cap = (f"limits.memory_bytes {lim.memory_bytes >> 20} MiB" if lim.memory_bytes is not None
                       else "a memory limit above the turn")
                return Breach(Intent.MEMORY, f"the kernel's OOM killer ended a process of the turn ({cap})")
        pids = self._dir("pids")
        if pids is not None and lim.max_processes is not None:
            self.sample_pids()
            if fs.counters(os.path.join(pids, "pids.events")).get("max", 0):
                return Breach(Intent.LIMIT, (f"the turn tried to run more than {lim.max_processes} processes "
                                             f"(limits.max_processes {lim.max_processes}, enforced by pids.max)"))
        return None

    def drain_events(self) -> None:
        for fd in self.watch:
            try:
                os.read(fd, 4096)  # an eventfd counter or inotify records: only the wake-up matters
            except BlockingIOError:
                pass

    def sample_pids(self) -> None:
        pids = self._dir("pids")
        if pids is not None:
            self.pids_seen = max(self.pids_seen, fs.read_int(os.path.join(pids, "pids.current")) or 0)

    # -- kill --------------------------------------------------------------------

    def members(self) -> list[int]:
        """Every live process in the turn's cgroup (exited ones leave it at once)."""
        d = self._dir("pids") or next(iter(self.dirs.values()))
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                return [int(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every member, wherever it moved in the process tree."""
        members = self.members()
        for pid in members:
            fs.kill(pid, sig)
        return len(members)

    def kill(self) -> int:
        """SIGKILL every member so that none can fork away first; return how many were live.

        v2: ``cgroup.kill``. v1: no fork can succeed (``pids.max`` 0), the group is
        frozen (when the freezer is there), every member gets SIGKILL, then thawed
        so the signals land.
        """
        self.sample_pids()
        if not self.members():
            return 0  # nobody inside can fork: nothing to stop
        d = self.dirs.get("")
        if self.version == 2 and d is not None and os.path.exists(os.path.join(d, "cgroup.kill")):
            count = len(self.members())
            fs.try_write(os.path.join(d, "cgroup.kill"), "1")
            return count
        pids = self._dir("pids")
        if pids is not None:
            fs.try_write(os.path.join(pids, "pids.max"), "0")
        freezer = self._dir("freezer")
        frozen = freezer is not None and fs.freeze(freezer)
        count = 0
        for _ in range(3):  # a fork charged before pids.max became 0 may show up once more
            members = self.members()
            if not members:
                break
            count = max(count, len(members))
            self.killed.update(members)
            for pid in members:
                fs.kill(pid, signal.SIGKILL)
            if frozen:
                break  # nobody ran since the freeze: that list was complete
        if frozen and freezer is not None:
            fs.try_write(os.path.join(freezer, "freezer.state"), "THAWED")
        return count

    def reap(self, keep: int) -> None:
        """Reap killed members adopted by the daemon (a subreaper): even renamed ones
        with an empty environment, which no tree scan recognises. ``keep``: the
        root, whose exit status belongs to multiprocessing."""
        for pid in list(self.killed):
            if pid == keep:
                self.killed.discard(pid)
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.killed.discard(pid)
            except ChildProcessError:
                self.killed.discard(pid)  # not our child, or reaped already

    # -- figures and removal --------------------------------------------------------

    def usage(self) -> TurnUsage:
        """Peak memory, CPU seconds and peak process count, as the kernel counted them."""
        self.sample_pids()
        mem, pids = self._dir("memory"), self._dir("pids")
        if self.version == 2:
            peak = fs.read_int(os.path.join(mem, "memory.peak")) if mem else None
            cpu_us = fs.counters(os.path.join(self.dirs[""], "cpu.stat")).get("usage_usec")
            cpu_s = cpu_us / 1e6 if cpu_us is not None else None
        else:
            peak = fs.read_int(os.path.join(mem, "memory.max_usage_in_bytes")) if mem else None
            acct = self._dir("cpuacct")
            ns = fs.read_int(os.path.join(acct, "cpuacct.usage")) if acct else None
            cpu_s = ns / 1e9 if ns is not None else None
        kernel_peak = fs.read_int(os.path.join(pids, "pids.peak")) if pids else None
        return TurnUsage(memory_peak_bytes=peak, cpu_seconds=None if cpu_s is None else round(cpu_s, 6),
                         tasks_peak=kernel_peak if kernel_peak is not None else self.pids_seen,
                         tasks_peak_sampled=kernel_peak is None, source=f"cgroup-v{self.version}")

    def remove(self) -> bool:
        """Close the event fds and remove the (empty) directories; False if one stayed."""
        for fd in self.watch:
            os.close(fd)
        self.watch = []
        ok = True
        for d in set(self.dirs.values()):
            ok = fs.rmdir(d) and ok
        return ok


class Cgroups:
    """The daemon's cgroup base: detects what it can use, makes and sweeps turn cgroups."""

    def __init__(self, state_dir: str, limits: LimitsConfig) -> None:
        self.limits = limits
        digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:10]
        self.prefix = f"runnerd-{digest}-"
        self.base_name = f"{self.prefix}{os.getpid()}"
        self.version = 0
        self.bases: dict[str, str] = {}  # controller -> base directory ("" for v2)
        self.parents: dict[str, str] = {}  # controller -> the daemon's own cgroup directory
        self.containment = Containment("polling", [], "not set up yet")

    def setup(self) -> Containment:
        """Pick v2, else v1, else polling; make the base. Call before any turn process exists."""
        if self.limits.cgroups == "off":
            self.containment = Containment("polling", [], "limits.cgroups = off")
            return self.containment
        reasons = []
        for attempt in (self._setup_v2, self._setup_v1):
            why = attempt()
            if why is None:
                return self.containment
            reasons.append(why)
        self.containment = Containment("polling", [], "; ".join(reasons))
        if self.limits.cgroups == "require":
            raise ResourceUnavailable(f"limits.cgroups = require, but no cgroup can be used: {self.containment.reason}")
        return self.containment

    def _setup_v2(self) -> str | None:
        mounts = fs.mounts()
        own = fs.own_cgroups().get("")
        mount = next((m for m, (kind, _) in mounts.items() if kind == "cgroup2"), None)
        if mount is None or own is None:
            return "v2: no cgroup2 mount"
        parent = os.path.join(mount, own.lstrip("/"))
        available = set(fs.read(os.path.join(parent, "cgroup.controllers")).split())
        if not {"pids", "memory"} <= available:
            return f"v2: pids and memory not available in {parent} (has: {' '.join(sorted(available)) or 'none'})"
        wanted: list[str] = [c for c in ("pids", "memory", "cpu") if c in available]
        base = os.path.join(parent, self.base_name)
        leaf = os.path.join(base, "daemon")
        moved = False
        try:
            os.makedirs(base, exist_ok=True)
            if own != "/":
                # No internal processes (cgroup-v2.rst): the daemon leaves its own
                # cgroup for a leaf before controllers can be enabled below it.
                os.makedirs(leaf, exist_ok=True)
                fs.write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
                moved = True
            for d in (parent, base):  # only what is missing: the parent may be the host's root
                control = os.path.join(d, "cgroup.subtree_control")
                missing = [c for c in wanted if c not in fs.read(control).split()]
                if missing:
                    fs.write(control, " ".join("+" + c for c in missing))
            if moved and "cpu" in wanted:  # the leaf is one sibling among the turns: it weighs most
                fs.try_write(os.path.join(leaf, "cpu.weight"), str(DAEMON_CPU_WEIGHT))
        except OSError as exc:
            # EBUSY: other processes share our cgroup (a host embedding us, an older
            # forkserver). Undo, leaving the daemon where it was.
            if moved:
                fs.try_write(os.path.join(parent, "cgroup.procs"), str(os.getpid()))
            for d in (leaf, base):
                if os.path.isdir(d):
                    fs.rmdir(d)
            return f"v2: cannot set up {base}: {exc.strerror or exc}"
        self.version, self.bases, self.parents = 2, {"": base}, {"": parent}
        self.containment = Containment("cgroup-v2", wanted, f"cgroup v2 at {base}")
        return None

    def _setup_v1(self) -> str | None:
        own = fs.own_cgroups()
        by_mount: dict[str, str] = {}
        for mount, (kind, controllers) in fs.mounts().items():
            if kind != "cgroup":
                continue
            for c in controllers & set(V1_CONTROLLERS):
                by_mount[c] = mount
        missing = [c for c in V1_REQUIRED if c not in by_mount or c not in own]
        if missing:
            return f"v1: {', '.join(missing)} controller not mounted"
        bases: dict[str, str] = {}
        parents: dict[str, str] = {}
        for c in V1_CONTROLLERS:
            if c not in by_mount or c not in own:
                continue
            parent = os.path.join(by_mount[c], own[c].lstrip("/"))
            base = os.path.join(parent, self.base_name)
            try:
                if not os.path.isdir(base):  # co-mounted controllers share one directory
                    os.mkdir(base)
            except OSError as exc:
                if c in V1_REQUIRED:
                    for made in set(bases.values()):
                        fs.rmdir(made)
                    return f"v1: cannot create {base}: {exc.strerror or exc}"
                continue
            bases[c], parents[c] = base, parent
            if c == "cpu":  # all turns together: one busy task's weight per CPU (see the module doc)
                fs.try_write(os.path.join(base, "cpu.shares"), str(V1_TURNS_CPU_SHARES))
        self.version, self.bases, self.parents = 1, bases, parents
        self.containment = Containment("cgroup-v1", sorted(bases), "cgroup v1: " + ", ".join(
            f"{c} at {b}" for c, b in sorted(bases.items())))
        return None

    @property
    def enabled(self) -> bool:
        return self.version != 0

    def create(self, turn_id: str) -> TurnCgroup:
        """The turn's cgroup with its limits set and its OOM event armed (raises OSError)."""
        name = f"turn-{turn_id}"
        dirs: dict[str, str] = {}
        for c, base in self.bases.items():
            d = os.path.join(base, name)
            if not os.path.isdir(d):
                os.mkdir(d)
            dirs[c] = d
        cg = TurnCgroup(self.version, dirs, self.limits)
        try:
            self._limit(cg)
            self._arm(cg)
        except OSError:
            cg.remove()
            raise
        return cg

    def _limit(self, cg: TurnCgroup) -> None:
        lim = self.limits
        pids, mem, cpu = cg._dir("pids"), cg._dir("memory"), cg._dir("cpu")
        if pids is not None and lim.max_processes is not None:
            # + the cancel watcher thread runnerd itself starts in every turn (worker.asyncrun)
            fs.write(os.path.join(pids, "pids.max"), str(lim.max_processes + RUNNERD_TASKS))
        if mem is not None and lim.memory_bytes is not None:
            if self.version == 2:
                fs.write(os.path.join(mem, "memory.max"), str(lim.memory_bytes))
                fs.write_if_there(os.path.join(mem, "memory.swap.max"), "0")  # no escape into swap
                fs.write(os.path.join(mem, "memory.oom.group"), "1")  # an OOM takes the whole turn
            else:
                fs.write(os.path.join(mem, "memory.limit_in_bytes"), str(lim.memory_bytes))
                # memory+swap at the same cap: swapping out does not raise the limit.
                fs.write_if_there(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(lim.memory_bytes))
        if cpu is not None and lim.cpu_quota is not None:
            quota = max(1000, int(lim.cpu_quota * CPU_PERIOD_US))
            if self.version == 2:
                fs.write(os.path.join(cpu, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            else:
                fs.write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                fs.write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))

    def _arm(self, cg: TurnCgroup) -> None:
        """An fd that becomes readable when the kernel reports an OOM (not a poll)."""
        mem = cg._dir("memory")
        if mem is None:
            return
        if self.version == 2:
            # memory.events and pids.events are "modified" on every event (cgroup-v2.rst).
            fd = fs.inotify_init()
            cg.watch.append(fd)
            for name in ("memory.events", "pids.events"):
                fs.inotify_watch(fd, os.path.join(mem, name))
            return
        # v1: an eventfd registered for memory.oom_control (cgroup-v1/memory.rst, section 9).
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        cg.watch.append(efd)
        ofd = os.open(os.path.join(mem, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            fs.write(os.path.join(mem, "cgroup.event_control"), f"{efd} {ofd}")
        finally:
            os.close(ofd)

    def sweep_stale(self) -> tuple[int, int]:
        """Clear the cgroups of dead daemons; returns (processes killed, cgroups removed).

        Those of this state directory (same hash) are killed and removed: their
        turns are being recovered as lost. Those of another state directory are
        only removed where already empty, which loses nothing its own next start
        would need. A base whose daemon is alive is left alone.
        """
        killed = removed = 0
        pattern = re.compile(r"runnerd-[0-9a-f]{10}-(\d+)\Z")
        for c, parent in self.parents.items():
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                match = pattern.match(name)
                if match is None or name == self.base_name or fs.pid_alive(int(match.group(1))):
                    continue
                ours = name.startswith(self.prefix)
                base = os.path.join(parent, name)
                for child in sorted(os.listdir(base)):
                    d = os.path.join(base, child)
                    if not os.path.isdir(d):
                        continue
                    stale = TurnCgroup(self.version, {"" if self.version == 2 else c: d}, self.limits)
                    if ours and c in ("pids", ""):  # a process is in every hierarchy: one kill suffices
                        killed += stale.kill()
                    if ours or not stale.members():
                        removed += fs.wait_rmdir(d)
                if ours or not any(os.path.isdir(os.path.join(base, x)) for x in os.listdir(base)):
                    removed += fs.wait_rmdir(base, timeout=2.0 if ours else 0.0)
        return killed, removed

    def close(self) -> None:
        """Remove the base; one still holding a turn (or, v2, the daemon) stays for the next sweep."""
        for base in set(self.bases.values()):
            if self.version == 2 and os.path.isdir(os.path.join(base, "daemon")):
                continue  # we are in it
            fs.rmdir(base)
