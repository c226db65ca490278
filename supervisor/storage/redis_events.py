"""The Redis backend of ``EventStore``: one stream per turn, entry id ``<seq>-0``.

Ids and seqs agree, so a read after cursor N is ``XRANGE (N+1)-0 …`` and a
follower's ``XREAD`` cursor is ``N-0``. Appends go through one script that
refuses (``FENCED``) a batch whose first seq does not follow the stored last
one, and any batch after a terminal event: a node that lost a turn (another
node ended it ``lost``) can neither add to it nor write a second ending. A
terminal entry carries its status in field ``e``, which the turn store's
scripts check.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from supervisor.errors import StoreFenced, StoreUnavailable
from supervisor.ids import validate_turn_id
from supervisor.storage.lines import is_terminal_line, line_seq
from supervisor.storage.redis_common import Keys, ending_of, translated

READ_BUDGET = 8 << 20  # bytes one read may return (always at least one line)
RETRY_PAUSE_S = 0.1  # between attempts of an append while Redis does not answer
PAGE = 500  # entries per XRANGE round trip

_APPEND = """
local first = tonumber(ARGV[1])
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = 0
if #top > 0 then
  local fields = top[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then return redis.error_reply('FENCED the turn has already ended') end
  end
  last = tonumber(string.match(top[1][1], '^(%d+)-'))
end
if first ~= last + 1 then
  return redis.error_reply('FENCED seq ' .. first .. ' does not follow the stored ' .. last)
end
for i = 2, #ARGV, 2 do
  local seq = first + (i - 2) / 2
  if ARGV[i + 1] == '' then
    redis.call('XADD', KEYS[1], seq .. '-0', 'l', ARGV[i])
  else
    redis.call('XADD', KEYS[1], seq .. '-0', 'l', ARGV[i], 'e', ARGV[i + 1])
    local ttl = redis.call('PTTL', KEYS[2])  -- an ending stored after the record's: expire with it
    if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  end
end
return last + (#ARGV - 1) / 2
"""

# The compacted form expires with the turn's record (``[retention] max_age_s``), and is not
# written for a turn retention removed meanwhile.
_WRITE_COMPACT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
"""


def entry_line(fields: dict[bytes, bytes]) -> bytes:
    return fields[b"l"]


class RedisEventStore:
    """Events of every node's turns, readable by every node."""

    def __init__(self, client: redis.Redis, keys: Keys, *, retry_s: float = 0.0) -> None:
        self.client = client
        self.keys = keys
        self.retry_s = retry_s  # how long an append waits for an unreachable Redis
        self._append = client.register_script(_APPEND)
        self._write_compact = client.register_script(_WRITE_COMPACT)

    def _key(self, turn_id: str) -> str:
        return self.keys.events(validate_turn_id(turn_id))

    # -- writing (the owner's relay) --------------------------------------------

    def create(self, turn_id: str) -> None:
        """Nothing to open: the stream exists from its first entry."""
        validate_turn_id(turn_id)

    def reopen(self, turn_id: str) -> int:
        last = self.last_line(turn_id)
        return line_seq(last) if last is not None else 0

    def append(self, turn_id: str, lines: list[bytes]) -> None:
        if not lines:
            return
        first = line_seq(lines[0])
        args: list[Any] = [first]
        for offset, line in enumerate(lines):
            ending = ending_of(line) if is_terminal_line(line, first + offset) else None
            args += [line, ending[0].value if ending is not None else ""]
        # Redis unreachable: try again for retry_s (the relay waits; each turn's pipe holds
        # what its process writes meanwhile), then give up: the relay ends the turn storage_error.
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                with translated():
                    self._append(keys=[self._key(turn_id), self.keys.turn(turn_id)], args=args)
                return
            except StoreFenced:
                if self.last_line(turn_id) == lines[-1]:
                    return  # an earlier attempt was written, its answer was lost: done once
                raise
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_PAUSE_S)

    def close(self, turn_id: str) -> None:
        """Nothing to flush: durability is Redis's (AOF ``appendfsync everysec``: about a second)."""

    # -- the compacted form ----------------------------------------------------------

    def write_compact(self, turn_id: str, lines: list[bytes]) -> None:
        keys = [self.keys.compact(validate_turn_id(turn_id)), self.keys.turn(turn_id)]
        with translated():
            self._write_compact(keys=keys, args=[b"".join(x + b"\n" for x in lines)])

    def read_compact(self, turn_id: str) -> list[bytes] | None:
        with translated():
            data: Any = self.client.get(self.keys.compact(validate_turn_id(turn_id)))
        return None if data is None else data.splitlines()

    # -- removal -----------------------------------------------------------------------

    def has_raw(self, turn_id: str) -> bool:
        with translated():
            return bool(self.client.exists(self._key(turn_id)))

    def remove_raw(self, turn_id: str) -> int:
        key = self._key(turn_id)
        with translated():
            freed = self._usage(key)
            self.client.unlink(key)
        return freed

    def remove(self, turn_id: str) -> int:
        keys = [self._key(turn_id), self.keys.compact(turn_id)]
        with translated():
            freed = sum(self._usage(k) for k in keys)
            self.client.unlink(*keys)
        return freed

    def size(self, turn_id: str) -> int:
        with translated():
            return sum(self._usage(k) for k in (self._key(turn_id), self.keys.compact(turn_id)))

    def sizes(self, turn_ids: list[str]) -> list[int]:
        """``size`` of many turns in one round trip."""
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for turn_id in turn_ids:
                pipe.memory_usage(self._key(turn_id))
                pipe.memory_usage(self.keys.compact(turn_id))
            found: list[Any] = pipe.execute()
        return [int(found[i] or 0) + int(found[i + 1] or 0) for i in range(0, len(found), 2)]

    def _usage(self, key: str) -> int:
        return int(self.client.memory_usage(key) or 0)

    def turn_ids(self) -> set[str]:
        """Every turn with a stream (a full key scan: start-up and tools only)."""
        out = set()
        with translated():
            for key in self.client.scan_iter(match=self.keys.events("*"), count=1000):
                out.add(key.decode().rsplit("{", 1)[1].rstrip("}"))
        return out

    # -- reading (any node, any thread) --------------------------------------------------

    def read_after(self, turn_id: str, after: int, limit: int, upto: int,
                   max_bytes: int = READ_BUDGET) -> list[bytes]:
        """``after < seq <= upto``, in pages of ``PAGE``: at most ``limit`` lines and,
        past the first, ``max_bytes``."""
        out: list[bytes] = []
        size = 0
        key = self._key(turn_id)
        start = after + 1
        while len(out) < limit and start <= upto:
            want = min(PAGE, limit - len(out))
            with translated():
                page: Any = self.client.xrange(key, f"{start}-0", f"{upto}-0", count=want)
            for _id, fields in page:
                line = entry_line(fields)
                if out and size + len(line) > max_bytes:
                    return out
                out.append(line)
                size += len(line)
            if len(page) < want:
                break  # the stream holds no more
            start = line_seq(out[-1]) + 1
        return out

    def tail(self, turn_id: str, limit: int, upto: int, max_bytes: int = READ_BUDGET) -> list[bytes]:
        """The last ``limit`` lines with ``seq <= upto`` (past the first, ``max_bytes``)."""
        found: list[bytes] = []
        size = 0
        key = self._key(turn_id)
        end = upto
        while len(found) < limit and end >= 1:
            want = min(PAGE, limit - len(found))
            with translated():
                page: Any = self.client.xrevrange(key, f"{end}-0", "-", count=want)
            for _id, fields in page:
                line = entry_line(fields)
                if found and size + len(line) > max_bytes:
                    found.reverse()
                    return found
                found.append(line)
                size += len(line)
            if len(page) < want:
                break
            end = line_seq(found[-1]) - 1
        found.reverse()
        return found

    def last_line(self, turn_id: str) -> bytes | None:
        with translated():
            top: Any = self.client.xrevrange(self._key(turn_id), "+", "-", count=1)
        return entry_line(top[0][1]) if top else None
