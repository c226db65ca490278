"""The Redis backend of ``TurnStore``: a hash per turn plus indexes, written by one script.

``<p>:turn:{id}`` holds ``info`` (the ``TurnInfo`` JSON), ``status`` and
``node`` (the owner: set once, by the first write that is not ``queued``: a
turn in the cluster's queue belongs to no node until one takes it). Indexes: ``<p>:turns`` (every id, sorted by
id, so by creation), ``<p>:status:<s>``, ``<p>:session:<sid>``,
``<p>:node:<n>:turns`` (every turn a node owns) and ``<p>:node:<n>:active``
(its unended ones: what liveness ends ``lost`` when the node dies).

Fencing, in the same script: an ended status is final (a put that would change
it is refused), and an ended record must agree with the terminal event in the
turn's stream, so the node that lost a turn cannot overwrite the ending
another node wrote. A put never creates an ended record: one that is gone was
removed by retention, and a late write (its owner's compaction) must not bring it back.

Retention (``runtime/cluster_retention.py``): with ``max_age_s`` the script that
writes an ending gives the turn's keys a TTL and lists it in ``<p>:expiry``
(``drop_expired`` later unindexes what expired); ``raw_removed`` is a field of
its own, set by the retention pass and never cleared by a put.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis

from supervisor.ids import validate_turn_id
from supervisor.logs import get_logger
from supervisor.storage.redis_common import (
    EXPIRE_ENDED,
    Keys,
    ending_of,
    translated,
    ttl_arg,
)
from supervisor.storage.redis_events import RedisEventStore
from supervisor.turns import TurnInfo, TurnStatus

log = get_logger("runnerd.redis_turns")
_decoder = msgspec.json.Decoder(TurnInfo)

_WRITE = EXPIRE_ENDED + """
local ENDED = {succeeded=true, failed=true, cancelled=true, timed_out=true, lost=true}
local id, new, p = ARGV[1], ARGV[3], ARGV[6]
local old = redis.call('HGET', KEYS[1], 'status')
if ARGV[8] == 'cas' and old then
  local ok = false
  for i = 9, #ARGV do if ARGV[i] == old then ok = true end end
  if not ok then return 0 end
end
if not old and ENDED[new] and ARGV[8] ~= 'cas' then
  return 0  -- an ended turn whose record is gone was removed by retention: never bring it back
end
if old and ENDED[old] and old ~= new then
  return redis.error_reply('FENCED turn ' .. id .. ' already ended ' .. old)
end
if ENDED[new] then
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #top > 0 then
    local fields = top[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' and fields[i + 1] ~= new then
        return redis.error_reply('FENCED turn ' .. id .. ' ended ' .. fields[i + 1] .. ' in its events')
      end
    end
  end
end
if old then redis.call('SREM', p .. ':status:' .. old, id) end
redis.call('SADD', p .. ':status:' .. new, id)
redis.call('HSET', KEYS[1], 'info', ARGV[2], 'status', new)
if new ~= 'queued' then redis.call('HSETNX', KEYS[1], 'node', ARGV[4]) end  -- a queued turn has no owner yet
redis.call('ZADD', KEYS[3], 0, id)
if ARGV[5] ~= '' then redis.call('SADD', p .. ':session:' .. ARGV[5], id) end
local owner = redis.call('HGET', KEYS[1], 'node')
if owner then
  redis.call('SADD', p .. ':node:' .. owner .. ':turns', id)
  if ENDED[new] then
    redis.call('SREM', p .. ':node:' .. owner .. ':active', id)
  else
    redis.call('SADD', p .. ':node:' .. owner .. ':active', id)
  end
end
if ENDED[new] then expire_ended(p, id, new, owner or '', ARGV[5], ARGV[7]) end
return 1
"""

_REMOVE = """
local id, p = ARGV[1], ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'status', 'node', 'info')
if not f[1] then return 0 end
local size = string.len(f[3] or '')
redis.call('SREM', p .. ':status:' .. f[1], id)
if f[2] then
  redis.call('SREM', p .. ':node:' .. f[2] .. ':turns', id)
  redis.call('SREM', p .. ':node:' .. f[2] .. ':active', id)
end
if ARGV[3] ~= '' then redis.call('SREM', p .. ':session:' .. ARGV[3], id) end
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', p .. ':expiry', id .. '|' .. f[1] .. '|' .. (f[2] or '') .. '|' .. ARGV[3])
redis.call('DEL', KEYS[1])
return size
"""

# Index entries of turns whose keys Redis expired (``[retention] max_age_s``), due ones first.
_DROP_EXPIRED = """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dropped = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local id, status, owner, session = string.match(m, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  local at = redis.call('PEXPIRETIME', p .. ':turn:{' .. id .. '}')
  if at == -2 then  -- expired: nothing may point at it any more
    redis.call('ZREM', p .. ':turns', id)
    redis.call('SREM', p .. ':status:' .. status, id)
    if owner ~= '' then redis.call('SREM', p .. ':node:' .. owner .. ':turns', id) end
    if session ~= '' then redis.call('SREM', p .. ':session:' .. session, id) end
    redis.call('ZREM', KEYS[1], m)
    dropped = dropped + 1
  elseif at == -1 then
    redis.call('ZREM', KEYS[1], m)  -- no longer expires: not this pass's to follow
  else
    redis.call('ZADD', KEYS[1], at, m)  -- written again later: look when it expires
  end
end
return {dropped, #due}
"""

_MARK_RAW_REMOVED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], 'raw_removed', '1') end
return 0
"""


class RedisTurnStore:
    """Every node's turn records; ``load_all`` is this node's own (what its recovery may end)."""

    def __init__(self, client: redis.Redis, keys: Keys, node: str, events: RedisEventStore, *,
                 max_age_s: float | None = None) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.events = events
        self.ttl = ttl_arg(max_age_s)  # an ended turn's keys expire this long after its ending
        self._write = client.register_script(_WRITE)
        self._remove = client.register_script(_REMOVE)
        self._drop_expired = client.register_script(_DROP_EXPIRED)
        self._mark_raw_removed = client.register_script(_MARK_RAW_REMOVED)

    def _run(self, info: TurnInfo, mode: str, expect: frozenset[TurnStatus]) -> bool:
        turn_id = validate_turn_id(info.turn_id)
        keys = [self.keys.turn(turn_id), self.keys.events(turn_id), self.keys.turns]
        args: list[Any] = [turn_id, msgspec.json.encode(info), info.status.value, self.node,
                           info.session_id or "", self.keys.prefix, self.ttl, mode, *(s.value for s in expect)]
        with translated():
            return bool(self._write(keys=keys, args=args))

    def put(self, info: TurnInfo, *, durable: bool = True) -> None:
        """Durability is Redis's whatever ``durable`` says (see docs/CLUSTER.md)."""
        self._run(info, "put", frozenset())

    def transition(self, info: TurnInfo, expect: frozenset[TurnStatus], *, durable: bool = True) -> bool:
        return self._run(info, "cas", expect)

    def get(self, turn_id: str) -> TurnInfo | None:
        with translated():
            data: Any = self.client.hmget(self.keys.turn(validate_turn_id(turn_id)), "info", "raw_removed")
        return self._decode(turn_id, data)

    def owner(self, turn_id: str) -> str | None:
        with translated():
            node: Any = self.client.hget(self.keys.turn(validate_turn_id(turn_id)), "node")
        return str(node.decode()) if node is not None else None

    def _decode(self, turn_id: str, fields: list[bytes | None]) -> TurnInfo | None:
        """A record from ``HMGET info raw_removed``: retention sets the flag as a field of its own,
        so an owner re-writing the record from its older copy cannot clear it."""
        data, raw_removed = fields
        if data is None:
            return None
        try:
            info = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("turn_record_corrupt", turn_id=turn_id, error=str(exc))
            return None
        info.raw_removed = info.raw_removed or raw_removed is not None
        return info

    def _many(self, ids: list[str], indexes: list[str]) -> list[TurnInfo]:
        return self._read(ids, indexes)[0]

    def _read(self, ids: list[str], indexes: list[str]) -> tuple[list[TurnInfo], int]:
        """The records of ``ids``, and how many had expired (dropped from ``indexes`` on the way)."""
        if not ids:
            return [], 0
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for turn_id in ids:
                pipe.hmget(self.keys.turn(turn_id), "info", "raw_removed")
            found = pipe.execute()
        infos, gone = [], []
        for turn_id, fields in zip(ids, found):
            if fields[0] is None:
                gone.append(turn_id)
            elif (info := self._decode(turn_id, fields)) is not None:
                infos.append(info)
        if gone:
            self._unindex(gone, indexes)
        return infos, len(gone)

    def _unindex(self, ids: list[str], indexes: list[str]) -> None:
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for key in indexes:
                if key == self.keys.turns:
                    pipe.zrem(key, *ids)
                else:
                    pipe.srem(key, *ids)
            pipe.execute()

    def load_all(self) -> list[TurnInfo]:
        """This node's turns: another node's running turns are not ours to recover."""
        with translated():
            members: Any = self.client.smembers(self.keys.node_turns(self.node))
        ids = sorted(m.decode() for m in members)
        return self._many(ids, [self.keys.node_turns(self.node)])

    def active_of(self, node: str) -> list[str]:
        """Turn ids a node owns that have not ended (liveness ends them when it dies)."""
        with translated():
            members: Any = self.client.smembers(self.keys.node_active(node))
        return sorted(m.decode() for m in members)

    def select(self, *, status: str | None = None, session_id: str | None = None,
               limit: int | None = None) -> list[TurnInfo]:
        """Every node's turns, newest first (ids sort by creation time)."""
        raw: Any
        sets = ([self.keys.status(status)] if status is not None else []) + \
               ([self.keys.session(session_id)] if session_id is not None else [])
        while True:
            with translated():
                if not sets:
                    raw = self.client.zrevrangebylex(self.keys.turns, "+", "-", start=0, num=limit) \
                        if limit is not None else self.client.zrevrangebylex(self.keys.turns, "+", "-")
                else:
                    raw = self.client.sinter(sets)
            ids = sorted((m.decode() for m in raw), reverse=True)[:limit]
            infos, gone = self._read(ids, sets or [self.keys.turns])
            if not gone or limit is None:
                return infos
            # Some had expired (and are unindexed now): read again for a full page.

    def ended_ids(self) -> list[str]:
        """Every ended turn of every node (what a retention pass considers)."""
        with translated():
            members: Any = self.client.sunion([self.keys.status(s.value) for s in TurnStatus if s.ended])
        return sorted(m.decode() for m in members)

    def ended(self, ids: list[str]) -> list[TurnInfo]:
        """The records of ``ids`` still stored."""
        return self._many(ids, [self.keys.status(s.value) for s in TurnStatus if s.ended])

    def drop_expired(self, batch: int = 1000) -> int:
        """Drop the index entries of turns whose keys Redis expired; how many turns."""
        dropped = 0
        while True:
            with translated():
                reply: Any = self._drop_expired(keys=[self.keys.expiry], args=[self.keys.prefix, batch])
            dropped += int(reply[0])
            if int(reply[1]) < batch:
                return dropped

    def mark_raw_removed(self, turn_id: str) -> None:
        with translated():
            self._mark_raw_removed(keys=[self.keys.turn(validate_turn_id(turn_id))])

    def ending_from_log(self, turn_id: str) -> TurnInfo | None:
        last = self.events.last_line(turn_id)
        ending = ending_of(last) if last is not None else None
        if last is None or ending is None:
            return None
        info = self.get(turn_id) or TurnInfo(turn_id=turn_id, agent="unknown")
        info.status, info.error = ending
        info.last_seq = int(last[7:last.index(b",", 7)])
        return info

    def remove(self, turn_id: str) -> int:
        info = self.get(turn_id)
        with translated():
            return int(self._remove(keys=[self.keys.turn(validate_turn_id(turn_id)), self.keys.turns],
                                    args=[turn_id, self.keys.prefix,
                                          info.session_id or "" if info is not None else ""]))
