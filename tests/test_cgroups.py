"""Kernel containment with real cgroups: a real runnerd inside a bounded outer cgroup.

Every test that can fork-bomb or hog memory first makes its own outer cgroup
(pids.max 200, 1 GiB; tests/kernel_bound.py) and runs the daemon inside it,
or skips with the reason. Each test ends by checking that no cgroup is left
below the outer one, then removes the outer one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pytest
from conftest import TEST_AGENTS, nobody, wait_for
from daemon_fixture import BIN, TESTS, write_config
from kernel_bound import KernelBound, own_cgroups, unavailable

from ipc.protocol import ExitCode, TurnSpec
from ipc.wire import Done, FrameReader
from supervisor.config import Config, LimitsConfig
from supervisor.embedded import Supervisor
from supervisor.runtime.cgroups import Cgroups, TurnCgroup
from supervisor.runtime.spawn import Spawner
from supervisor.turns import Intent, classify

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20
V1_SKIP = unavailable()


class Runnerd:
    """A runnerd process started inside the outer cgroup."""

    def __init__(self, outer: KernelBound, tmp: Path, limits: dict[str, object]) -> None:
        config = write_config(tmp)
        with open(config, "a") as f:
            f.write("\n[limits]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in limits.items()))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        env.pop("NOTIFY_SOCKET", None)
        self.log = tmp / "runnerd.log"
        self.socket = str(tmp / "run" / "runnerd.sock")
        with open(self.log, "ab") as logf:
            self.proc = outer.popen([str(BIN / "runnerd"), "--config", str(config)], stdout=logf, stderr=logf,
                                    env=env)
        wait_for(self._ready, 30, 0.02)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"runnerd exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with self.http() as c:
                return c.get("/v1/health").status_code == 200
        except (httpx.TransportError, FileNotFoundError):
            return False

    def http(self) -> httpx.Client:
        return httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=self.socket), timeout=10)

    def start(self, agent: str, input: object = None) -> str:
        with self.http() as c:
            r = c.post("/v1/turns", json={"agent": agent, "input": input})
            assert r.status_code == 201, r.text
            return str(r.json()["turn_id"])

    def turn(self, turn_id: str) -> dict[str, Any]:
        with self.http() as c:
            return c.get(f"/v1/turns/{turn_id}").json()  # type: ignore[no-any-return]

    def ended(self, turn_id: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (t := self.turn(turn_id))["status"] not in ("queued", "starting", "running")
                        and t, timeout, 0.02)  # type: ignore[return-value]

    def events(self, turn_id: str) -> list[dict[str, Any]]:
        with self.http() as c:
            page = c.get(f"/v1/turns/{turn_id}/export", params={"limit": 10000}).json()
        return page["events"]  # type: ignore[no-any-return]

    def family(self) -> set[int]:
        """The daemon and its own helpers (forkserver, resource tracker): not turns."""
        try:
            me = psutil.Process(self.proc.pid)
            return {me.pid} | {p.pid for p in me.children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def outer() -> Iterator[KernelBound]:
    if V1_SKIP:
        pytest.skip(f"kernel-limited tests need a bounded v1 cgroup: {V1_SKIP}")
    box = KernelBound(pids_max=200, memory_bytes=1 << 30)
    try:
        yield box
        assert box.subgroups() == [], "cgroups left behind"
    finally:
        box.close()


def _turn_cgroup_dirs(outer: KernelBound) -> list[str]:
    return [d for d in outer.subgroups() if "/turn-" in d]


def test_exponential_fork_bomb_is_held_at_max_processes(outer: KernelBound, tmp_path: Path) -> None:
    d = Runnerd(outer, tmp_path, {"max_processes": 50})
    try:
        with d.http() as c:
            assert c.get("/v1/health").json()["containment"]["mode"] == "cgroup-v1"
        logged = [json.loads(line) for line in d.log.read_text().splitlines() if '"containment"' in line]
        assert logged and logged[0]["mode"] == "cgroup-v1"  # said at start, in the log
        neighbour = d.start("paced", {"n": 40, "interval": 0.01})
        bomb = d.start("exponential_fork_bomb")
        info = d.ended(bomb)
        assert info["status"] == "failed" and info["error"]["code"] == "limit_exceeded", info
        assert "limits.max_processes 50" in info["error"]["message"]
        # pids.peak: the kernel's own high-water mark of the turn's cgroup.
        assert info["usage"]["tasks_peak_sampled"] is False
        # 50 of the agent's, plus runnerd's own cancel watcher thread (not charged to the limit).
        assert 2 <= info["usage"]["tasks_peak"] <= 50 + 1, info["usage"]
        assert d.events(bomb)[-1]["type"] == "RUN_ERROR"
        other = d.ended(neighbour)
        assert other["status"] == "succeeded", other
        assert [e["value"] for e in d.events(neighbour) if e["type"] == "CUSTOM"] == list(range(1, 41))
        assert d.proc.poll() is None
        with d.http() as c:
            assert c.get("/v1/health").json()["status"] == "ok"
        wait_for(lambda: _turn_cgroup_dirs(outer) == [])  # removed just after the terminal event
        wait_for(lambda: outer.procs() <= d.family(), 10, 0.02)  # nothing of the bomb left
        again = d.start("count", {"n": 3})  # the daemon still starts turns
        assert d.ended(again)["status"] == "succeeded"
        with d.http() as c:
            assert c.get(f"/v1/turns/{bomb}/export").json()["turn"]["usage"] == info["usage"]
            metrics = c.get("/metrics").text
        assert 'runnerd_containment{mode="cgroup-v1"} 1' in metrics
        peak = next(line for line in metrics.splitlines() if line.startswith("runnerd_turn_tasks_peak_max "))
        assert int(peak.split()[1]) == info["usage"]["tasks_peak"]
    finally:
        d.stop()


def test_memory_hog_tree_ends_memory_limit_within_the_limit(outer: KernelBound, tmp_path: Path) -> None:
    # poll_s of an hour: only the kernel's OOM event can end this turn in time.
    d = Runnerd(outer, tmp_path, {"memory_bytes": 256 * MIB, "poll_s": 3600.0})
    try:
        turn = d.start("memory_hog_tree")
        info = d.ended(turn)
        assert info["status"] == "failed" and info["error"]["code"] == "memory_limit", info
        assert "OOM" in info["error"]["message"] and "256 MiB" in info["error"]["message"]
        peak = info["usage"]["memory_peak_bytes"]
        assert 128 * MIB < peak <= 256 * MIB, info["usage"]  # the kernel's high-water mark
        assert info["usage"]["cpu_seconds"] > 0
        wait_for(lambda: _turn_cgroup_dirs(outer) == [])  # removed just after the terminal event
        wait_for(lambda: outer.procs() <= d.family(), 10, 0.02)
    finally:
        d.stop()


def test_setsid_renamed_envless_escapee_is_gone_after_cancel(outer: KernelBound, tmp_path: Path) -> None:
    d = Runnerd(outer, tmp_path, {})
    try:
        turn = d.start("escapee")
        escaped = wait_for(lambda: next((e["value"] for e in d.events(turn) if e.get("name") == "escapee"), None))
        assert isinstance(escaped, int)
        wait_for(lambda: _comm(escaped) == "innocent")
        assert psutil.Process(escaped).environ() == {}  # no mark of the turn left on it
        with d.http() as c:
            assert c.post(f"/v1/turns/{turn}/cancel", json={}).status_code in (200, 202)
        info = d.ended(turn)
        assert info["status"] == "cancelled", info
        assert not _alive(escaped)
        wait_for(lambda: _turn_cgroup_dirs(outer) == [])  # removed just after the terminal event
        wait_for(lambda: outer.procs() <= d.family(), 10, 0.02)
    finally:
        d.stop()


def test_daemon_sigkilled_then_restarted_leaves_no_process_and_no_cgroup(outer: KernelBound, tmp_path: Path) -> None:
    d = Runnerd(outer, tmp_path, {"max_processes": 50})
    turns = [d.start("escapee"), d.start("grandchildren")]
    escaped = wait_for(lambda: next((e["value"] for e in d.events(turns[0]) if e.get("name") == "escapee"), None))
    wait_for(lambda: all(d.turn(t)["status"] == "running" for t in turns))
    old_pid = d.proc.pid
    d.proc.kill()
    d.proc.wait(10)
    assert _turn_cgroup_dirs(outer), "the turns' cgroups outlive the daemon"
    assert _alive(escaped)
    d2 = Runnerd(outer, tmp_path, {"max_processes": 50})
    try:
        for t in turns:
            assert d2.turn(t)["status"] == "lost"
        assert not _alive(escaped)
        assert not [g for g in outer.subgroups() if g.endswith(f"-{old_pid}") or f"-{old_pid}/" in g]
        assert _turn_cgroup_dirs(outer) == []
        wait_for(lambda: outer.procs() <= d2.family(), 10, 0.02)
    finally:
        d2.stop()


def test_without_cgroups_health_says_polling(tmp_path: Path) -> None:
    config = Config(state_dir=str(tmp_path / "state"), agents=dict(TEST_AGENTS),
                    limits=LimitsConfig(cgroups="off", max_processes=20))
    with Supervisor(config) as sup:
        assert sup.containment.mode == "polling" and "off" in sup.containment.reason
        turn = sup.start_turn("count", {"n": 2})
        list(sup.events(turn.turn_id))
        info = sup.status(turn.turn_id)
        assert info.usage is None and info.status.value == "succeeded"


@pytest.mark.skipif(V1_SKIP is not None, reason=f"needs a v1 cgroup: {V1_SKIP}")
def test_embedded_turn_reports_usage_and_removes_its_cgroups(tmp_path: Path) -> None:
    config = Config(state_dir=str(tmp_path / "state"), agents=dict(TEST_AGENTS))
    sup = Supervisor(config).start()
    try:
        assert sup.containment.mode == "cgroup-v1"
        turn = sup.start_turn("busy_loop")
        wait_for(lambda: sup.status(turn.turn_id).status.value == "running")
        sup.cancel(turn.turn_id)
        list(sup.events(turn.turn_id))
        usage = sup.status(turn.turn_id).usage
        assert usage is not None and usage.source == "cgroup-v1"
        assert usage.cpu_seconds is not None and usage.cpu_seconds > 0
        assert usage.memory_peak_bytes is not None and usage.memory_peak_bytes > 0
        assert usage.tasks_peak == 2  # the agent's one thread and runnerd's cancel watcher
        bases = list(sup.cgroups.bases.values())
        # Removed right after the terminal event is out (the processes were gone before it).
        wait_for(lambda: bases and all(not [x for x in os.listdir(b) if x.startswith("turn-")] for b in bases))
    finally:
        sup.close()
    assert not [b for b in bases if os.path.exists(b)], "the daemon's base cgroups outlive it"


def test_cgroup_v2_kill_and_oom_group(tmp_path: Path) -> None:
    own = own_cgroups().get("")
    mount = Path("/sys/fs/cgroup/unified")
    available = set((mount / (own or "/").lstrip("/") / "cgroup.controllers").read_text().split()) \
        if own is not None and mount.is_dir() else set()
    if os.geteuid() != 0 or not {"pids", "memory"} <= available:
        pytest.skip(f"no cgroup v2 pids+memory controllers here (available: {sorted(available) or 'none'})")
    cg = Cgroups(str(tmp_path), LimitsConfig(memory_bytes=64 * MIB))
    assert cg.setup().mode == "cgroup-v2"
    turn = cg.create("T" * 26)
    try:
        assert Path(turn.dirs[""], "memory.oom.group").read_text().strip() == "1"
        assert Path(turn.dirs[""], "memory.max").read_text().strip() == str(64 * MIB)
    finally:
        turn.remove()
        cg.close()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_rlimit_nproc_only_without_cgroups_for_a_dedicated_user(tmp_path: Path) -> None:
    nobody()
    seen = {}
    for mode in ("off", "auto"):
        config = Config(state_dir=str(tmp_path / mode), agents=dict(TEST_AGENTS),
                        limits=LimitsConfig(cgroups=mode, max_processes=7, user="nobody"))
        with Supervisor(config) as sup:
            turn = sup.start_turn("introspect")
            list(sup.events(turn.turn_id, timeout=20))
            info = sup.status(turn.turn_id)
            assert info.status.value == "succeeded", info
            seen[sup.containment.mode] = sup.export(turn.turn_id).items()[-1][1]
    assert seen["polling"].result["nproc"] == 7  # type: ignore[attr-defined]
    if "cgroup-v1" in seen or "cgroup-v2" in seen:  # pids.max does it: no per-user cap on top
        cgroup_result = next(v for k, v in seen.items() if k != "polling")
        assert cgroup_result.result["nproc"] != 7  # type: ignore[attr-defined]


_HIDER = """
import ctypes, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, b"innocent", 0, 0, 0)
        print(os.getpid(), flush=True)
        while True: time.sleep(1)
    os._exit(0)
while True: time.sleep(1)
"""


def test_cgroup_v2_kill_takes_every_member(tmp_path: Path) -> None:
    # The unified hierarchy here has no pids/memory controllers, but cgroup.kill,
    # cgroup.procs and cpu.stat are core v2 files: the v2 kill and figures run for real.
    own = own_cgroups().get("")
    parent = Path("/sys/fs/cgroup/unified", (own or "/").lstrip("/"))
    if os.geteuid() != 0 or own is None or not parent.is_dir():
        pytest.skip("needs root and a cgroup2 mount at /sys/fs/cgroup/unified")
    d = parent / f"rdtest-{os.getpid()}-v2"
    d.mkdir()
    proc = None
    try:
        if not (d / "cgroup.kill").exists():
            pytest.skip("this kernel has no cgroup.kill (before 5.14)")
        script = f'echo $$ > {d / "cgroup.procs"} && exec "$@"'
        proc = subprocess.Popen(["sh", "-c", script, "sh", sys.executable, "-c", _HIDER],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        hidden = int(proc.stdout.readline())
        turn = TurnCgroup(2, {"": str(d)}, LimitsConfig())
        assert set(turn.members()) == {proc.pid, hidden}
        assert turn.kill() == 2
        wait_for(lambda: not turn.members())
        assert proc.wait(10) == -signal.SIGKILL
        assert not _alive(hidden)
        usage = turn.usage()
        assert usage.source == "cgroup-v2" and usage.cpu_seconds is not None and usage.cpu_seconds > 0
        assert turn.remove() and not d.exists()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if d.exists():
            (d / "cgroup.kill").write_text("1")
            wait_for(lambda: (d / "cgroup.procs").read_text() == "")
            d.rmdir()


@pytest.mark.skipif(V1_SKIP is not None, reason=f"needs a v1 cgroup: {V1_SKIP}")
def test_turns_weigh_as_one_cpu_group_against_the_daemon(tmp_path: Path) -> None:
    # Without a quota too: under contention all turns together get one share
    # beside each of the daemon's threads, which stay in the base's parent.
    config = Config(state_dir=str(tmp_path / "state"), agents=dict(TEST_AGENTS))
    with Supervisor(config) as sup:
        if "cpu" not in sup.cgroups.bases:
            pytest.skip("no v1 cpu controller")
        turn = sup.start_turn("wait_forever")
        pid = next(e.value for _, e in sup.events(turn.turn_id, timeout=10) if getattr(e, "name", None) == "ready")
        with open(f"/proc/{pid}/cgroup") as f:
            cpu = next(line.rstrip().split(":", 2)[2] for line in f if "cpu" in line.split(":")[1].split(","))
        base = sup.cgroups.bases["cpu"]
        assert cpu.endswith(f"/{os.path.basename(base)}/turn-{turn.turn_id}")
        assert Path(base, "cpu.shares").read_text().strip() == str(1024 * (os.cpu_count() or 1))
        assert str(os.getpid()) in Path(sup.cgroups.parents["cpu"], "cgroup.procs").read_text().split()
        sup.cancel(turn.turn_id)
        sup.wait(turn.turn_id, 10)


@pytest.mark.skipif(V1_SKIP is not None, reason=f"needs a v1 cgroup: {V1_SKIP}")
def test_cpu_quota_throttles_a_busy_turn(tmp_path: Path) -> None:
    config = Config(state_dir=str(tmp_path / "state"), agents=dict(TEST_AGENTS),
                    limits=LimitsConfig(cpu_quota=0.25))
    with Supervisor(config) as sup:
        if "cpu" not in sup.cgroups.bases:
            pytest.skip("no v1 cpu controller")
        turn = sup.start_turn("busy_loop")
        cpu_dir = Path(sup.cgroups.bases["cpu"], f"turn-{turn.turn_id}")
        wait_for(lambda: sup.status(turn.turn_id).status.value == "running")
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
        # The kernel throttles it: a busy loop exhausts 25 ms of each 100 ms period.
        wait_for(lambda: int(dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
                             ["nr_throttled"]) > 0, 10, 0.02)
        sup.cancel(turn.turn_id)
        list(sup.events(turn.turn_id))
        wait_for(lambda: not cpu_dir.exists())


@pytest.mark.skipif(V1_SKIP is not None, reason=f"needs a v1 cgroup: {V1_SKIP}")
def test_sweep_leaves_another_state_dirs_live_turns_and_removes_its_empty_ones(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is surely dead: its "daemon" died
    parent = Path("/sys/fs/cgroup/pids", own_cgroups()["pids"].lstrip("/"))
    foreign = parent / f"runnerd-0123456789-{gone.pid}"
    (foreign / "turn-EMPTY").mkdir(parents=True)
    (foreign / "turn-BUSY").mkdir()
    sleeper = subprocess.Popen(["sh", "-c", f'echo $$ > {foreign / "turn-BUSY" / "cgroup.procs"} && exec sleep 60'])
    try:
        wait_for(lambda: (foreign / "turn-BUSY" / "cgroup.procs").read_text().strip() == str(sleeper.pid))
        cg = Cgroups(str(tmp_path), LimitsConfig())
        assert cg.setup().mode == "cgroup-v1"
        cg.sweep_stale()
        assert not (foreign / "turn-EMPTY").exists()  # empty: nothing of it to recover
        assert (foreign / "turn-BUSY").exists() and sleeper.poll() is None  # not ours to kill
        cg.close()
    finally:
        sleeper.kill()
        sleeper.wait(5)
        wait_for(lambda: (foreign / "turn-BUSY" / "cgroup.procs").read_text() == "")
        for d in (foreign / "turn-BUSY", foreign / "turn-EMPTY", foreign):
            if d.exists():
                d.rmdir()


def test_bad_containment_settings_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="limits.cgroups must be 'auto', 'require' or 'off'"):
        LimitsConfig(cgroups="maybe")
    with pytest.raises(ValueError, match="limits.cpu_quota must be >= 0.01"):
        LimitsConfig(cpu_quota=0.0)


def test_a_child_that_cannot_join_its_cgroup_runs_no_agent_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spawner = Spawner("forkserver", [])
    spec = TurnSpec(turn_id="0" * 26, thread_id="t", agent_name="touch", agent_target=TEST_AGENTS["touch"],
                    input_json=msgspec.json.encode({"path": str(marker)}), max_event_bytes=1 << 20,
                    cgroup_procs=(str(tmp_path / "no-such-cgroup" / "cgroup.procs"),))
    spawned = spawner.spawn(spec)
    reader = FrameReader(spawned.reader, max_frame_bytes=1 << 22)
    frames = []
    while not reader.eof:
        frames += reader.read()
    spawned.process.join(10)
    assert spawned.process.exitcode == ExitCode.CONTAINMENT_FAILED
    done = [f for f in frames if isinstance(f, Done)]
    assert done and done[0].outcome == "containment_failed" and "cgroup" in done[0].message
    assert not marker.exists()
    ending = classify(run_id=spec.turn_id, thread_id="t", intent=Intent.NONE, intent_message="",
                      done_outcome=done[0].outcome, done_message=done[0].message, result_json=b"",
                      exitcode=spawned.process.exitcode)
    assert ending.error is not None and ending.error.code == "crashed" and "cgroup" in ending.error.message
