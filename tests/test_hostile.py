"""Hostile agents: each is contained, ends with the right code, and others go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, nobody, wait_for
from daemon_fixture import child_env
from kernel_bound import KernelBound
from kernel_bound import unavailable as kernel_bound_unavailable

from ipc import events as ev
from supervisor.config import LimitsConfig
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus


def _limited(tmp_path: Path, **limits: object) -> Supervisor:
    return Supervisor(make_config(tmp_path, limits=LimitsConfig(**limits)))  # type: ignore[arg-type]  # shipped poll_s


def _ready(sup: Supervisor, turn_id: str) -> None:
    wait_for(lambda: any(isinstance(e, ev.Custom) and e.name == "ready"
                         for _, e in sup.events(turn_id, follow=False)), 15)


# The embedded Supervisor in a subprocess inside the test's own cgroup: the turns
# inherit it, so the kernel bounds the hostile agent whatever the supervisor does.
RUNNER = """
import json, sys
from supervisor.config import Config, LimitsConfig
from supervisor.embedded import Supervisor
from supervisor.runtime.spawn import become_subreaper

args = json.loads(sys.argv[1])
become_subreaper()
config = Config(state_dir=args["state_dir"], cancel_grace_s=0.3, kill_grace_s=0.3,
                agents={name: "fixture_agents:" + name for name in ("fork_bomb", "memory_hog", "paced")},
                limits=LimitsConfig(**args["limits"]))
with Supervisor(config) as sup:
    print("warm", flush=True)
    sys.stdin.readline()  # the test has its baseline
    bystander = sup.start_turn("paced", {"n": 200, "interval": 0.005})
    turn = sup.start_turn(args["agent"], args["input"])
    info = sup.wait(turn.turn_id, 60)
    # Its terminal event is written only once its processes are gone: none may be left now.
    mark = "rd-" + turn.turn_id[-11:]
    left = []
    for pid in open(args["cgroup"] + "/cgroup.procs").read().split():
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if stat.split(") ", 1)[1][0] != "Z" and open(f"/proc/{pid}/comm").read().strip() == mark:
            left.append(int(pid))
    out = {"status": info.status.value, "code": info.error and info.error.code,
           "message": info.error and info.error.message, "left": left,
           "bystander": [seq for seq, _ in sup.events(bystander.turn_id, timeout=30)],
           "bystander_status": sup.wait(bystander.turn_id, 30).status.value}
print(json.dumps(out), flush=True)
"""


def _bounded(tmp_path: Path, *, pids_max: int, memory_bytes: int) -> KernelBound:
    if (reason := kernel_bound_unavailable()) is not None:
        pytest.skip(f"no kernel bound for a hostile agent: {reason}")
    return KernelBound(pids_max=pids_max, memory_bytes=memory_bytes)


def _run_hostile(kb: KernelBound, tmp_path: Path, agent: str, input: object, limits: dict[str, object],
                 on_warm: Callable[[], None]) -> dict[str, Any]:
    """Runs ``agent`` (and a bystander) under the supervisor in the cgroup; ``on_warm``
    takes the baseline once the supervisor is up and before the agent starts."""
    args = {"state_dir": str(tmp_path / "state"), "agent": agent, "input": input, "limits": limits,
            "cgroup": str(kb.pids_dir)}
    proc = kb.popen([sys.executable, "-c", RUNNER, json.dumps(args)], env=child_env(), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=open(tmp_path / "runner.log", "wb"))
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == b"warm\n"
        on_warm()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        out = proc.stdout.read()
        assert proc.wait(30) == 0
        return json.loads(out)  # type: ignore[no-any-return]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(90)
def test_an_exponential_fork_bomb_is_stopped_at_the_process_cap(tmp_path: Path) -> None:
    """The polling fallback (no cgroup per turn; test_cgroups covers the kernel's own
    limit). At the shipped poll interval (0.25 s) a doubling bomb outruns the cap of 20
    long before the first check: the kernel's pids.max holds it meanwhile, and the
    supervisor then kills all of it while it keeps forking."""
    with _bounded(tmp_path, pids_max=300, memory_bytes=2 << 30) as kb:
        baseline: list[int] = []

        def warm() -> None:
            baseline.append(kb.pids_current())
            kb.sample_pids()

        out = _run_hostile(kb, tmp_path, "fork_bomb", None,
                           {"max_processes": 20, "poll_s": LimitsConfig().poll_s, "cgroups": "off"}, warm)
        peak = kb.peak_pids
        refusals = kb.fork_refusals()
    assert LimitsConfig().poll_s == 0.25
    assert out["status"] == "failed" and out["code"] == "limit_exceeded", out
    assert "limits.max_processes 20" in out["message"]
    seen = int(out["message"].split("the turn ran ", 1)[1].split()[0])
    # The peak: well past the cap (checked every 0.25 s, the bomb doubles in
    # milliseconds), held at the kernel's 300 tasks (supervisor threads included;
    # ``refusals``: the forks the kernel refused meanwhile).
    assert 20 < seen <= 300 and baseline[0] + 20 < peak <= 300, (seen, baseline, peak, refusals)
    assert out["left"] == []
    assert out["bystander_status"] == "succeeded" and out["bystander"] == list(range(1, 203))


@pytest.mark.timeout(90)
def test_a_multi_process_memory_hog_is_stopped_past_the_memory_cap(tmp_path: Path) -> None:
    """Four processes allocating without end, checked every 0.25 s: the turn goes
    past limits.memory_bytes before the check and is then killed, tree and all,
    by the supervisor, before the kernel's 2 GiB limit has to act."""
    cap = 256 << 20
    with _bounded(tmp_path, pids_max=300, memory_bytes=2 << 30) as kb:
        baseline: list[int] = []

        def warm() -> None:
            baseline.append(kb.memory_usage())
            kb.reset_memory_peak()  # the peak from here on

        out = _run_hostile(kb, tmp_path, "memory_hog", {"children": 3, "chunk_mib": 8, "pause": 0.02},
                           {"memory_bytes": cap, "poll_s": LimitsConfig().poll_s, "cgroups": "off"}, warm)
        peak = kb.memory_peak() - baseline[0]
        oom_kills = kb.oom_kills()
    assert out["status"] == "failed" and out["code"] == "memory_limit", out
    assert "limits.memory_bytes 256 MiB" in out["message"]
    seen = int(out["message"].split("used ", 1)[1].split()[0]) << 20
    # The peak: the tree's RSS past the cap when the check came (how far past it went
    # is the poll's price), the cgroup's own peak (shared pages once) far under the
    # kernel limit, and no OOM kill: the supervisor ended it, not the kernel.
    assert cap < seen and cap // 2 < peak < 2 << 30 and oom_kills == 0, (seen >> 20, peak >> 20, oom_kills)
    assert out["left"] == []
    assert out["bystander_status"] == "succeeded" and out["bystander"] == list(range(1, 203))


@pytest.mark.timeout(30)
def test_a_busy_loop_that_never_checks_cancel_is_still_cancelled(sup: Supervisor) -> None:
    turn = sup.start_turn("busy_loop")
    _ready(sup, turn.turn_id)
    sup.cancel(turn.turn_id)
    assert sup.wait(turn.turn_id, 10).status is TurnStatus.CANCELLED


@pytest.mark.timeout(60)
def test_megabytes_on_stdout_and_stderr_are_drained_and_capped(tmp_path: Path) -> None:
    with _limited(tmp_path, output_bytes=1 << 20) as sup:
        turn = sup.start_turn("chatty", {"mib": 4})
        info = sup.wait(turn.turn_id, 50)
        assert info.status is TurnStatus.SUCCEEDED  # never blocked on a full pipe
        assert info.output_bytes == 1 << 20
        assert info.output_bytes + info.output_dropped >= 8 << 20
        assert (sup.event_store.dir / f"{turn.turn_id}.output").stat().st_size == 1 << 20


@pytest.mark.timeout(30)
def test_too_many_events_or_bytes_end_limit_exceeded(tmp_path: Path) -> None:
    with _limited(tmp_path, max_events=100, max_turn_bytes=1 << 20) as sup:
        turn = sup.start_turn("many_events", {"n": 1000})
        info = sup.wait(turn.turn_id, 20)
        assert info.error is not None and info.error.code == "limit_exceeded"
        assert "limits.max_events" in info.error.message
        assert info.last_seq <= 102  # RUN_STARTED, at most 100 events, the terminal event
        big = sup.start_turn("count", {"n": 100, "pad": 20_000})
        info = sup.wait(big.turn_id, 20)
        assert info.error is not None and "limits.max_turn_bytes" in info.error.message


@pytest.mark.timeout(30)
def test_the_child_gets_an_allowlisted_environment_and_rlimits(tmp_path: Path) -> None:
    os.environ["RUNNERD_TEST_SECRET"] = "do-not-leak"
    try:
        with _limited(tmp_path, open_files=256) as sup:
            turn = sup.start_turn("result_value")
            sup.wait(turn.turn_id, 10)
            turn = sup.start_turn("introspect")
            last = list(sup.events(turn.turn_id))[-1][1]
    finally:
        del os.environ["RUNNERD_TEST_SECRET"]
    assert isinstance(last, ev.RunFinished)
    result = last.result
    assert "RUNNERD_TEST_SECRET" not in result["env"] and "RUNNERD_TURN_ID" in result["env"]
    assert set(result["env"]) <= {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH",
                                  "PYTHONUNBUFFERED", "VIRTUAL_ENV", "RUNNERD_TURN_ID"}
    assert result["nofile"] == 256 and result["core"] == 0
    assert result["pgid_is_pid"] and result["sid_is_pid"]


@pytest.mark.timeout(30)
@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_the_turn_can_drop_to_another_user(tmp_path: Path) -> None:
    user = nobody()
    with _limited(tmp_path, user="nobody") as sup:
        turn = sup.start_turn("introspect")
        last = list(sup.events(turn.turn_id, timeout=20))[-1][1]
    assert isinstance(last, ev.RunFinished), last
    assert (last.result["uid"], last.result["gid"]) == (user.pw_uid, user.pw_gid)
