"""Shared fixtures: a real Supervisor on a temp state dir, and a no-leftovers check."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # fixture agents; multiprocessing hands sys.path to children

import kernel_bound  # noqa: E402
from redis_fixture import redis_server, sentinel_set  # noqa: E402, F401 - fixtures for every test module

from supervisor.config import Config  # noqa: E402
from supervisor.embedded import Supervisor  # noqa: E402
from supervisor.runtime.spawn import become_subreaper  # noqa: E402


def nobody() -> Any:
    """The ``nobody`` user's entry, for tests whose turn drops to it; skips where it cannot work.

    A turn running as ``nobody`` imports the test agents from this checkout, so every folder
    above it must let others through (a clone in a ``mktemp -d`` folder, mode 0700, does not).
    """
    import pwd
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no user 'nobody'")
    for folder in (TESTS, *TESTS.parents):
        if not folder.stat().st_mode & 0o001:
            pytest.skip(f"user 'nobody' cannot reach the checkout: {folder} is not searchable by others")
    return entry

# Orphans of anything a test starts (daemons included) are re-parented to
# pytest, so the leftover check below sees them as our descendants.
become_subreaper()

TEST_AGENTS = {
    name: f"fixture_agents:{name}"
    for name in ("count", "paced", "cooperative", "async_agent", "ignore_token", "ignore_sigterm",
                 "grandchildren", "fail", "exit3", "segfault", "wait_forever", "bad_events",
                 "garbage", "close_pipe", "result_value", "big_event", "fork_bomb", "memory_hog", "busy_loop", "chatty", "introspect", "many_events", "forged_seq", "kill_forkserver", "leave_helper", "emit_many_big", "huge_result",
                 "exponential_fork_bomb", "memory_hog_tree", "escapee", "touch",
                 "where", "isolation", "lifecycle_on_pipe", "secretive", "orphan_exits", "returns_when_cancelled")
}
TEST_AGENTS["broken"] = "fixture_broken_agent:run"


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.005) -> object:
    """Poll ``predicate`` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def turn_processes() -> list[psutil.Process]:
    """Every descendant of this test run that belongs to some runnerd turn.

    Forked descendants carry the turn's process name ``rd-…``; exec'd ones its id
    in the environment (/proc shows the environment as of the last exec).
    """
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{p.pid}/comm") as f:
                comm = f.read()
            if comm.startswith("rd-") or "RUNNERD_TURN_ID" in p.environ():
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def make_config(tmp_path: Path, **overrides: object) -> Config:
    values: dict[str, object] = dict(
        agents=dict(TEST_AGENTS, demo="worker.demos:chat"),
        state_dir=str(tmp_path / "state"),
        cancel_grace_s=0.3,
        kill_grace_s=0.3,
    )
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(make_config(tmp_path)) as s:
        yield s


def _own_helpers() -> set[int]:
    """This pytest process's own forkserver and resource tracker (multiprocessing keeps
    them for the whole session): the only descendants a test may leave running."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker
    pids = {getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
            getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)}
    return {p for p in pids if isinstance(p, int)}


def _descendants() -> dict[tuple[int, float], psutil.Process]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out[(p.pid, p.create_time())] = p
        except psutil.Error:
            continue
    return out


def _under(p: psutil.Process, before: set[tuple[int, float]]) -> bool:
    """Started by a process of a wider-scoped fixture (a module's browser opening a renderer)."""
    try:
        return any((a.pid, a.create_time()) in before for a in p.parents())
    except psutil.Error:
        return False


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} [{p.name()}] {' '.join(p.cmdline())[:100]}"
    except psutil.Error:
        return str(p.pid)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fails a test that leaves a process behind: a turn (of any supervisor), a
    runnerd, a forkserver, anything it started. Those of wider-scoped fixtures
    (already running when the test began) and pytest's own forkserver are not its."""
    before = set(_descendants())
    yield
    # A turn's processes are gone by the time its terminal event is written;
    # give stragglers of a test that failed midway a bounded moment.
    deadline = time.monotonic() + 5
    while True:
        own = _own_helpers()
        left = [p for key, p in _descendants().items()
                if key not in before and p.pid not in own and not _under(p, before)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    described = [_describe(p) for p in left]
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {described}"
    assert not (cgroups := kernel_bound.leftovers()), f"cgroups left behind: {cgroups}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("RUNNERD_SKIP_LEFTOVER_CHECK"):
        return
    own = _own_helpers()
    left = [p for p in _descendants().values() if p.pid not in own]
    if left:  # pragma: no cover - only on a leak
        print(f"\nLEFTOVER processes: {[_describe(p) for p in left]}", file=sys.stderr)
        session.exitstatus = 1
    cgroups = leftover_cgroups()
    if cgroups:  # pragma: no cover - only on a leak
        print(f"\nLEFTOVER cgroups: {cgroups}", file=sys.stderr)
        session.exitstatus = 1


def _runnerd_cgroups() -> set[str]:
    """The daemons' base cgroups (``runnerd-<state hash>-<pid>``) and the hostile
    tests' outer ones below this test run's own cgroups."""
    found = set()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else ["unified"]:
            parent = Path("/sys/fs/cgroup", c, path.lstrip("/"))
            if parent.is_dir():
                found |= {str(d) for d in parent.iterdir()
                          if d.is_dir() and d.name.startswith(("runnerd-", f"rdtest-{os.getpid()}-"))}
    return found


_CGROUPS_BEFORE = _runnerd_cgroups()


def leftover_cgroups() -> list[str]:
    """Cgroups made during this run that outlived their daemon (a live daemon's
    base may belong to another run on this machine)."""
    left = []
    for d in sorted(_runnerd_cgroups() - _CGROUPS_BEFORE):
        base = re.search(r"/runnerd-[0-9a-f]{10}-(\d+)\Z", d)  # supervisor.runtime.cgroups' naming
        if "/rdtest-" in d or (base is not None and not psutil.pid_exists(int(base.group(1)))):
            left.append(d)
    return left
