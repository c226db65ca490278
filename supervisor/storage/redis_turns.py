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
another node wrote.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis

from supervisor.ids import validate_turn_id
from supervisor.logs import get_logger
from supervisor.storage.redis_common import Keys, ending_of, translated
from supervisor.storage.redis_events import RedisEventStore
from supervisor.turns import TurnInfo, TurnStatus

log = get_logger("runnerd.redis_turns")
_decoder = msgspec.json.Decoder(TurnInfo)

_WRITE = """
local ENDED = {succeeded=true, failed=true, cancelled=true, timed_out=true, lost=true}
local id, new, p = ARGV[1], ARGV[3], ARGV[6]
local old = redis.call('HGET', KEYS[1], 'status')
if ARGV[7] == 'cas' and old then
  local ok = false
  for i = 8, #ARGV do if ARGV[i] == old then ok = true end end
  if not ok then return 0 end
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
redis.call('DEL', KEYS[1])
return size
"""


class RedisTurnStore:
    """Every node's turn records; ``load_all`` is this node's own (what its recovery may end)."""

    def __init__(self, client: redis.Redis, keys: Keys, node: str, events: RedisEventStore) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.events = events
        self._write = client.register_script(_WRITE)
        self._remove = client.register_script(_REMOVE)

    def _run(self, info: TurnInfo, mode: str, expect: frozenset[TurnStatus]) -> bool:
        turn_id = validate_turn_id(info.turn_id)
        keys = [self.keys.turn(turn_id), self.keys.events(turn_id), self.keys.turns]
        args: list[Any] = [turn_id, msgspec.json.encode(info), info.status.value, self.node,
                           info.session_id or "", self.keys.prefix, mode, *(s.value for s in expect)]
        with translated():
            return bool(self._write(keys=keys, args=args))

    def put(self, info: TurnInfo, *, durable: bool = True) -> None:
        """Durability is Redis's whatever ``durable`` says (see docs/CLUSTER.md)."""
        self._run(info, "put", frozenset())

    def transition(self, info: TurnInfo, expect: frozenset[TurnStatus], *, durable: bool = True) -> bool:
        return self._run(info, "cas", expect)

    def get(self, turn_id: str) -> TurnInfo | None:
        with translated():
            data: Any = self.client.hget(self.keys.turn(validate_turn_id(turn_id)), "info")
        return self._decode(turn_id, data)

    def owner(self, turn_id: str) -> str | None:
        with translated():
            node: Any = self.client.hget(self.keys.turn(validate_turn_id(turn_id)), "node")
        return str(node.decode()) if node is not None else None

    def _decode(self, turn_id: str, data: bytes | None) -> TurnInfo | None:
        if data is None:
            return None
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("turn_record_corrupt", turn_id=turn_id, error=str(exc))
            return None

    def _many(self, ids: list[str]) -> list[TurnInfo]:
        if not ids:
            return []
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for turn_id in ids:
                pipe.hget(self.keys.turn(turn_id), "info")
            found = pipe.execute()
        return [info for turn_id, data in zip(ids, found) if (info := self._decode(turn_id, data)) is not None]

    def load_all(self) -> list[TurnInfo]:
        """This node's turns: another node's running turns are not ours to recover."""
        with translated():
            members: Any = self.client.smembers(self.keys.node_turns(self.node))
        ids = sorted(m.decode() for m in members)
        return self._many(ids)

    def active_of(self, node: str) -> list[str]:
        """Turn ids a node owns that have not ended (liveness ends them when it dies)."""
        with translated():
            members: Any = self.client.smembers(self.keys.node_active(node))
        return sorted(m.decode() for m in members)

    def select(self, *, status: str | None = None, session_id: str | None = None,
               limit: int | None = None) -> list[TurnInfo]:
        """Every node's turns, newest first (ids sort by creation time)."""
        raw: Any
        with translated():
            if status is None and session_id is None:
                raw = self.client.zrevrangebylex(self.keys.turns, "+", "-", start=0, num=limit or -1) \
                    if limit is not None else self.client.zrevrangebylex(self.keys.turns, "+", "-")
            else:
                sets = ([self.keys.status(status)] if status is not None else []) + \
                       ([self.keys.session(session_id)] if session_id is not None else [])
                raw = self.client.sinter(sets)
        ids = sorted((m.decode() for m in raw), reverse=True)[:limit]
        return self._many(ids)

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
