"""How one turn is stopped: which reason wins, and which signal is due when.

trio's cancel scope is the model. The first intent recorded wins, and it is
recorded before any signal, so the ending is classified by why the supervisor
stopped the turn, not by how the process died. A cancel or timeout escalates
(cooperative, then SIGTERM after ``cancel_grace_s``, then SIGKILL after
``kill_grace_s``); a limit, storage or protocol breach kills at once.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

from supervisor.turns import Intent

# Intents that stop a turn gracefully; every other one kills at once.
_GRACEFUL = frozenset({Intent.CANCEL, Intent.TIMEOUT})
# The first intent wins, except: a log that cannot be written ends the turn
# ``storage_error`` even while a graceful stop is under way (its history is incomplete).
_OVERRIDES = {Intent.STORAGE: _GRACEFUL}


@dataclass(frozen=True)
class Escalation:
    """Cooperative cancel, then SIGTERM after ``cancel_grace_s``, then SIGKILL after ``kill_grace_s``."""

    cancel_grace_s: float
    kill_grace_s: float

    def deadlines(self, now: float) -> tuple[float, float]:
        """When to send SIGTERM and SIGKILL for a stop asked for at ``now`` (monotonic)."""
        term_at = now + self.cancel_grace_s
        return term_at, term_at + self.kill_grace_s


@dataclass(frozen=True)
class Breach:
    """A limit the turn went over: ``Intent.LIMIT`` or ``Intent.MEMORY``, with what to tell the user."""

    intent: Intent
    message: str


class Due(enum.Enum):
    TIMEOUT = "timeout"  # the wall timeout passed: record it, set the token, escalate
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


class StopPolicy:
    """One turn's stop state; used by the relay thread only."""

    def __init__(self, escalation: Escalation, *, timeout_at: float | None = None) -> None:
        self.escalation = escalation
        self.intent = Intent.NONE
        self.message = ""
        self.timeout_at = timeout_at
        self.term_at: float | None = None
        self.kill_at: float | None = None

    @property
    def stopping(self) -> bool:
        return self.intent is not Intent.NONE

    def request(self, intent: Intent, message: str, now: float) -> bool:
        """Record why the turn must stop; False when an earlier intent already won.

        A graceful intent schedules the escalation; any other makes SIGKILL due now.
        """
        if self.intent is not Intent.NONE and self.intent not in _OVERRIDES.get(intent, ()):
            return False
        self.intent, self.message = intent, message
        if intent in _GRACEFUL:
            self.term_at, self.kill_at = self.escalation.deadlines(now)
        else:
            self.term_at, self.kill_at = None, now
        return True

    def due(self, now: float) -> Due | None:
        """What is due at ``now``, at most one thing per call (the caller loops)."""
        if self.timeout_at is not None and now >= self.timeout_at:
            self.timeout_at = None
            if self.intent is Intent.NONE:
                return Due.TIMEOUT
        if self.term_at is not None and now >= self.term_at:
            self.term_at = None
            return Due.SIGTERM
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            return Due.SIGKILL
        return None

    def next_deadline(self) -> float | None:
        times = [t for t in (self.timeout_at, self.term_at, self.kill_at) if t is not None]
        return min(times) if times else None

    def disarm(self) -> None:
        """The turn's root exited: nothing more is due (its leftovers are swept anyway)."""
        self.timeout_at = self.term_at = self.kill_at = None


SIGNALS = {Due.SIGTERM: signal.SIGTERM, Due.SIGKILL: signal.SIGKILL}
