"""What both Redis stores share: the key names, the connection, error translation.

Every key of one turn carries the turn id as a hash tag (``{<id>}``), so the
turn's stream, record and compacted form stay on one Redis Cluster slot and a
script may touch them together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import msgspec
import redis

from ipc.events import RunError, RunFinished, decode_event
from supervisor.errors import StoreFenced, StoreUnavailable
from supervisor.turns import TurnError, TurnStatus

FENCED = "FENCED"  # the prefix of every refusal our scripts return


class Keys:
    """Every key name, in one place (``<prefix>:…``). The Lua scripts build the index
    names (status, session, node sets) from the prefix the same way."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.turns = f"{prefix}:turns"  # sorted set of every turn id (lexicographic: by creation)
        self.nodes = f"{prefix}:nodes"  # set of node ids that ever joined and may own running turns
        self.cancel_channel = f"{prefix}:cancel"  # pub/sub: turn ids whose cancel was asked for

    def events(self, turn_id: str) -> str:
        return f"{self.prefix}:ev:{{{turn_id}}}"

    def compact(self, turn_id: str) -> str:
        return f"{self.prefix}:compact:{{{turn_id}}}"

    def turn(self, turn_id: str) -> str:
        return f"{self.prefix}:turn:{{{turn_id}}}"

    def cancel(self, turn_id: str) -> str:
        return f"{self.prefix}:cancel:{{{turn_id}}}"

    def status(self, status: str) -> str:
        return f"{self.prefix}:status:{status}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def node_turns(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:turns"

    def node_active(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:active"

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:alive"

    def wake(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:wake"


def connect(url: str) -> redis.Redis:
    """A client pool for ``url`` (bytes in, bytes out); raises ``StoreUnavailable`` if Redis does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=5.0,
                                      health_check_interval=30)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise StoreUnavailable(f"cannot reach Redis at {url}: {exc}") from None
    return client


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """redis-py's errors as ours: ``StoreFenced`` for a refusal by our scripts, else ``StoreUnavailable``
    (an ``OSError``: the relay ends a turn whose events cannot be written ``storage_error``)."""
    try:
        yield
    except redis.ResponseError as exc:
        if str(exc).startswith(FENCED):
            raise StoreFenced(str(exc)) from None
        raise StoreUnavailable(f"Redis refused: {exc}") from None
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis unavailable: {exc}") from None


def ending_of(line: bytes) -> tuple[TurnStatus, TurnError | None] | None:
    """The status a terminal event states (``None`` for any other line)."""
    try:
        event = decode_event(line)
    except msgspec.DecodeError:
        return None
    if isinstance(event, RunFinished):
        return (TurnStatus.CANCELLED if event.outcome.type == "cancelled" else TurnStatus.SUCCEEDED), None
    if isinstance(event, RunError):
        status = {"timeout": TurnStatus.TIMED_OUT, "lost": TurnStatus.LOST}.get(event.code, TurnStatus.FAILED)
        return status, TurnError(event.code, event.message)
    return None
