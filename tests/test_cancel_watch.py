"""worker.main.CancelWatch: a waiting turn costs nothing until the cancel comes, then its task is cancelled."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from supervisor.config import Config
from supervisor.embedded import Supervisor
from supervisor.turns import TurnStatus


@pytest.mark.timeout(60)
def test_an_idle_async_turn_is_not_woken_until_it_is_cancelled(tmp_path: Path) -> None:
    config = Config(state_dir=str(tmp_path), agents={"idle": "fixture_idle:idle"}, cancel_grace_s=30.0)
    with Supervisor(config) as sup:
        turn = sup.start_turn("idle")
        pid = wait_for(lambda: next((e.value for _, e in sup.events(turn.turn_id, follow=False)
                                     if getattr(e, "name", None) == "ready"), None), 30)
        proc = psutil.Process(pid)  # type: ignore[arg-type]
        before = sum(proc.num_ctx_switches())
        time.sleep(1.0)  # an observation window, not a wait for anything: a 10 ms poll would switch ~100 times
        woken = sum(proc.num_ctx_switches()) - before
        assert woken < 20, f"the idle turn was woken {woken} times in a second"
        sup.cancel(turn.turn_id)
        info = sup.wait(turn.turn_id, 20)
        # Well inside the 30 s grace: the cooperative path (the task was cancelled), no signal.
        assert info.status is TurnStatus.CANCELLED and info.signal is None
        names = [getattr(e, "name", None) for _, e in sup.events(turn.turn_id, follow=False)]
        assert "task_cancelled" in names
