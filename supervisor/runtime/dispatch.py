"""The cluster's queue: every node enqueues starts, every node takes them while it has free slots.

Sessions hold cluster-wide: the enqueue script sees the session's unended
turns (``reject`` refuses; ``enqueue``/``interrupt`` record them in the entry),
and a node defers an entry until those have ended.

``POST /v1/turns`` on any node writes the turn's record (``queued``, no owner)
and an entry of stream ``<p>:dispatch`` in one script, refused when the
cluster already holds ``max_queued`` queued turns. Each node reads the stream
through consumer group ``<p>:nodes`` only while it runs fewer than
``max_running_turns`` turns, so work goes to whoever has room, in stream
(FIFO) order. Taking a turn is a compare-and-set ``queued → starting`` that
makes the node its owner; a cancel of a queued turn is the same CAS the other
way, with the turn's two events, in one script: exactly one of them wins.
An entry is acknowledged and deleted once taken; entries a dead node had read
but not taken are claimed by a live one (``claim_from``), and a node reads its
own unacknowledged entries again after a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis

from ipc import events as ev
from supervisor.errors import QueueFull, SessionBusy
from supervisor.logs import get_logger
from supervisor.storage.lines import event_line
from supervisor.storage.redis_common import EXPIRE_ENDED, Keys, translated
from supervisor.turns import TurnInfo, TurnStatus, info_copy

log = get_logger("runnerd.dispatch")
BLOCK_MS = 2000  # a blocked read returns this often (stop, a slot freed meanwhile)
DEFERRED_BLOCK_MS = 250  # … and this often while an entry waits for its session's earlier turns
RETRY_S = 1.0

_ENQUEUE = """
local p, id, sid, policy = ARGV[3], ARGV[2], ARGV[5], ARGV[7]
local after = {}  -- the session's unended turns: this one starts after they have ended
if sid ~= '' then
  for _, status in ipairs({'queued', 'starting', 'running'}) do
    for _, other in ipairs(redis.call('SINTER', p .. ':session:' .. sid, p .. ':status:' .. status)) do
      table.insert(after, other)
    end
  end
  if #after > 0 and policy == 'reject' then return {'busy', after[1]} end
end
if redis.call('SCARD', p .. ':status:queued') >= tonumber(ARGV[1]) then return {'full'} end
local waits = table.concat(after, ',')
local qid = redis.call('XADD', KEYS[1], '*', 'turn', id, 'input', ARGV[6], 'after', waits)
redis.call('HSET', KEYS[2], 'info', ARGV[4], 'status', 'queued', 'qid', qid)
redis.call('SADD', p .. ':status:queued', id)
redis.call('ZADD', KEYS[3], 0, id)
if sid ~= '' then redis.call('SADD', p .. ':session:' .. sid, id) end
return {'ok', waits}
"""

_CANCEL_QUEUED = EXPIRE_ENDED + """
local p, id = ARGV[1], ARGV[2]
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'info', ARGV[3], 'status', 'cancelled')
redis.call('SREM', p .. ':status:queued', id)
redis.call('SADD', p .. ':status:cancelled', id)
redis.call('XADD', KEYS[2], '1-0', 'l', ARGV[4])
redis.call('XADD', KEYS[2], '2-0', 'l', ARGV[5], 'e', 'cancelled')
expire_ended(p, id, 'cancelled', '', ARGV[6], ARGV[7])
return 1
"""


class Dispatch:
    def __init__(self, client: redis.Redis, keys: Keys, node: str, *, max_queued: int, ttl: str = "") -> None:
        self.client = client
        self.ttl = ttl  # an ended turn's keys expire this long after its ending (``ttl_arg``)
        self.keys = keys
        self.node = node
        self.max_queued = max(1, max_queued)  # every start passes through the queue
        self.stream = f"{keys.prefix}:dispatch"
        self.group = f"{keys.prefix}:nodes"
        self._enqueue = client.register_script(_ENQUEUE)
        self._cancel = client.register_script(_CANCEL_QUEUED)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- any node: the queue ------------------------------------------------------------

    def enqueue(self, info: TurnInfo, input_json: bytes, multitask: str) -> list[str]:
        """Queue a start; the session's unended turns it waits for (``interrupt``: cancel them).

        The session policy holds cluster-wide: ``reject`` refuses while any turn of the
        session is unended anywhere; ``enqueue`` and ``interrupt`` queue the turn behind them.
        """
        turn_id = info.turn_id
        with translated():
            reply: Any = self._enqueue(
                keys=[self.stream, self.keys.turn(turn_id), self.keys.turns],
                args=[self.max_queued, turn_id, self.keys.prefix, msgspec.json.encode(info),
                      info.session_id or "", input_json, multitask])
        verdict = reply[0].decode()
        if verdict == "busy":
            active = reply[1].decode()
            raise SessionBusy(f"session {info.session_id!r} has an active turn ({active})", active)
        if verdict == "full":
            raise QueueFull(f"the cluster's queue is full ({self.max_queued} turns wait for a node)")
        return [x for x in reply[1].decode().split(",") if x]

    def position(self, turn_id: str) -> int | None:
        """1-based place in the cluster's queue (entries before it are waiting or being taken)."""
        with translated():
            qid: Any = self.client.hget(self.keys.turn(turn_id), "qid")
            if qid is None:
                return None
            ahead: Any = self.client.xrange(self.stream, "-", qid, count=self.max_queued + 1)
        return len(ahead) or None

    def cancel_queued(self, queued: TurnInfo, reason: str | None) -> TurnInfo | None:
        """End a turn no node has taken yet: ``cancelled``, with its two events (None: it was taken)."""
        info = info_copy(queued)
        now_ms = time.time_ns() // 1_000_000
        thread = info.session_id or info.turn_id
        started = event_line(1, ev.RunStarted(thread_id=thread, run_id=info.turn_id, timestamp=now_ms))
        finished = event_line(2, ev.RunFinished(thread_id=thread, run_id=info.turn_id,
                                                outcome=ev.Outcome("cancelled"), timestamp=now_ms))
        info.status, info.last_seq, info.ended_at = TurnStatus.CANCELLED, 2, time.time()
        info.cancel_requested, info.cancel_reason, info.queue_position = True, reason, None
        with translated():
            ended = self._cancel(keys=[self.keys.turn(info.turn_id), self.keys.events(info.turn_id)],
                                 args=[self.keys.prefix, info.turn_id, msgspec.json.encode(info), started, finished,
                                       info.session_id or "", self.ttl])
        return info if ended else None

    # -- this node: taking work -----------------------------------------------------------

    def start(self, *, take: Callable[[str, bytes], None], free: Callable[[], int],
              wait_free: Callable[[float], None]) -> None:
        with translated():
            self._ensure_group()
        self._take, self._free, self._wait_free = take, free, wait_free
        self._thread = threading.Thread(target=self._run, name="runnerd-dispatch", daemon=True)
        self._thread.start()

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def holds(self) -> int:
        """Entries this node read and has not acknowledged (a peer claims them once it has left)."""
        with translated():
            pending: Any = self.client.xpending_range(self.stream, self.group, "-", "+", 1,
                                                      consumername=self.node)
        return len(pending)

    def claim_from(self, peer: str) -> int:
        """Entries a dead node read but never took become this node's (read again by ``_run``)."""
        with translated():
            pending: Any = self.client.xpending_range(self.stream, self.group, "-", "+", 1000, consumername=peer)
            ids = [p["message_id"] for p in pending]
            if ids:
                self.client.xclaim(self.stream, self.group, self.node, 0, ids)
            self.client.xgroup_delconsumer(self.stream, self.group, peer)
        return len(ids)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except redis.RedisError as exc:
                log.warning("dispatch_read_failed", error=str(exc))
                if "NOGROUP" in str(exc):  # Redis came back empty (no persistence)
                    try:
                        self._ensure_group()
                        continue
                    except redis.RedisError:
                        pass
                self._stopping.wait(RETRY_S)
            except Exception:  # noqa: BLE001 - the dispatcher must outlive one bad entry
                log.exception("dispatch_step_failed")
                self._stopping.wait(RETRY_S)

    def _step(self) -> None:
        # Our own unacknowledged entries first: claimed from a dead node, left by our last
        # run, or deferred (their session's earlier turns have not ended yet).
        mine: Any = self.client.xreadgroup(self.group, self.node, {self.stream: "0"}, count=100)
        deferred = sum(not self._handle(entry_id, fields) for entry_id, fields in (mine[0][1] if mine else []))
        room = self._free()
        if room <= 0:
            self._wait_free(1.0)
            return
        new: Any = self.client.xreadgroup(self.group, self.node, {self.stream: ">"}, count=room,
                                          block=DEFERRED_BLOCK_MS if deferred else BLOCK_MS)
        for entry_id, fields in new[0][1] if new else []:
            self._handle(entry_id, fields)

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Take one entry (and acknowledge it); False: it stays pending for a later step."""
        if self._stopping.is_set():
            return False  # left pending: a live node claims it once this one has left
        if fields:  # an entry deleted while pending comes back without fields
            waits = [x for x in fields.get(b"after", b"").decode().split(",") if x]
            if waits and not self._all_ended(waits):
                return False
            self._take(fields[b"turn"].decode(), fields[b"input"])
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()
        return True

    def _all_ended(self, turn_ids: list[str]) -> bool:
        pipe = self.client.pipeline(transaction=False)
        for turn_id in turn_ids:
            pipe.hget(self.keys.turn(turn_id), "status")
        statuses: list[Any] = pipe.execute()
        return all(s is None or TurnStatus(s.decode()).ended for s in statuses)
