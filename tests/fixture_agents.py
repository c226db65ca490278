"""Agents the tests run, each one behaviour; imported in the turn's process."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ipc import events as ev
from worker.context import TurnContext

_SLEEPER = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)\n"


def count(ctx: TurnContext, input: Any) -> dict[str, int]:
    """Emits ``n`` CUSTOM events numbered 1..n, then returns."""
    n = int(input["n"])
    size = int(input.get("pad", 0))
    pad = "x" * size
    for i in range(1, n + 1):
        ctx.emit(ev.Custom(name="i", value=[i, pad] if size else i))
    return {"n": n}


def paced(ctx: TurnContext, input: Any) -> None:
    """Emits ``n`` events, each after the test releases it through ``gate`` files."""
    for i in range(1, int(input["n"]) + 1):
        ctx.custom("i", i)
        time.sleep(float(input.get("interval", 0.005)))


def cooperative(ctx: TurnContext, input: Any) -> None:
    ctx.custom("ready", os.getpid())
    while True:
        ctx.check_cancelled()
        time.sleep(0.002)


async def async_agent(ctx: TurnContext, input: Any) -> None:
    ctx.custom("ready", os.getpid())
    try:
        while True:
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        ctx.custom("task_cancelled", True)
        raise


def ignore_token(ctx: TurnContext, input: Any) -> None:
    ctx.custom("ready", os.getpid())
    while True:
        time.sleep(0.01)


def ignore_sigterm(ctx: TurnContext, input: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.custom("ready", os.getpid())
    while True:
        time.sleep(0.01)


def grandchildren(ctx: TurnContext, input: Any) -> None:
    """Three grandchildren that ignore SIGTERM; one calls setsid and double-forks."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = []
    for _ in range(2):
        pids.append(subprocess.Popen([sys.executable, "-c", _SLEEPER]).pid)
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # intermediate: new session, fork again, exit
        os.setsid()
        second = os.fork()
        if second == 0:
            os.close(r)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            while True:
                time.sleep(1)
        os._exit(0)
    os.close(w)
    os.waitpid(first, 0)
    pids.append(int(os.read(r, 32)))
    os.close(r)
    ctx.custom("pids", pids)
    while True:
        time.sleep(0.01)


def orphan_exits(ctx: TurnContext, input: Any) -> None:
    """A grandchild re-parented to the supervisor (a subreaper) that exits on its own:
    a zombie the supervisor must reap at the turn's end. Reports its pid once it is one."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(middle, 0)  # the grandchild is now the supervisor's child
    pid = int(os.read(r, 32))
    os.close(r)
    deadline = time.monotonic() + 10
    while _state(pid) != "Z":
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} did not become a zombie")
        time.sleep(0.001)
    ctx.custom("zombie", pid)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def fail(ctx: TurnContext, input: Any) -> None:
    ctx.custom("before", 1)
    raise ValueError("boom")


def exit3(ctx: TurnContext, input: Any) -> None:
    for i in range(5):
        ctx.custom("i", i)
    os._exit(3)


def segfault(ctx: TurnContext, input: Any) -> None:
    for i in range(5):
        ctx.custom("i", i)
    ctypes.string_at(0)


def wait_forever(ctx: TurnContext, input: Any) -> None:
    for i in range(5):
        ctx.custom("i", i)
    ctx.custom("ready", os.getpid())
    while True:
        time.sleep(0.01)


def bad_events(ctx: TurnContext, input: Any) -> dict[str, str]:
    """Tries a non-serialisable and an oversized event; reports both errors."""
    errors = {}
    try:
        ctx.custom("bad", object())
    except TypeError as exc:
        errors["unserialisable"] = str(exc)
    try:
        ctx.custom("big", "x" * (2 << 20))
    except ValueError as exc:
        errors["too_large"] = f"{type(exc).__name__}: {exc}"
    try:
        ctx.emit(ev.RunFinished(thread_id="t", run_id="r", outcome=ev.Outcome("success")))
    except ValueError as exc:
        errors["lifecycle"] = str(exc)
    ctx.custom("still_fine", True)
    return errors


def garbage(ctx: TurnContext, input: Any) -> None:
    for i in range(3):
        ctx.custom("i", i)
    fd = ctx._writer._conn.fileno()
    os.write(fd, b"\x00\x00\x00\x05hello")  # a well-framed but undecodable frame
    time.sleep(30)


def close_pipe(ctx: TurnContext, input: Any) -> None:
    ctx.custom("i", 1)
    ctx._writer.close()
    time.sleep(0.05)


def result_value(ctx: TurnContext, input: Any) -> Any:
    return {"echo": input}


def big_event(ctx: TurnContext, input: Any) -> None:
    """A near-cap event between small ones."""
    ctx.custom("small", 1)
    ctx.custom("big", "y" * int(input.get("size", 900_000)))
    ctx.custom("small", 2)


def _require_kernel_bound(controller: str, knob: str) -> None:
    """Refuse to run a hostile agent outside a cgroup with a finite ``knob``
    (tests/kernel_bound.py sets one up): never an unbounded bomb or hog."""
    value = "max"
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(",") and path != "/":
                with open(f"/sys/fs/cgroup/{controller}{path}/{knob}") as knob_file:
                    value = knob_file.read().strip()
    if value == "max" or int(value) >= 1 << 50:
        raise RuntimeError(f"refusing to run without a kernel {controller} limit ({knob} = {value})")


def fork_bomb(ctx: TurnContext, input: Any) -> None:
    """An exponential fork bomb: every process forks again, without end. Only
    ever under a kernel pids limit; at that limit each one keeps trying."""
    _require_kernel_bound("pids", "pids.max")
    ctx.custom("ready", os.getpid())
    while True:
        try:
            os.fork()  # parent and child both go round again: 2, 4, 8 ...
        except OSError:  # EAGAIN at pids.max; a failed fork still copies the whole
            time.sleep(1.0)  # address space first, so back off: spare the shared CPUs


def _hoard(chunk: int, pause: float, upto: int | None) -> None:
    hoard = []
    while upto is None or len(hoard) * chunk < upto:
        block = bytearray(chunk)
        block[::4096] = b"x" * len(block[::4096])  # touched pages: real RSS
        hoard.append(block)
        time.sleep(pause)
    while True:
        time.sleep(1)


def memory_hog(ctx: TurnContext, input: Any) -> None:
    """``children`` forked processes and this one each allocate ``chunk_mib`` every
    ``pause`` s: without end, or up to ``each_mib`` apiece (then only the sum is large)."""
    each = input.get("each_mib")
    if each is None:
        _require_kernel_bound("memory", "memory.limit_in_bytes")
    upto = None if each is None else int(each) << 20
    chunk, pause = int(input.get("chunk_mib", 8)) << 20, float(input.get("pause", 0.02))
    pids = []
    for _ in range(int(input.get("children", 3))):
        pid = os.fork()
        if pid == 0:
            _hoard(chunk, pause, upto)
        pids.append(pid)
    ctx.custom("ready", [os.getpid(), *pids])
    _hoard(chunk, pause, upto)


def busy_loop(ctx: TurnContext, input: Any) -> None:
    ctx.custom("ready", os.getpid())
    n = 0
    while True:
        n += 1


def chatty(ctx: TurnContext, input: Any) -> dict[str, int]:
    """Writes megabytes to stdout and stderr, then finishes normally."""
    line = "x" * 1023 + "\n"
    for _ in range(int(input.get("mib", 4)) * 1024):
        sys.stdout.write(line)
        sys.stderr.write(line)
    sys.stdout.flush()
    sys.stderr.flush()
    ctx.custom("done", True)
    return {"written": int(input.get("mib", 4)) * 2 << 20}


def introspect(ctx: TurnContext, input: Any) -> dict[str, Any]:
    import resource
    return {"env": sorted(os.environ), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "core": resource.getrlimit(resource.RLIMIT_CORE)[1], "pgid_is_pid": os.getpgid(0) == os.getpid(),
            "sid_is_pid": os.getsid(0) == os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
            "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0]}


def many_events(ctx: TurnContext, input: Any) -> None:
    for i in range(int(input["n"])):
        ctx.custom("i", i)


def forged_seq(ctx: TurnContext, input: Any) -> None:
    """Bypasses emit to send an event carrying its own seq."""
    ctx.custom("i", 1)
    ctx._writer.send_events([b'{"type":"CUSTOM","name":"x","value":1,"seq":999}'])
    time.sleep(30)


def kill_forkserver(ctx: TurnContext, input: Any) -> str:
    """Kills its parent (the forkserver), then goes on and finishes normally."""
    ctx.custom("parent", os.getppid())
    os.kill(os.getppid(), signal.SIGKILL)
    for i in range(20):
        ctx.custom("i", i)
        time.sleep(0.01)
    return "survived"


def leave_helper(ctx: TurnContext, input: Any) -> str:
    """Returns while a forked helper (holding every inherited fd) lives on."""
    if os.fork() == 0:
        while True:
            time.sleep(1)
    return "returned"


def emit_many_big(ctx: TurnContext, input: Any) -> None:
    ctx.emit_many([ev.Custom(name="big", value="z" * 900_000) for _ in range(10)])


def huge_result(ctx: TurnContext, input: Any) -> str:
    return "r" * (2 << 20)


def exponential_fork_bomb(ctx: TurnContext, input: Any) -> None:
    """Every process forks again, forever: the count doubles each round (what a
    shell's ``:(){ :|:& };:`` does). Run only under a kernel pids limit."""
    ctx.custom("ready", os.getpid())
    while True:
        try:
            os.fork()  # parent and child both go round again
        except OSError:
            time.sleep(0.001)  # EAGAIN at the pids limit: try again, as a bomb does


def memory_hog_tree(ctx: TurnContext, input: Any) -> None:
    """Three child processes, each touching 16 MiB more every few ms, without end;
    the agent's own process only waits (so an OOM kill never hits it first)."""
    ctx.custom("ready", os.getpid())
    for _ in range(3):
        if os.fork() == 0:
            break
    else:
        while True:
            time.sleep(1)
    hoard = []
    while True:
        block = bytearray(16 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touched pages: charged to the cgroup
        hoard.append(block)
        time.sleep(0.005)


_ESCAPEE = ("import ctypes, signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "ctypes.CDLL(None).prctl(15, b'innocent', 0, 0, 0)\n"
            "while True: time.sleep(1)\n")


def escapee(ctx: TurnContext, input: Any) -> None:
    """Ignores SIGTERM and the cancel; leaves a grandchild that called setsid,
    double-forked, renamed itself and exec'd with an empty environment (so no
    mark of the turn is left on it), and reports that grandchild's pid."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            os.execve(sys.executable, [sys.executable, "-c", _ESCAPEE], {})
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 32))
    ctx.custom("escapee", pid)
    while True:
        time.sleep(0.01)


def touch(ctx: TurnContext, input: Any) -> None:
    """Creates the file ``input["path"]``: proof that agent code ran."""
    with open(input["path"], "w") as f:
        f.write("ran")
def where(ctx: TurnContext, input: Any) -> dict[str, str]:
    """Which files the turn's code came from (the forkserver loaded them on the daemon's path)."""
    import importlib
    names = ("ipc.boot", "worker.main", "supervisor.config", "fixture_agents")
    return {name: str(importlib.import_module(name).__file__) for name in names}


def isolation(ctx: TurnContext, input: Any) -> dict[str, Any]:
    """What the turn inherited: its environment and, from the kernel, its signal masks."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    masks = {name: int(fields[name].strip(), 16) for name in ("SigBlk", "SigIgn", "SigCgt")}
    return {"env": dict(os.environ), **masks}


def lifecycle_on_pipe(ctx: TurnContext, input: Any) -> None:
    """Bypasses emit's check to put a RUN_FINISHED of its own on the pipe."""
    ctx.custom("i", 1)
    ctx._writer.send_events([ev.encode_event(ev.RunFinished(thread_id="t", run_id="r",
                                                            outcome=ev.Outcome("success")))])
    time.sleep(30)


def secretive(ctx: TurnContext, input: Any) -> dict[str, Any]:
    """Carries its input into an event, its stdout and its result."""
    ctx.custom("echo", input)
    print("stdout says", input, flush=True)
    return {"echo": input}


def returns_when_cancelled(ctx: TurnContext, input: Any) -> str:
    """Answers a cancel by returning normally (a partial result), not by raising."""
    ctx.custom("ready", os.getpid())
    while not ctx.cancelled:
        time.sleep(0.002)
    return "partial"
