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
from redis.sentinel import Sentinel, SentinelConnectionPool

from ipc.events import RunError, RunFinished, decode_event
from supervisor.config import sentinel_of
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
        # Sorted set: "<id>|<status>|<owner>|<session>" of each ended turn with a TTL, scored by when it
        # expires: what the retention pass reads to drop the index entries of turns Redis expired.
        self.expiry = f"{prefix}:expiry"
        self.pruned_channel = f"{prefix}:pruned"  # pub/sub: "removed <id>" / "raw <id>" after a retention pass
        self.retention_lock = f"{prefix}:retention:lock"  # held by the one node running a retention pass
        self.retention_due = f"{prefix}:retention:due"  # exists until the next periodic pass is due

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


# Lua, prepended to every script that ends a turn: with ``ttl`` (ms, '' for none) every key of the
# turn expires that long after its ending is first written (a later re-write does not push it back),
# and the turn is listed in ``<p>:expiry`` so the retention pass can drop its index entries.
EXPIRE_ENDED = """
local function expire_ended(p, id, status, owner, session, ttl)
  local rec = p .. ':turn:{' .. id .. '}'
  if ttl == '' or redis.call('PTTL', rec) ~= -1 then return end
  local ms = tonumber(ttl)
  local t = redis.call('TIME')
  redis.call('ZADD', p .. ':expiry', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ms,
             id .. '|' .. status .. '|' .. owner .. '|' .. session)
  for _, k in ipairs({rec, p .. ':ev:{' .. id .. '}', p .. ':compact:{' .. id .. '}', p .. ':cancel:{' .. id .. '}'}) do
    redis.call('PEXPIRE', k, ms)
  end
end
"""


def ttl_arg(max_age_s: float | None) -> str:
    """``[retention] max_age_s`` as the scripts' ``ttl`` argument (milliseconds, '' for none)."""
    return "" if max_age_s is None else str(max(1, int(max_age_s * 1000)))


def connect(url: str) -> redis.Redis:
    """A client pool for ``url`` (bytes in, bytes out); raises ``StoreUnavailable`` if Redis does not answer.

    Through Sentinel (``redis+sentinel://``) the pool asks the sentinels for the
    master on every new connection, and a connection to a master that was
    demoted fails (Sentinel disconnects its clients, or ``READONLY``), so the
    next try (an append retries for ``redis_retry_s``) reaches the new master
    (see also ``follow_master``).
    """
    target = sentinel_of(url)
    try:
        if target is None:
            client = redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=5.0,
                                          health_check_interval=30)
        else:
            sentinels, master, db = target
            sentinel = Sentinel(sentinels, socket_timeout=5.0,  # type: ignore[no-untyped-call]
                                socket_connect_timeout=5.0)
            client = sentinel.master_for(master, db=db, socket_timeout=10.0,  # type: ignore[no-untyped-call]
                                         socket_connect_timeout=5.0, health_check_interval=30)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise StoreUnavailable(f"cannot reach Redis at {url}: {exc}") from None
    return client


def follow_master(client: redis.Redis) -> None:
    """Through Sentinel: ask which server is the master now. After a failover the old master may
    accept writes until Sentinel demotes it (seconds later), and writes there are lost; once the pool
    knows the new address it drops its connections to the old one as each is released. The heartbeat
    calls this every ``node_ttl_s / 3``, so a node's key is refreshed on the new master in time."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.get_master_address()  # type: ignore[no-untyped-call]


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
