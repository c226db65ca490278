"""The relay: one thread for all turns.

It waits (``multiprocessing.connection.wait``) on every turn's pipe (and ring
wake-up, ``ipc/ring.py``) and process sentinel plus a wake-up pipe, numbers
events (``seq``), appends them to the event log and then the registry, runs
cancel escalation and timeouts, and ends each turn with exactly one terminal
event after its pipe and ring are fully drained and its processes are gone. It owns the table of turns: other threads post
commands (gunicorn's queue plus wake-up byte) — start watching a turn, cancel
it — and read copies of turn records through the ``TurnTable``.
"""

from __future__ import annotations

import enum
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import psutil

from ipc import events as ev
from ipc.protocol import TurnSpec
from ipc.ring import RingReader
from ipc.wire import EVENT_PREFIX, Batch, Done, FrameReader, Ready
from supervisor.config import LimitsConfig
from supervisor.logs import get_logger
from supervisor.runtime.capture import OutputSink
from supervisor.runtime.cgroups import TurnCgroup
from supervisor.runtime.fdwatch import FdWatch
from supervisor.runtime.limits import LimitGuard
from supervisor.runtime.openitems import OpenItemTracker
from supervisor.runtime.proctree import TurnTree, zombie_child
from supervisor.runtime.registry import StreamRegistry
from supervisor.runtime.spawn import Spawned, exitcode
from supervisor.runtime.stoppolicy import SIGNALS, Breach, Due, StopPolicy
from supervisor.runtime.turntable import TurnTable
from supervisor.storage.lines import event_line, splice
from supervisor.storage.stores import EventStore, TurnStore
from supervisor.turns import Ending, Intent, TurnInfo, TurnStatus, classify, info_copy

log = get_logger("runnerd.relay")

_event_decoder: msgspec.json.Decoder[ev.Event] = msgspec.json.Decoder(ev.Event)
REAP_TIMEOUT_S = 2.0  # after the root exits, how long leftovers may take to die
REAP_POLL_S = 0.002
EXIT_POLL_S = 0.05  # exit checks without a usable sentinel (see _poll_exits)
HOUSEKEEPING_S = 1.0


class Phase(enum.Enum):
    RUNNING = "running"  # the root process may exist (spawned, or running the agent)
    REAPING = "reaping"  # the root exited: its leftovers are being killed and reaped
    FINISHED = "finished"  # the terminal event is written; its fds are closed


@dataclass
class Live:
    """A turn whose process may still exist; its live state is written by the relay thread only."""

    info: TurnInfo
    spec: TurnSpec
    spawned: Spawned
    reader: FrameReader | RingReader
    stop: StopPolicy
    tree: TurnTree | None = None
    log: Any = None
    done: Done | None = None
    phase: Phase = Phase.RUNNING
    reap_until: float = 0.0  # while REAPING: how long leftovers may take to die
    leftovers: int | None = None  # while REAPING: the exit's own sweep found these still alive
    output: OutputSink | None = None
    watch_root: bool = False  # the forkserver died: liveness from psutil, not the sentinel
    event_bytes: int = 0
    next_poll: float = 0.0
    cgroup: TurnCgroup | None = None  # kernel containment (supervisor.runtime.cgroups), when on
    # post_cancel sets the token before this thread records the cancel, so the agent's
    # answer may be read first. ``done_answers_cancel``: its Done frame was read after
    # the token was set (a cancel racing the agent's own end may win).
    cancel_posted_reason: str | None = None
    done_answers_cancel: bool = False


class Relay:
    def __init__(
        self,
        *,
        table: TurnTable,
        events: EventStore,
        records: TurnStore,
        registry: StreamRegistry,
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
        self.table = table
        self.events = events
        self.records = records
        self.registry = registry
        self.max_event_bytes = max_event_bytes
        self.on_ended = on_ended
        self.open_items = OpenItemTracker()  # closed before each terminal event
        self.on_status: Callable[[str], None] | None = None  # a status changed (here: to running)
        self._commands: queue.SimpleQueue[tuple[str, str, str | None, threading.Event | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ended: queue.SimpleQueue[Live | None] = queue.SimpleQueue()  # terminal event written, not yet durable
        self._closer: threading.Thread | None = None
        self.heartbeat = time.monotonic()  # last loop iteration; the daemon's watchdog reads it
        self.events_relayed = 0
        self.lag_s = 0.0  # child timestamp -> relay commit, of the latest batch
        self._next_housekeeping = 0.0
        self._fds: FdWatch[Live] = FdWatch(self._wake_r)
        self._due = 0.0  # the soonest deadline of any live turn: only then are all of them looked at

    # -- other threads --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="runnerd-relay", daemon=True)
        self._closer = threading.Thread(target=self._close_ended, name="runnerd-closer", daemon=True)
        self._thread.start()
        self._closer.start()

    def add(self, live: Live) -> None:
        live.log = log.bind(turn_id=live.info.turn_id, agent=live.info.agent)  # a cancel may come before "add"
        self.table.go_live(live)
        self._post("add", live.info.turn_id)

    def post_cancel(self, turn_id: str, reason: str | None) -> threading.Event:
        """Cancel a live turn: the relay thread records the intent; the token is set
        here, so the agent starts stopping without waiting for the relay to wake.

        The turn is marked before the token is set: when the agent's answer (its
        ``Done``, its exit) is read in a step whose commands were drained before this
        one was queued, the relay still records the cancel (``_pump``, ``_finish``).
        The returned event is set once the relay has handled the request.
        """
        ack = threading.Event()
        self._commands.put(("cancel", turn_id, reason, ack))
        live = self.table.live(turn_id)
        if live is not None and live.phase is Phase.RUNNING:
            live.cancel_posted_reason = reason
            live.spawned.token.set()  # before the wake-up: the relay's wake would take the GIL first
        self._wake()
        return ack

    def stop(self, timeout: float | None = None) -> None:
        """Stop after every live turn has ended (callers cancel them first)."""
        self._stopping = True
        self._post("stop", "")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # still draining a turn: its wake-up pipe stays open
        if self._closer is not None:  # what the relay finished is made durable before we return
            self._ended.put(None)
            self._closer.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if self._closer.is_alive():
                return
        if self._wake_w >= 0:  # only here: a late _post must never write to a closed (reused) fd
            self._fds.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _post(self, kind: str, turn_id: str, arg: str | None = None, ack: threading.Event | None = None) -> None:
        self._commands.put((kind, turn_id, arg, ack))
        self._wake()

    def _wake(self) -> None:
        if self._wake_w < 0:
            return  # stopped: nothing reads commands any more
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
            if self._stopping and not self.table.running:
                break

    def step(self) -> None:
        """One iteration: wait, read, decide. Never blocks past the next deadline.

        Per event it touches only the turns that are ready; all live turns are
        looked at only when one of their deadlines is due.
        """
        now = time.monotonic()
        self.heartbeat = now
        ready, woken = self._fds.wait(max(0.0, min(self._due, self._next_housekeeping) - now))
        touched = self._drain_commands(woken)
        for live, kind in ready:
            if live.phase is Phase.FINISHED:
                continue
            touched[live.info.turn_id] = live
            if kind == "pipe":
                self._pump(live)
            elif kind == "output":
                assert live.output is not None
                live.output.drain()
            elif kind == "cgroup":
                assert live.cgroup is not None
                live.cgroup.drain_events()
                self._kernel_breach(live)
            else:
                self._on_exit(live)
        now = time.monotonic()
        full = now >= self._due
        if full:
            touched.update((live.info.turn_id, live) for live in self._poll_exits())
        for turn_id, live in touched.items():
            if live.phase is not Phase.FINISHED:
                self._fds.sync(turn_id, live, self._handles(live))
        due = math.inf if full else self._due
        for live in self.table.lives() if full else list(touched.values()):
            self._check_deadlines(live, now)
            due = min(due, self._next_due(live, now))
        self._due = due
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self.registry.evict_ended(self.ended_memory_s)
            for live in self.table.lives():  # a ring's safety net: a lost wake-up waits at most this tick
                if live.phase is not Phase.FINISHED and live.reader.pending():
                    self._pump(live)

    def _handles(self, live: Live) -> dict[int, str]:
        """What the relay waits on for this turn now: fd -> kind."""
        handles: dict[int, str] = {}
        if not live.reader.eof and live.reader.error is None:
            for fd in live.reader.fds:  # the pipe; with a ring, its eventfd too
                handles[fd] = "pipe"
        if live.phase is Phase.RUNNING and not live.watch_root:
            handles[live.spawned.process.sentinel] = "exit"
        if live.output is not None and not live.output.eof:
            handles[live.output.fd] = "output"
        if live.cgroup is not None and live.phase is Phase.RUNNING:
            for fd in live.cgroup.watch:
                handles[fd] = "cgroup"
        return handles

    def _next_due(self, live: Live, now: float) -> float:
        """When this turn next needs the relay without any of its fds being ready."""
        if live.phase is Phase.REAPING:
            return now + REAP_POLL_S
        if live.phase is not Phase.RUNNING:
            return math.inf
        soonest = now + EXIT_POLL_S if live.watch_root or self.poll_exit else math.inf
        if self._watched():
            soonest = min(soonest, live.next_poll)
        deadline = live.stop.next_deadline()
        return soonest if deadline is None else min(soonest, deadline)

    def _watched(self) -> bool:
        return self.guard.watches_tree

    def _drain_commands(self, woken: bool) -> dict[str, Live]:
        """Run the posted commands; the live turns they touched. ``woken``: the
        wake-up pipe was ready (else it is not read: no failing read per event)."""
        touched: dict[str, Live] = {}
        if woken:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        while not self._commands.empty():  # this thread is the only consumer
            kind, turn_id, arg, ack = self._commands.get_nowait()
            live = self.table.live(turn_id)
            if live is not None and kind == "add":
                touched[turn_id] = live
                self._on_add(live)
            elif live is not None and kind == "cancel":
                touched[turn_id] = live
                self._on_cancel(live, arg)
            if ack is not None:
                ack.set()
        return touched

    # -- turn events --------------------------------------------------------------

    def _on_add(self, live: Live) -> None:
        proc = live.spawned.process
        try:
            ctime = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            ctime = 0.0  # already gone; the tree then only finds what carries its id
        live.tree = TurnTree(live.info.turn_id, proc.pid, ctime)
        with self.table.lock:
            live.info.pid = proc.pid
            live.info.pid_create_time = ctime
            record = info_copy(live.info)
        if live.info.timeout_s is not None:
            live.stop.timeout_at = time.monotonic() + live.info.timeout_s
        if live.info.cancel_requested:  # cancelled while it was being spawned
            self._on_cancel(live, live.info.cancel_reason)
        try:
            self.records.put(record, durable=False)  # pid + create time: what recovery needs
        except OSError as exc:
            live.log.error("metadata_write_failed", error=str(exc))
        live.log.info("turn_spawned", pid=proc.pid)

    def _on_cancel(self, live: Live, reason: str | None) -> None:
        # Once the agent has reported its end (or exited) the outcome is decided, unless
        # that report answers this cancel's token, which post_cancel set already.
        if live.phase is not Phase.RUNNING or (live.done is not None and not live.done_answers_cancel):
            return
        # Intent first, then the token: the reaper must see a cancel, not a crash.
        if self._record_cancel(live, reason):
            live.spawned.token.set()
            live.log.info("turn_cancel_requested", reason=reason)

    def _record_cancel(self, live: Live, reason: str | None) -> bool:
        if not live.stop.request(Intent.CANCEL, reason or "", time.monotonic()):
            return False
        with self.table.lock:
            live.info.cancel_requested = True
            live.info.cancel_reason = reason
        return True

    def _pump(self, live: Live) -> None:
        frames = live.reader.read()
        lines: list[bytes] = []
        seq = live.info.last_seq
        problem: str | Breach | None = None
        started = False
        for frame in frames:
            if isinstance(frame, Batch):
                for data in frame.events:
                    # The limit first: _invalid follows what the turn opens, so only for an accepted event.
                    problem = self.guard.check_event(seq + 1, live.event_bytes, len(data)) or self._invalid(live, data)
                    if problem:
                        break
                    seq += 1
                    live.event_bytes += len(data)
                    lines.append(splice(seq, data))
                if problem:
                    live.reader.error = problem if isinstance(problem, str) else problem.message
                    break  # stop reading this child
            elif isinstance(frame, Ready):
                if live.info.status is TurnStatus.STARTING:
                    seq += 1
                    lines.append(self._started_line(live, seq))
                    started = True
            elif isinstance(frame, Done):
                live.done = frame
                live.done_answers_cancel = live.spawned.token.is_set()
        if lines:
            self._commit(live, lines, seq)
        if started and self.on_status is not None:
            self.on_status(live.info.turn_id)
        if isinstance(problem, Breach):
            self._stop_now(live, problem.intent, problem.message)
        elif live.reader.error and not live.stop.stopping:  # ours above, or the frame reader's
            self._stop_now(live, Intent.PROTOCOL, f"protocol error from the turn's process: {live.reader.error}")

    def _invalid(self, live: Live, data: bytes) -> str | None:
        if len(data) > self.max_event_bytes:
            return f"event of {len(data)} bytes over the {self.max_event_bytes}-byte cap"
        try:
            event = _event_decoder.decode(data)
        except msgspec.DecodeError as exc:
            return f"invalid event: {exc}"
        if isinstance(event, ev.SUPERVISOR_ONLY):
            return f"{type(event).__name__} may only come from the supervisor"
        if event.seq is not msgspec.UNSET:
            return "seq is assigned by the supervisor, never by the turn"
        if not data.startswith(EVENT_PREFIX):
            return "event not encoded by the worker (type must come first)"
        if isinstance(event.timestamp, int):
            self.lag_s = max(0.0, time.time() - event.timestamp / 1000)
        self.open_items.follow(live.info.turn_id, event)
        return None

    def _poll_tree(self, live: Live, now: float) -> None:
        """Memory and process count of the whole tree, every ``limits.poll_s``."""
        live.next_poll = now + self.limits.poll_s
        if live.cgroup is not None:  # the kernel enforces; this reads its counters (v1 pids.events has no event)
            self._kernel_breach(live)
            return
        if live.tree is None or live.stop.stopping:
            return
        breach = self.guard.check_tree(live.tree.processes())
        if breach is not None:
            self._stop_now(live, breach.intent, breach.message)

    def _stop_now(self, live: Live, intent: Intent, message: str) -> None:
        """A breach: record it (unless an earlier intent won) and kill at once."""
        if live.stop.request(intent, message, time.monotonic()):
            live.log.warning("turn_stopped", reason=message)
        self._signal(live, signal.SIGKILL)

    def _kernel_breach(self, live: Live) -> None:
        """An OOM kill or a refused fork in the turn's cgroup ends the whole turn."""
        assert live.cgroup is not None
        if live.stop.stopping:
            return
        breach = live.cgroup.breach()
        if breach is not None and live.stop.request(breach.intent, breach.message, time.monotonic()):
            live.log.warning("turn_stopped", reason=breach.message, by="kernel")  # recorded before the kill
            if live.phase is Phase.RUNNING:
                self._signal(live, signal.SIGKILL)

    def _started_line(self, live: Live, seq: int) -> bytes:
        with self.table.lock:
            live.info.status = TurnStatus.RUNNING
            live.info.started_at = time.time()
        event = ev.RunStarted(thread_id=live.spec.thread_id, run_id=live.info.agui_run_id,
                              timestamp=time.time_ns() // 1_000_000)
        return event_line(seq, event)

    def _commit(self, live: Live, lines: list[bytes], seq: int, *, end: bool = False) -> None:
        # Log first: everything a reader can see in memory is already on disk.
        try:
            self.events.append(live.info.turn_id, lines)
        except OSError as exc:
            # No durable history: this turn fails (its events stay in memory), others go on.
            live.log.error("event_log_write_failed", error=str(exc))
            self.registry.pin(live.info.turn_id)  # memory is now the only copy of what follows
            if not end:
                self._stop_now(live, Intent.STORAGE, f"the event log could not be written: {exc.strerror or exc}")
        with self.table.lock:  # status may run ahead of memory, never behind: cursors validate against it
            live.info.last_seq = seq
        self.events_relayed += len(lines)  # counted before any reader can see them
        self.registry.append(live.info.turn_id, lines, end=end)

    def _on_exit(self, live: Live) -> None:
        proc = live.spawned.process
        if live.watch_root:  # the forkserver is gone: the root is our (adopted) child now
            reaped, code = self._reap_root(live)
            if not reaped:
                return  # looked at again on the next exit poll
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
        live.phase = Phase.REAPING
        self._pump(live)  # everything the child wrote before dying is in the pipe or the ring now
        with self.table.lock:
            live.info.exit_code = code
            if code is not None and code < 0:
                live.info.signal = -code
        # The turn is over; whatever it left running goes now.
        live.reap_until = time.monotonic() + REAP_TIMEOUT_S
        live.stop.disarm()
        if live.cgroup is not None:
            self._kernel_breach(live)  # an OOM kill of the root may beat its event here
        # Finished in _check_deadlines, after this step's ready list: finishing here
        # would close fds that list may still name (and a new turn may reuse).
        live.leftovers = self._sweep(live)

    def _root_alive(self, live: Live) -> bool:
        tree = live.tree
        if tree is None:
            return False
        try:
            p = psutil.Process(tree.root_pid)
            return abs(p.create_time() - tree.root_create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _reap_root(self, live: Live) -> tuple[bool, int | None]:
        """``(reaped, exit code)`` of a root we adopted (subreaper); ``(True, None)`` if
        someone else reaped it. Not reaped yet while a zombie leader's other threads
        (the child's cancel watcher) are still being torn down."""
        assert live.tree is not None
        try:
            pid, status = os.waitpid(live.tree.root_pid, os.WNOHANG)
        except ChildProcessError:
            return True, None
        return (True, os.waitstatus_to_exitcode(status)) if pid else (False, None)

    def _poll_exits(self) -> list[Live]:
        """Exit checks that do not rely on a sentinel: a root watched after its
        forkserver died, and spawn-mode roots (a forked grandchild inherits the
        sentinel pipe, so it would only fire when the grandchild exits too).
        Run when some deadline is due (at least every ``EXIT_POLL_S`` while such a
        turn lives); returns the turns found exited."""
        exited = []
        for live in self.table.lives():
            if live.phase is not Phase.RUNNING:
                continue
            if live.watch_root:
                if not self._root_alive(live):
                    self._on_exit(live)
                    exited.append(live)
            elif self.poll_exit and exitcode(live.spawned.process) is not None:
                self._on_exit(live)
                exited.append(live)
        return exited

    def _check_deadlines(self, live: Live, now: float) -> None:
        if live.phase is Phase.REAPING:
            if live.leftovers is not None:  # the exit's own sweep: no second scan
                remaining, live.leftovers = live.leftovers, None
            else:
                remaining = self._sweep(live)
            if remaining and now < live.reap_until:
                return
            if remaining:
                live.log.error("turn_processes_survived", count=remaining)
            self._finish(live)
            return
        if live.phase is not Phase.RUNNING:
            return
        if self._watched() and now >= live.next_poll:
            self._poll_tree(live, now)
        while (due := live.stop.due(now)) is not None:
            if due is Due.TIMEOUT:
                live.stop.request(Intent.TIMEOUT, f"the turn exceeded its {live.info.timeout_s:g} s timeout", now)
                live.spawned.token.set()
                live.log.info("turn_timeout")
            else:
                live.log.info("escalate_" + due.value)
                self._signal(live, SIGNALS[due])

    def _signal(self, live: Live, sig: int) -> None:
        if live.cgroup is not None:  # every member, however it left the tree
            if sig == signal.SIGKILL:
                live.cgroup.kill()
            else:
                live.cgroup.signal(sig)
        if live.tree is not None:
            live.tree.signal(sig)

    def _sweep(self, live: Live) -> int:
        """SIGKILL what is left of an exited turn, reap adopted zombies; how many live."""
        if live.cgroup is None:
            return live.tree.sweep(signal.SIGKILL) if live.tree is not None else 0
        # The cgroup holds every process of the turn (born inside, and one cannot leave it
        # unprivileged): the process table is scanned only to reap a zombie child of ours.
        killed = live.cgroup.kill()
        live.cgroup.reap(keep=live.tree.root_pid if live.tree is not None else 0)
        if live.tree is not None and zombie_child():
            live.tree.sweep(signal.SIGKILL)
        # "All gone" = the cgroup is empty; found empty by kill(), nothing inside could fork since.
        return len(live.cgroup.members()) if killed else 0

    def end_unstarted(self, info: TurnInfo, spec: TurnSpec, ending: Ending) -> None:
        """End a turn that never got a process (cancelled in the queue, failed to spawn).

        Called from any thread: nobody else writes this turn's log.
        """
        started = ev.RunStarted(thread_id=spec.thread_id, run_id=info.agui_run_id,
                                timestamp=time.time_ns() // 1_000_000)
        lines = [event_line(1, started), event_line(2, ending.terminal)]
        try:
            self.events.append(info.turn_id, lines)
        except OSError as exc:
            log.error("event_log_write_failed", turn_id=info.turn_id, error=str(exc))
        with self.table.lock:
            info.last_seq = 2
            info.status = ending.status
            info.error = ending.error
            info.ended_at = time.time()
        self.table.end(info)
        if self.on_released is not None:
            self.on_released(info.turn_id)
        self.registry.append(info.turn_id, lines, end=True)
        try:
            self.events.close(info.turn_id)
            self.records.put(info_copy(info))
        except OSError as exc:
            log.error("event_log_close_failed", turn_id=info.turn_id, error=str(exc))
        log.info("turn_ended", turn_id=info.turn_id, status=info.status.value,
                 error=info.error.code if info.error else None, last_seq=2)
        if self.on_ended is not None:
            self.on_ended(info)

    def _finish(self, live: Live) -> None:
        """Write the one terminal event, persist, and move the turn to the past."""
        if live.phase is Phase.FINISHED:
            return
        live.phase = Phase.FINISHED  # whatever fails below, the terminal event is written once
        self._fds.drop(live.info.turn_id)  # before its fds close: their numbers get reused
        info = live.info
        done = live.done
        if live.spawned.token.is_set() and live.stop.intent is Intent.NONE and (done is None or live.done_answers_cancel):
            # It ended in answer to a token set by post_cancel before this thread drained the command.
            self._record_cancel(live, live.cancel_posted_reason)
        ending = classify(
            run_id=info.agui_run_id,
            thread_id=live.spec.thread_id,
            intent=live.stop.intent,
            intent_message=live.stop.message,
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
            with self.table.lock:
                info.output_bytes, info.output_dropped = live.output.kept, live.output.dropped
        if live.cgroup is not None:
            usage = live.cgroup.usage()
            with self.table.lock:
                info.usage = usage
        lines = []
        seq = info.last_seq
        if info.status is TurnStatus.STARTING:  # died before Ready: still one RUN_STARTED first
            seq += 1
            lines.append(self._started_line(live, seq))
        closing = self.open_items.close(info.turn_id, seq, ending.error.code if ending.error else ending.status.value)
        lines += closing  # innermost first, before the terminal event (see runtime/openitems.py)
        seq += len(closing) + 1
        lines.append(event_line(seq, ending.terminal))
        with self.table.lock:  # ended and its last seq together: a reader never sees one without the other
            info.status = ending.status
            info.error = ending.error
            info.ended_at = time.time()
            info.last_seq = seq
        if self.on_released is not None:
            self.on_released(info.turn_id)  # whoever sees the terminal event may start the next
        try:
            self._commit(live, lines, seq, end=True)
            live.reader.close()
            try:
                live.spawned.process.close()
            except ValueError:  # still "running" to multiprocessing: its sentinel is dropped anyway
                pass
        finally:
            self._ended.put(live)  # made durable, its cgroup removed, moved to the past: the closer thread

    def _close_ended(self) -> None:
        """The closer thread: each finished turn's log and record made durable, in order,
        its (empty) cgroup removed, then the turn moved to the past. Off the relay thread:
        two fsyncs and a cgroup removal (0.2-23 ms measured here) per turn end would stall every
        other turn's events."""
        while (live := self._ended.get()) is not None:
            info = live.info
            try:
                with self.table.lock:
                    record = info_copy(info)
                self.events.close(info.turn_id)
                self.records.put(record)
            except OSError as exc:
                live.log.error("event_log_close_failed", error=str(exc))
            except Exception:  # noqa: BLE001 - the turn must still leave the live table
                live.log.exception("turn_close_failed")
            finally:
                if live.cgroup is not None:  # empty since the sweep; rmdir failures are logged
                    live.cgroup.remove()
                self.table.end(info)  # never left live, whatever failed above
            live.log.info("turn_ended", status=info.status.value,
                          error=info.error.code if info.error else None, last_seq=info.last_seq)
            if self.on_ended is not None:
                try:
                    self.on_ended(info)
                except Exception:  # noqa: BLE001 - one turn's listener must not stop the others' ends
                    live.log.exception("turn_ended_callback_failed")

