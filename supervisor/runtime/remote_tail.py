"""The live tail of turns another node owns: one blocking XREAD per node, fanned out locally.

Every remote turn a local reader follows is one stream in the same ``XREAD
BLOCK``, read from the cursor the local ``StreamRegistry`` holds, and its new
entries are appended there, so SSE writers, iterators and ``wait`` treat it
like a local turn: one Redis connection per node, never one per subscriber.
A follow added while the read blocks wakes it through this node's wake-up
stream (``<p>:node:<n>:wake``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from supervisor.errors import UnknownTurn
from supervisor.logs import get_logger
from supervisor.runtime.registry import StreamRegistry
from supervisor.storage.lines import line_seq
from supervisor.storage.redis_common import Keys

log = get_logger("runnerd.remote_tail")
BLOCK_MS = 5000  # a read returns at least this often (stop requests, dropped follows)
RETRY_S = 1.0  # after a failed read (Redis restarting): wait this long, then read again
COUNT = 1000  # entries per stream per read


class RemoteTail:
    def __init__(self, client: redis.Redis, keys: Keys, node: str, registry: StreamRegistry,
                 is_local: Callable[[str], bool]) -> None:
        self.client = client
        self.is_local = is_local  # a followed turn this node took from the queue: its relay feeds it
        self.keys = keys
        self.registry = registry
        self._wake_key = keys.wake(node)
        self._wake_last = "0-0"
        self._followed: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runnerd-remote-tail", daemon=True)
        self.delivered = 0  # events appended to the registry from other nodes

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)

    def follow(self, turn_id: str) -> None:
        """Tail ``turn_id`` from the registry's cursor until its terminal event."""
        with self._lock:
            if turn_id in self._followed:
                return
            self._followed.add(turn_id)
        self._wake()

    @property
    def followed(self) -> int:
        with self._lock:
            return len(self._followed)

    def _wake(self) -> None:
        try:
            self.client.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=False)
        except redis.RedisError as exc:
            log.warning("remote_tail_wake_failed", error=str(exc))  # the read returns within BLOCK_MS anyway

    def _streams(self) -> dict[Any, Any]:
        """The read's cursors: the registry's last seq of each turn still followed."""
        streams: dict[Any, Any] = {self._wake_key: self._wake_last}
        with self._lock:
            followed = list(self._followed)
        for turn_id in followed:
            try:
                last, ended = self.registry.position(turn_id)
            except UnknownTurn:  # retention removed it
                ended, last = True, 0
            if ended or self.is_local(turn_id):
                with self._lock:
                    self._followed.discard(turn_id)
                continue
            streams[self.keys.events(turn_id)] = f"{last}-0"
        return streams

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                reply: Any = self.client.xread(self._streams(), count=COUNT, block=BLOCK_MS)
            except redis.RedisError as exc:
                log.warning("remote_tail_read_failed", error=str(exc))
                self._stopping.wait(RETRY_S)
                continue
            for key, entries in reply or []:
                name = key.decode()
                if name == self._wake_key:
                    self._wake_last = entries[-1][0].decode()
                else:
                    self._deliver(name.rsplit("{", 1)[1].rstrip("}"), entries)

    def _deliver(self, turn_id: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        # Entries exist only after the owner stored them, and a node takes a turn into its
        # table before its relay stores anything: a turn local now was local when they were written.
        if self.is_local(turn_id):
            return
        try:
            last, ended = self.registry.position(turn_id)
        except UnknownTurn:
            return
        lines: list[bytes] = []
        end = False
        for _id, fields in entries:
            line = fields[b"l"]
            if line_seq(line) != last + len(lines) + 1:
                continue  # already delivered (the registry is the cursor): never a duplicate
            lines.append(line)
            end = b"e" in fields
            if end:
                break
        if lines and not ended:
            self.registry.append(turn_id, lines, end=end)
            self.delivered += len(lines)

