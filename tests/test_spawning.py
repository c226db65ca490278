"""Start methods and the forkserver itself: spawn mode, a killed forkserver, big frames."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

from ipc import events as ev
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus


@pytest.mark.timeout(60)
def test_spawn_mode_runs_cancels_and_sees_an_exit_despite_a_forked_helper(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path, start_method="spawn")) as sup:
        turn = sup.start_turn("count", {"n": 50})
        assert [s for s, _ in sup.events(turn.turn_id, timeout=20)] == list(range(1, 53))
        helper = sup.start_turn("leave_helper")  # its helper inherits the spawn sentinel
        info = sup.wait(helper.turn_id, 20)
        assert info.status is TurnStatus.SUCCEEDED and info.exit_code == 0
        victim = sup.start_turn("grandchildren")
        for _, e in sup.events(victim.turn_id, timeout=20):
            if isinstance(e, ev.Custom) and e.name == "pids":
                break
        sup.cancel(victim.turn_id)
        assert sup.wait(victim.turn_id, 20).status is TurnStatus.CANCELLED


@pytest.mark.timeout(60)
def test_a_killed_forkserver_takes_no_turn_down(sup: Supervisor) -> None:
    bystander = sup.start_turn("paced", {"n": 100, "interval": 0.005})
    killer = sup.start_turn("kill_forkserver")
    info = sup.wait(killer.turn_id, 20)
    assert info.status is TurnStatus.SUCCEEDED and info.exit_code == 0
    assert [type(e).__name__ for _, e in sup.events(killer.turn_id)][-1] == "RunFinished"
    assert sup.wait(bystander.turn_id, 20).status is TurnStatus.SUCCEEDED
    assert [s for s, _ in sup.events(bystander.turn_id)] == list(range(1, 103))
    after = sup.start_turn("count", {"n": 3})  # a new forkserver serves new turns
    assert sup.wait(after.turn_id, 20).status is TurnStatus.SUCCEEDED


@pytest.mark.timeout(30)
def test_a_batch_over_the_frame_budget_is_split_and_a_huge_result_is_an_agent_error(sup: Supervisor) -> None:
    turn = sup.start_turn("emit_many_big")
    assert sup.wait(turn.turn_id, 20).status is TurnStatus.SUCCEEDED
    assert sup.status(turn.turn_id).last_seq == 12
    turn = sup.start_turn("huge_result")
    info = sup.wait(turn.turn_id, 20)
    assert info.error is not None and info.error.code == "agent_error"
    assert "result is 2097154 bytes; the limit is 1048576" in info.error.message
