"""The relay: one thread for all turns.

It waits (``multiprocessing.connection.wait``) on every turn's pipe and process
sentinel plus a wake-up pipe, numbers events (``seq``), appends them to the
event log and then the registry, runs cancel escalation and timeouts, and ends
each turn with exactly one terminal event after its pipe is fully drained and
its processes are gone. It owns the table of turns: other threads post
commands (gunicorn's queue plus wake-up byte) and read snapshots.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import msgspec
import psutil
import structlog

from ipc import events as ev
from ipc.protocol import TurnSpec
from ipc.wire import Batch, Done, FrameReader, Ready
from supervisor.config import LimitsConfig
from supervisor.storage.eventlog import EventLog
from supervisor.runtime.proctree import Escalation, TurnTree
from supervisor.runtime.limits import LimitGuard
from supervisor.runtime.capture import OutputSink
from supervisor.runtime.registry import StreamRegistry
from supervisor.runtime.spawn import Spawned, exitcode
from supervisor.turns import Ending, Intent, TurnInfo, TurnStatus, classify

log = structlog.get_logger("runnerd.relay")

_SUPERVISOR_ONLY = (ev.RunStarted, ev.RunFinished, ev.RunError)
_event_decoder: msgspec.json.Decoder[ev.Event] = msgspec.json.Decoder(ev.Event)
REAP_TIMEOUT_S = 2.0  # after the root exits, how long leftovers may take to die
REAP_POLL_S = 0.002
EXIT_POLL_S = 0.05  # exit checks without a usable sentinel (see _poll_exits)
HOUSEKEEPING_S = 1.0


@dataclass
class Live:
    """A turn whose process may still exist; mutated by the relay thread only."""

    info: TurnInfo
    spec: TurnSpec
    spawned: Spawned
    reader: FrameReader
    tree: TurnTree | None = None
    log: Any = None
    intent: Intent = Intent.NONE  # written by cancel() *before* any signal
    intent_message: str = ""
    done: Done | None = None
    timeout_at: float | None = None
    term_at: float | None = None
    kill_at: float | None = None
    exited: bool = False
    reap_until: float | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    output: OutputSink | None = None
    watch_root: bool = False  # the forkserver died: liveness from psutil, not the sentinel
    finished: bool = False
    leftovers: int | None = None  # processes the exit's sweep found still alive
    event_bytes: int = 0
    next_poll: float = 0.0


class Relay:
    def __init__(
        self,
        *,
        eventlog: EventLog,
        registry: StreamRegistry,
        escalation: Escalation,
        max_event_bytes: int,
        ended_memory_s: float = 30.0,
        on_released: Callable[[str], None] | None = None,
        on_ended: Callable[[TurnInfo], None] | None = None,
        limits: LimitsConfig | None = None,
        poll_exit: bool = False,
    ) -> None:
        self.limits = limits or LimitsConfig()
        self.guard = LimitGuard(self.limits)
        self.poll_exit = poll_exit
        # on_released: the turn's processes are gone (frees its slot), called
        # before the terminal event is visible; on_ended: after it is durable.
        self.on_released = on_released
        self.ended_memory_s = ended_memory_s
        self.eventlog = eventlog
        self.registry = registry
        self.escalation = escalation
        self.max_event_bytes = max_event_bytes
        self.on_ended = on_ended
        self.on_status: Callable[[str], None] | None = None  # a status changed (here: to running)
        self.lock = threading.Lock()  # guards the two tables below
        self.live: dict[str, Live] = {}
        self.past: dict[str, TurnInfo] = {}
        self._commands: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()  # last loop iteration; the daemon's watchdog reads it
        self.events_relayed = 0
        self.lag_s = 0.0  # child timestamp -> relay commit, of the latest batch
        self._next_housekeeping = 0.0

    # -- other threads --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="runnerd-relay", daemon=True)
        self._thread.start()

    def add(self, live: Live) -> None:
        with self.lock:
            self.live[live.info.turn_id] = live
        self._post("add", live.info.turn_id)

    def post_escalate(self, turn_id: str) -> None:
        self._post("escalate", turn_id)

    def stop(self, timeout: float | None = None) -> None:
        """Stop after every live turn has ended (callers cancel them first)."""
        self._stopping = True
        self._post("stop", "")
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _post(self, kind: str, turn_id: str) -> None:
        self._commands.put((kind, turn_id))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - one bad step must not stall every turn
                log.exception("relay_step_failed")
                time.sleep(0.05)  # no hot loop if the fault repeats; the watchdog sees the heartbeat
            if self._stopping and not self.live:
                break
        os.close(self._wake_r)
        os.close(self._wake_w)

    def step(self) -> None:
        """One iteration: wait, read, decide. Never blocks past the next deadline."""
        now = time.monotonic()
        self.heartbeat = now
        handles: dict[int, tuple[Live, str]] = {}
        lives = list(self.live.values())  # other threads insert while we iterate
        for live in lives:
            if not live.reader.eof and live.reader.error is None:
                handles[live.reader.fd] = (live, "pipe")
            if not live.exited and not live.watch_root:
                handles[live.spawned.process.sentinel] = (live, "exit")
            if live.output is not None and not live.output.eof:
                handles[live.output.fd] = (live, "output")
        ready = wait([self._wake_r, *handles], self._timeout(now))
        self._drain_commands()
        for obj in ready:
            if obj == self._wake_r:
                continue
            live, kind = handles[obj]  # type: ignore[index]
            if live.finished:
                continue  # its fds are closed (their numbers may already be reused)
            if kind == "pipe":
                self._pump(live)
            elif kind == "output":
                assert live.output is not None
                live.output.drain()
            else:
                self._on_exit(live)
        self._poll_exits()
        now = time.monotonic()
        for live in list(self.live.values()):
            self._check_deadlines(live, now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self.registry.evict_ended(self.ended_memory_s)

    def _timeout(self, now: float) -> float:
        soonest = now + HOUSEKEEPING_S
        for live in list(self.live.values()):
            if live.reap_until is not None:
                return REAP_POLL_S
            if not live.exited and (live.watch_root or self.poll_exit):
                soonest = min(soonest, now + EXIT_POLL_S)
            poll = live.next_poll if self._watched() and not live.exited else None
            for t in (live.timeout_at, live.term_at, live.kill_at, poll):
                if t is not None and t < soonest:
                    soonest = t
        return max(0.0, soonest - now)

    def _watched(self) -> bool:
        return self.guard.watches_tree

    def _drain_commands(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                kind, turn_id = self._commands.get_nowait()
            except queue.Empty:
                return
            live = self.live.get(turn_id)
            if live is None:
                continue
            if kind == "add":
                self._on_add(live)
            elif kind == "escalate":
                self._schedule_escalation(live)

    # -- turn events --------------------------------------------------------------

    def _on_add(self, live: Live) -> None:
        proc = live.spawned.process
        live.log = log.bind(turn_id=live.info.turn_id, agent=live.info.agent)
        try:
            ctime = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            ctime = 0.0  # already gone; the tree then only finds what carries its id
        live.tree = TurnTree(live.info.turn_id, proc.pid, ctime)
        live.info.pid = proc.pid
        live.info.pid_create_time = ctime
        if live.info.timeout_s is not None:
            live.timeout_at = time.monotonic() + live.info.timeout_s
        if live.intent is not Intent.NONE:  # cancelled before we saw it
            self._schedule_escalation(live)
        try:
            self.eventlog.write_meta(live.info, durable=False)  # pid + create time: what recovery needs
        except OSError as exc:
            live.log.error("metadata_write_failed", error=str(exc))
        live.log.info("turn_spawned", pid=proc.pid)

    def _pump(self, live: Live) -> None:
        frames = live.reader.read()
        lines: list[bytes] = []
        seq = live.info.last_seq
        problem: str | None = None
        started = False
        for frame in frames:
            if isinstance(frame, Batch):
                for data in frame.events:
                    problem = self._invalid(data) or self._over_limit(live, seq, len(data))
                    if problem:
                        break
                    seq += 1
                    live.event_bytes += len(data)
                    lines.append(b'{"seq":%d,' % seq + data[1:])
                if problem:
                    live.reader.error = problem  # stop reading this child
                    break
            elif isinstance(frame, Ready):
                if live.info.status is TurnStatus.STARTING:
                    seq += 1
                    lines.append(self._started_line(live, seq))
                    started = True
            elif isinstance(frame, Done):
                live.done = frame
        if lines:
            self._commit(live, lines, seq)
        if started and self.on_status is not None:
            self.on_status(live.info.turn_id)
        if live.reader.error and live.intent is Intent.NONE:
            if live.reader.error.startswith("limit:"):
                live.intent = Intent.LIMIT
                live.intent_message = live.reader.error[6:].strip()
            else:
                live.intent = Intent.PROTOCOL
                live.intent_message = f"protocol error from the turn's process: {live.reader.error}"
            live.log.warning("turn_stopped", reason=live.intent_message)
            self._signal(live, signal.SIGKILL)

    def _invalid(self, data: bytes) -> str | None:
        if len(data) > self.max_event_bytes:
            return f"event of {len(data)} bytes over the {self.max_event_bytes}-byte cap"
        try:
            event = _event_decoder.decode(data)
        except msgspec.DecodeError as exc:
            return f"invalid event: {exc}"
        if isinstance(event, _SUPERVISOR_ONLY):
            return f"{type(event).__name__} may only come from the supervisor"
        if event.seq is not msgspec.UNSET:
            return "seq is assigned by the supervisor, never by the turn"
        if not data.startswith(b'{"type":"'):
            return "event not encoded by the worker (type must come first)"
        if isinstance(event.timestamp, int):
            self.lag_s = max(0.0, time.time() - event.timestamp / 1000)
        return None

    def _over_limit(self, live: Live, seq: int, size: int) -> str | None:
        """The prefix ``limit:`` tells _pump this is a limit, not a protocol error."""
        problem = self.guard.check_event(seq + 1, live.event_bytes, size)
        return f"limit: {problem}" if problem else None

    def _poll_tree(self, live: Live, now: float) -> None:
        """Memory and process count of the whole tree, every ``limits.poll_s``."""
        live.next_poll = now + self.limits.poll_s
        if live.tree is None or live.intent is not Intent.NONE:
            return
        verdict = self.guard.check_tree(live.tree.processes())
        if verdict is not None:
            live.intent, live.intent_message = verdict
            live.log.warning("turn_stopped", reason=live.intent_message)
            self._signal(live, signal.SIGKILL)

    def _started_line(self, live: Live, seq: int) -> bytes:
        live.info.status = TurnStatus.RUNNING
        live.info.started_at = time.time()
        event = ev.RunStarted(thread_id=live.spec.thread_id, run_id=live.info.turn_id,
                              timestamp=time.time_ns() // 1_000_000)
        return b'{"seq":%d,' % seq + ev.encode_event(event)[1:]

    def _commit(self, live: Live, lines: list[bytes], seq: int, *, end: bool = False) -> None:
        # Log first: everything a reader can see in memory is already on disk.
        try:
            self.eventlog.append(live.info.turn_id, lines)
        except OSError as exc:
            # No durable history: this turn fails (its events stay in memory), others go on.
            live.log.error("event_log_write_failed", error=str(exc))
            self.registry.pin(live.info.turn_id)  # memory is now the only copy of what follows
            if live.intent in (Intent.NONE, Intent.CANCEL, Intent.TIMEOUT) and not end:
                live.intent = Intent.STORAGE
                live.intent_message = f"the event log could not be written: {exc.strerror or exc}"
                self._signal(live, signal.SIGKILL)
        with self.lock:  # status may run ahead of memory, never behind: cursors validate against it
            live.info.last_seq = seq
        self.events_relayed += len(lines)  # counted before any reader can see them
        self.registry.append(live.info.turn_id, lines, end=end)

    def _on_exit(self, live: Live) -> None:
        proc = live.spawned.process
        if live.watch_root:  # the forkserver is gone: the root is our (adopted) child now
            code = self._reap_root(live)
        else:
            code = exitcode(proc)
            deadline = time.monotonic() + 1.0
            while code is None and time.monotonic() < deadline:
                # spawn: the sentinel can fire a moment before the zombie exists
                time.sleep(0.001)
                code = exitcode(proc)
            if code == 255 and self._root_alive(live):
                # The forkserver died (its sentinel reads EOF as 255), not the turn:
                # keep the turn and watch its root directly.
                live.watch_root = True
                live.log.warning("forkserver_gone_watching_root")
                return
        live.exited = True
        self._pump(live)  # everything the child wrote before dying is in the pipe now
        live.info.exit_code = code
        if code is not None and code < 0:
            live.info.signal = -code
        # The turn is over; whatever it left running goes now.
        live.reap_until = time.monotonic() + REAP_TIMEOUT_S
        live.term_at = live.kill_at = live.timeout_at = None
        # Finished in _check_deadlines, after this step's ready list: finishing here
        # would close fds that list may still name (and a new turn may reuse).
        live.leftovers = live.tree.sweep(signal.SIGKILL) if live.tree is not None else 0

    def _root_alive(self, live: Live) -> bool:
        tree = live.tree
        if tree is None:
            return False
        try:
            p = psutil.Process(tree.root_pid)
            return abs(p.create_time() - tree.root_create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _reap_root(self, live: Live) -> int | None:
        """Exit code of a root we adopted (subreaper), or None if someone else reaped it."""
        assert live.tree is not None
        try:
            pid, status = os.waitpid(live.tree.root_pid, os.WNOHANG)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status) if pid else None

    def _poll_exits(self) -> None:
        """Exit checks that do not rely on a sentinel: a root watched after its
        forkserver died, and spawn-mode roots (a forked grandchild inherits the
        sentinel pipe, so it would only fire when the grandchild exits too)."""
        for live in list(self.live.values()):
            if live.exited:
                continue
            if live.watch_root:
                if not self._root_alive(live):
                    self._on_exit(live)
            elif self.poll_exit and exitcode(live.spawned.process) is not None:
                self._on_exit(live)

    def _check_deadlines(self, live: Live, now: float) -> None:
        if self._watched() and not live.exited and now >= live.next_poll:
            self._poll_tree(live, now)
        if live.finished:
            return
        if live.reap_until is not None:
            if live.leftovers is not None:  # the exit's own sweep: no second scan
                remaining, live.leftovers = live.leftovers, None
            else:
                remaining = live.tree.sweep(signal.SIGKILL) if live.tree else 0
            if remaining and now < live.reap_until:
                return
            if remaining:
                live.log.error("turn_processes_survived", count=remaining)
            self._finish(live)
            return
        if live.timeout_at is not None and now >= live.timeout_at:
            live.timeout_at = None
            if live.intent is Intent.NONE:
                live.intent = Intent.TIMEOUT
                live.intent_message = f"the turn exceeded its {live.info.timeout_s:g} s timeout"
                live.spawned.token.set()
                live.log.info("turn_timeout")
                self._schedule_escalation(live)
        if live.term_at is not None and now >= live.term_at:
            live.term_at = None
            live.log.info("escalate_sigterm")
            self._signal(live, signal.SIGTERM)
        if live.kill_at is not None and now >= live.kill_at:
            live.kill_at = None
            live.log.info("escalate_sigkill")
            self._signal(live, signal.SIGKILL)

    def _schedule_escalation(self, live: Live) -> None:
        if live.exited or live.term_at is not None or live.kill_at is not None:
            return
        live.term_at, live.kill_at = self.escalation.deadlines(time.monotonic())

    def _signal(self, live: Live, sig: int) -> None:
        if live.tree is not None:
            live.tree.signal(sig)

    def end_unstarted(self, info: TurnInfo, spec: TurnSpec, ending: Ending) -> None:
        """End a turn that never got a process (cancelled in the queue, failed to spawn).

        Called from any thread: nobody else writes this turn's log.
        """
        started = ev.RunStarted(thread_id=spec.thread_id, run_id=info.turn_id,
                                timestamp=time.time_ns() // 1_000_000)
        lines = [b'{"seq":1,' + ev.encode_event(started)[1:],
                 b'{"seq":2,' + ev.encode_event(ending.terminal)[1:]]
        try:
            self.eventlog.append(info.turn_id, lines)
        except OSError as exc:
            log.error("event_log_write_failed", turn_id=info.turn_id, error=str(exc))
        with self.lock:
            info.last_seq = 2
            info.status = ending.status
            info.error = ending.error
            info.ended_at = time.time()
            self.past[info.turn_id] = info
        if self.on_released is not None:
            self.on_released(info.turn_id)
        self.registry.append(info.turn_id, lines, end=True)
        try:
            self.eventlog.close(info.turn_id)
            self.eventlog.write_meta(info)
        except OSError as exc:
            log.error("event_log_close_failed", turn_id=info.turn_id, error=str(exc))
        log.info("turn_ended", turn_id=info.turn_id, status=info.status.value,
                 error=info.error.code if info.error else None, last_seq=2)
        if self.on_ended is not None:
            self.on_ended(info)

    def _finish(self, live: Live) -> None:
        """Write the one terminal event, persist, and move the turn to the past."""
        if live.finished:
            return
        live.finished = True  # whatever fails below, the terminal event is written once
        info = live.info
        done = live.done
        ending = classify(
            turn_id=info.turn_id,
            thread_id=live.spec.thread_id,
            intent=live.intent,
            intent_message=live.intent_message,
            done_outcome=done.outcome if done else None,
            done_message=done.message if done else "",
            result_json=done.result if done else b"",
            exitcode=info.exit_code,
        )
        if live.output is not None:
            try:
                live.output.close()
            except OSError as exc:
                live.log.error("output_close_failed", error=str(exc))
            info.output_bytes, info.output_dropped = live.output.kept, live.output.dropped
        lines = []
        seq = info.last_seq
        if info.status is TurnStatus.STARTING:  # died before Ready: still one RUN_STARTED first
            seq += 1
            lines.append(self._started_line(live, seq))
        seq += 1
        lines.append(b'{"seq":%d,' % seq + ev.encode_event(ending.terminal)[1:])
        with self.lock:  # ended and its last seq together: a reader never sees one without the other
            info.status = ending.status
            info.error = ending.error
            info.ended_at = time.time()
            info.last_seq = seq
        if self.on_released is not None:
            self.on_released(info.turn_id)  # whoever sees the terminal event may start the next
        try:
            self._commit(live, lines, seq, end=True)
            try:
                self.eventlog.close(info.turn_id)
                self.eventlog.write_meta(info)
            except OSError as exc:
                live.log.error("event_log_close_failed", error=str(exc))
            live.reader.close()
            try:
                live.spawned.process.close()
            except ValueError:  # still "running" to multiprocessing: its sentinel is dropped anyway
                pass
        finally:
            with self.lock:  # never left in the live table, whatever failed above
                self.live.pop(info.turn_id, None)
                self.past[info.turn_id] = info
            live.ended.set()
        live.log.info("turn_ended", status=info.status.value,
                      error=info.error.code if info.error else None, last_seq=seq)
        if self.on_ended is not None:
            self.on_ended(info)

