"""Hostile agents: each is contained, ends with the right code, and others go on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_config, turn_processes, wait_for

from ipc import events as ev
from supervisor.config import LimitsConfig
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus


def _limited(tmp_path: Path, **limits: object) -> Supervisor:
    return Supervisor(make_config(tmp_path, limits=LimitsConfig(poll_s=0.05, **limits)))  # type: ignore[arg-type]


def _ready(sup: Supervisor, turn_id: str) -> None:
    wait_for(lambda: any(isinstance(e, ev.Custom) and e.name == "ready"
                         for _, e in sup.events(turn_id, follow=False)), 15)


@pytest.mark.timeout(40)
def test_a_fork_bomb_is_stopped_at_the_process_cap(tmp_path: Path) -> None:
    with _limited(tmp_path, max_processes=20) as sup:
        bystander = sup.start_turn("paced", {"n": 200, "interval": 0.005})
        turn = sup.start_turn("fork_bomb")
        info = sup.wait(turn.turn_id, 30)
        assert info.status is TurnStatus.FAILED and info.error is not None
        assert info.error.code == "limit_exceeded" and "limits.max_processes 20" in info.error.message
        assert sup.wait(bystander.turn_id, 20).status is TurnStatus.SUCCEEDED
        assert [s for s, _ in sup.events(bystander.turn_id)] == list(range(1, 203))
    assert turn_processes() == []


@pytest.mark.timeout(40)
def test_fast_allocation_ends_memory_limit(tmp_path: Path) -> None:
    with _limited(tmp_path, memory_bytes=200 << 20) as sup:
        turn = sup.start_turn("memory_hog")
        info = sup.wait(turn.turn_id, 30)
        assert info.status is TurnStatus.FAILED and info.error is not None
        assert info.error.code == "memory_limit" and "limits.memory_bytes 200 MiB" in info.error.message
        last = list(sup.events(turn.turn_id))[-1][1]
        assert isinstance(last, ev.RunError) and last.code == "memory_limit"


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
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no user 'nobody'")
    with _limited(tmp_path, user="nobody") as sup:
        turn = sup.start_turn("introspect")
        last = list(sup.events(turn.turn_id, timeout=20))[-1][1]
    assert isinstance(last, ev.RunFinished), last
    assert (last.result["uid"], last.result["gid"]) == (nobody.pw_uid, nobody.pw_gid)
