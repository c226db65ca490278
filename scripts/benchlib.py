"""Helpers the benchmark scripts share: percentiles, and a real runnerd to measure."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return pct(values, 50)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: never leave it running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def tree_cpu_s(procs: Sequence[object]) -> float:
    """User + system CPU of ``procs`` (psutil processes) and of the children they reaped."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()  # type: ignore[attr-defined]
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def launch_runnerd(tmp: Path, agents: dict[str, str], settings: list[str], server: Sequence[str] = (),
                   source: Path | None = None) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ``runnerd`` from its console script on a temp config and socket, and
    wait until it answers /v1/health. ``server``: extra ``[server]`` lines;
    ``source``: a checkout of other runnerd code to run instead (first on PYTHONPATH).
    Returns (process, socket path, log path)."""
    import httpx

    socket = str(tmp / "run" / "runnerd.sock")
    lines = [f'state_dir = "{tmp / "state"}"', *settings, "", "[agents]"]
    lines += [f'{name} = "{target}"' for name, target in agents.items()]
    lines += ["", "[server]", f'socket = "{socket}"', *server]
    config = tmp / "runnerd.toml"
    config.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source or ""), str(SCRIPTS), env.get("PYTHONPATH", "")]))
    env.pop("NOTIFY_SOCKET", None)
    log = tmp / "runnerd.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen([str(BIN / "runnerd"), "--config", str(config)], stdout=logf,
                                stderr=logf, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runnerd exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=socket),
                              timeout=2) as c:
                if c.get("/v1/health").status_code == 200:
                    return proc, socket, log
        except (httpx.TransportError, FileNotFoundError):
            pass
        time.sleep(0.02)  # polling readiness, bounded by the deadline
    stop_process(proc)
    raise RuntimeError("runnerd did not answer /v1/health within 30 s")
