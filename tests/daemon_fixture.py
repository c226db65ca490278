"""A real ``runnerd`` subprocess on a temp socket, for the end-to-end tests."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from conftest import TEST_AGENTS, wait_for

BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent
REPO = TESTS.parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every daemon and CLI subprocess the tests start.

    The work tree comes first on ``PYTHONPATH`` by construction, whatever copy of
    the package is installed (the fixture agents follow); no empty entry, which
    Python would read as the current directory.
    """
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), *inherited])
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


def write_config(tmp: Path, *, retention: dict[str, object] | None = None,
                 top: dict[str, object] | None = None, limits: dict[str, object] | None = None,
                 only_agents: dict[str, str] | None = None, agents: dict[str, str] | None = None,
                 cluster: dict[str, object] | None = None, **server: object) -> Path:
    """``only_agents`` replaces the test agents; ``agents`` adds to them; ``cluster``: a [cluster] section."""
    agents = only_agents or dict(TEST_AGENTS, demo="worker.demos:chat", sleep="worker.demos:sleeper",
                                 **(agents or {}))
    lines = [f'state_dir = "{tmp / "state"}"', "cancel_grace_s = 0.3", "kill_grace_s = 0.3"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in (top or {}).items()]
    lines += ["", "[agents]"]
    lines += [f'{name} = "{target}"' for name, target in agents.items()]
    if retention:
        lines += ["", "[retention]"] + [f"{k} = {v!r}" for k, v in retention.items()]
    if limits:
        lines += ["", "[limits]"] + [f"{k} = {v!r}" for k, v in limits.items()]
    if cluster:
        lines += ["", "[cluster]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in cluster.items()]
    lines += ["", "[server]", f'socket = "{tmp / "run" / "runnerd.sock"}"']
    for key, value in server.items():
        shown = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{key} = {shown}")
    path = tmp / "runnerd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def http(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=self.socket),
                            timeout=timeout)

    def ctl(self, *args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "runnerctl"), "--socket", self.socket, *args], input=input,
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_daemon(tmp: Path, *, extra_env: dict[str, str] | None = None,
                 retention: dict[str, object] | None = None, top: dict[str, object] | None = None,
                 limits: dict[str, object] | None = None, nofile: int | None = None,
                 only_agents: dict[str, str] | None = None, agents: dict[str, str] | None = None,
                 cluster: dict[str, object] | None = None, **server: object) -> Daemon:
    """``nofile``: the daemon's RLIMIT_NOFILE (soft and hard), to probe descriptor exhaustion."""
    config = write_config(tmp, retention=retention, top=top, limits=limits, only_agents=only_agents,
                          agents=agents, cluster=cluster, **server)
    env = child_env(extra_env)
    log = tmp / "runnerd.log"
    with open(log, "ab") as logf:
        limit = None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        proc = subprocess.Popen([str(BIN / "runnerd"), "--config", str(config)], stdout=logf, stderr=logf,
                                env=env, preexec_fn=limit)
    d = Daemon(proc, str(tmp / "run" / "runnerd.sock"), config, log, env)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"runnerd exited {proc.returncode}:\n{log.read_text()}")
        try:
            with d.http(2) as c:
                return c.get("/v1/health").status_code == 200
        except (httpx.TransportError, FileNotFoundError):
            return False

    wait_for(ready, 20, 0.02)
    return d


def stopped(d: Daemon) -> Iterator[Daemon]:
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(20)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(5)


def elapsed_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000
