"""supervisor.runtime.stoppolicy: which intent wins, and which signal is due when."""

from __future__ import annotations

from supervisor.runtime.stoppolicy import Due, Escalation, StopPolicy
from supervisor.turns import Intent

ESC = Escalation(cancel_grace_s=2.0, kill_grace_s=3.0)


def test_the_first_intent_wins() -> None:
    stop = StopPolicy(ESC)
    assert stop.request(Intent.CANCEL, "user", now=10.0)
    assert not stop.request(Intent.TIMEOUT, "late", now=11.0)
    assert not stop.request(Intent.MEMORY, "late", now=11.0)
    assert (stop.intent, stop.message) == (Intent.CANCEL, "user")


def test_a_storage_failure_overrides_a_graceful_stop_but_not_a_breach() -> None:
    graceful = StopPolicy(ESC)
    graceful.request(Intent.TIMEOUT, "t", now=0.0)
    assert graceful.request(Intent.STORAGE, "disk full", now=1.0)
    assert graceful.intent is Intent.STORAGE and graceful.due(1.0) is Due.SIGKILL
    breach = StopPolicy(ESC)
    breach.request(Intent.LIMIT, "too many events", now=0.0)
    assert not breach.request(Intent.STORAGE, "disk full", now=1.0)
    assert breach.intent is Intent.LIMIT


def test_a_graceful_stop_escalates_term_then_kill_on_the_policy_deadlines() -> None:
    stop = StopPolicy(ESC)
    stop.request(Intent.CANCEL, "", now=100.0)
    assert stop.next_deadline() == 102.0
    assert stop.due(101.9) is None
    assert stop.due(102.0) is Due.SIGTERM
    assert stop.due(102.0) is None  # each signal is due once
    assert stop.next_deadline() == 105.0
    assert stop.due(105.0) is Due.SIGKILL
    assert stop.next_deadline() is None


def test_a_breach_kills_at_once() -> None:
    stop = StopPolicy(ESC)
    stop.request(Intent.MEMORY, "over", now=7.0)
    assert stop.due(7.0) is Due.SIGKILL


def test_the_timeout_is_due_only_while_nothing_else_stopped_the_turn() -> None:
    timed = StopPolicy(ESC, timeout_at=50.0)
    assert timed.due(49.0) is None and timed.due(50.0) is Due.TIMEOUT
    cancelled = StopPolicy(ESC, timeout_at=50.0)
    cancelled.request(Intent.CANCEL, "", now=49.0)
    assert cancelled.due(50.0) is None  # the cancel's escalation runs instead


def test_disarm_leaves_nothing_due() -> None:
    stop = StopPolicy(ESC, timeout_at=5.0)
    stop.request(Intent.CANCEL, "", now=1.0)
    stop.disarm()
    assert stop.next_deadline() is None and stop.due(1e9) is None
