"""Typed errors of the Python API; the HTTP layer maps each to a status."""

from __future__ import annotations


class RunnerdError(Exception):
    """Base class; ``code`` is the stable machine-readable name."""

    code = "error"
    status = 400


class InvalidTurnId(RunnerdError, ValueError):
    code = "invalid_turn_id"
    status = 400


class InvalidSessionId(RunnerdError, ValueError):
    code = "invalid_session_id"
    status = 400


class UnknownTurn(RunnerdError, KeyError):
    code = "unknown_turn"
    status = 404

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown turn"


class UnknownAgent(RunnerdError, LookupError):
    code = "unknown_agent"
    status = 404


class InvalidRequest(RunnerdError, ValueError):
    code = "invalid_request"
    status = 400


class SupervisorClosed(RunnerdError, RuntimeError):
    code = "shutting_down"
    status = 503


class StateDirError(RunnerdError, OSError):
    code = "state_dir"
    status = 500


class SessionBusy(RunnerdError, RuntimeError):
    code = "session_busy"
    status = 409

    def __init__(self, message: str, active_turn_id: str) -> None:
        super().__init__(message)
        self.active_turn_id = active_turn_id


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"
    status = 400


class HistoryGap(RunnerdError, LookupError):
    """The raw events asked for are no longer retained (only the compacted form)."""

    code = "history_gap"
    status = 410


class QueueFull(RunnerdError, RuntimeError):
    code = "queue_full"
    status = 429


class ResourceUnavailable(RunnerdError, OSError):
    """Out of processes, descriptors or disk right now: try again later."""

    code = "resource_unavailable"
    status = 503


class StoreUnavailable(RunnerdError, OSError):
    """The shared store (Redis) did not answer or refused the write: try again later."""

    code = "storage_unavailable"
    status = 503


class StoreFenced(StoreUnavailable):
    """The store refused a write by a node that no longer owns the turn (it was ended elsewhere)."""

    code = "storage_fenced"
    status = 409
