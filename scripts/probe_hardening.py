"""The probes of issue 9, as figures: run against this checkout, or another one for "before".

    python scripts/probe_hardening.py [--source DIR] [--probes silent,exports,compaction]

``--source DIR``: a checkout whose ``supervisor`` package is run instead (e.g. an
``git archive structure`` extract), with this interpreter's dependencies.
Only configuration keys both versions know are used, with their defaults.

1. Silent TCP connections: a daemon under RLIMIT_NOFILE 256 (as in the issue);
   300 TCP connections that send nothing; meanwhile 20 ``/v1/health`` requests on
   the Unix socket (latency, failures), then how many silent connections the
   daemon still holds after 15 s, and how much its log grew.
2. Non-reading export clients: a turn of 20,000 events (~8.4 MB); 20 clients ask
   ``export?after=0&limit=10000`` and never read. The daemon's RSS before, at its
   peak, and the time until the daemon has closed all 20 (capped at 60 s).
3. Compaction of one 50,000-delta text message (50 MB): the largest event of the
   compacted form, the daemon's RSS before the turn and after compaction; then 5
   clients on ``events?compact=true`` that never read (peak RSS, time to drop).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import SCRIPTS, ms, pct, stop_process  # noqa: E402

TOKEN = "probe-token-0123456789abcdef"


def launch(tmp: Path, source: Path | None, *, nofile: int | None, tcp_port: int | None) -> tuple[subprocess.Popen[bytes], str, Path]:
    sock = str(tmp / "run" / "runnerd.sock")
    (tmp / "token").write_text(TOKEN)
    lines = [f'state_dir = "{tmp / "state"}"', "", "[agents]",
             'bulk = "probe_hardening_agents:bulk"', 'long_text = "probe_hardening_agents:long_text"', "", "[limits]", "open_files = 128",
             "", "[server]", f'socket = "{sock}"']
    if tcp_port:
        lines += [f'tcp = "127.0.0.1:{tcp_port}"', f'token_file = "{tmp / "token"}"']
    (tmp / "runnerd.toml").write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source) if source else "", str(SCRIPTS),
                                                       env.get("PYTHONPATH", "")]))
    env.pop("NOTIFY_SOCKET", None)
    log = tmp / "runnerd.log"
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    with open(log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.server.daemon", "--config",
                                 str(tmp / "runnerd.toml")], stdout=logf, stderr=logf,
                                stdin=subprocess.DEVNULL, env=env, preexec_fn=limit, cwd=str(tmp))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runnerd exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with _unix(sock, 2) as c:
                if c.get("/v1/health").status_code == 200:
                    return proc, sock, log
        except (httpx.TransportError, FileNotFoundError):
            pass
        time.sleep(0.02)  # readiness polling, bounded by the deadline
    stop_process(proc)
    raise RuntimeError("runnerd did not start")


def _unix(sock: str, timeout: float) -> httpx.Client:
    return httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=sock), timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed_by_peer(s: socket.socket) -> bool:
    poller = select.poll()
    poller.register(s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _health_latencies(sock: str) -> tuple[list[float], int]:
    """20 requests, each on a new connection (as a new client would), 2 s timeout."""
    latencies, failures = [], 0
    for _ in range(20):
        start = time.monotonic()
        try:
            with _unix(sock, 2) as c:
                ok = c.get("/v1/health").status_code == 200
        except (httpx.TransportError, OSError):
            ok = False
        latencies.append(time.monotonic() - start)
        failures += not ok
    return latencies, failures


def probe_silent(source: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = _free_port()
        proc, sock, log = launch(tmp, source, nofile=256, tcp_port=port)
        silent: list[socket.socket] = []
        try:
            log_before = log.stat().st_size
            baseline = _health_latencies(sock)[0]
            for _ in range(300):
                try:
                    silent.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
            latencies, failures = _health_latencies(sock)
            with _unix(sock, 5) as c:
                try:
                    started = c.post("/v1/turns", json={"agent": "bulk", "input": {"n": 10}}).status_code
                except (httpx.TransportError, OSError) as exc:
                    started = repr(exc)  # type: ignore[assignment]
            time.sleep(15)  # the probe window: what the daemon does with them meanwhile
            held = sum(not _closed_by_peer(s) for s in silent)
            grown = log.stat().st_size - log_before
            print(f"silent TCP connections opened: {len(silent)} (daemon RLIMIT_NOFILE 256)")
            print(f"  /v1/health on the Unix socket before them: p50 {ms(pct(baseline, 50))}")
            print(f"  /v1/health on the Unix socket with them: p50 {ms(pct(latencies, 50))}, max {ms(max(latencies))}, "
                  f"{failures}/20 failed (2 s timeout)")
            print(f"  POST /v1/turns meanwhile: {started}")
            print(f"  still held open by the daemon after 15 s: {held}")
            print(f"  log growth during the probe: {grown / 1e6:.3f} MB")
        finally:
            for s in silent:
                s.close()
            stop_process(proc)


def _non_readers(sock: str, daemon: psutil.Process, target: str, count: int) -> tuple[int, float | None]:
    """``count`` clients that send ``GET target`` and never read: the daemon's peak RSS
    and when it had closed all of them (None: not within 60 s). They are closed after."""
    clients = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(sock)
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            clients.append(s)
        start = time.monotonic()
        peak, dropped_at = daemon.memory_info().rss, None
        while time.monotonic() - start < 60:
            peak = max(peak, daemon.memory_info().rss)
            if all(_closed_by_peer(s) for s in clients):
                dropped_at = time.monotonic() - start
                break
            time.sleep(0.05)
        return peak, dropped_at
    finally:
        for s in clients:
            s.close()


def probe_exports(source: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        proc, sock, log = launch(tmp, source, nofile=None, tcp_port=None)
        daemon = psutil.Process(proc.pid)
        clients: list[socket.socket] = []
        try:
            with _unix(sock, 60) as c:
                tid = c.post("/v1/turns", json={"agent": "bulk", "input": {"n": 20000, "pad": 400}}).json()["turn_id"]
                while c.get(f"/v1/turns/{tid}").json()["status"] not in ("succeeded", "failed"):
                    time.sleep(0.05)
                page = len(c.get(f"/v1/turns/{tid}/export", params={"after": 0, "limit": 10000}).content)
            rss_before = daemon.memory_info().rss
            for _ in range(20):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(sock)
                s.sendall(f"GET /v1/turns/{tid}/export?after=0&limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                clients.append(s)
            start = time.monotonic()
            peak, dropped_at = rss_before, None
            while time.monotonic() - start < 60:
                peak = max(peak, daemon.memory_info().rss)
                if all(_closed_by_peer(s) for s in clients):
                    dropped_at = time.monotonic() - start
                    break
                time.sleep(0.05)
            rss_end = daemon.memory_info().rss
            print(f"export page (after=0, limit=10000): {page / 1e6:.2f} MB")
            print(f"  daemon RSS before {rss_before / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB "
                  f"(+{(peak - rss_before) / 2**20:.0f} MiB for 20 non-reading clients), "
                  f"at the end {rss_end / 2**20:.0f} MiB")
            print("  all 20 dropped by the daemon after: "
                  + (f"{dropped_at:.1f} s" if dropped_at is not None else "not within 60 s"))
        finally:
            for s in clients:
                s.close()
            stop_process(proc)


def probe_compaction(source: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        proc, sock, log = launch(tmp, source, nofile=None, tcp_port=None)
        daemon = psutil.Process(proc.pid)
        try:
            rss_before = daemon.memory_info().rss
            with _unix(sock, 120) as c:
                tid = c.post("/v1/turns", json={"agent": "long_text", "input": {"n": 50000}}).json()["turn_id"]
                deadline = time.monotonic() + 300
                while c.get(f"/v1/turns/{tid}").json().get("compaction") is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                info = c.get(f"/v1/turns/{tid}").json()
                largest, after, events = 0, 0, 0
                while True:
                    page = c.get(f"/v1/turns/{tid}/export", params={"after": after, "limit": 10000,
                                                                     "compact": "true"}).json()
                    for e in page["events"]:
                        largest = max(largest, len(json.dumps(e, separators=(",", ":"))))
                    events += page["returned"]
                    if not page["truncated"] or not page["returned"]:
                        break
                    after = page["next_after"]
            time.sleep(2)  # let the allocator settle before the reading
            rss_after = daemon.memory_info().rss
            peak, dropped_at = _non_readers(sock, daemon, f"/v1/turns/{tid}/events?compact=true", 5)
            print(f"compaction of a 50,000-delta message: {info.get('compaction')} "
                  f"{info.get('compaction_error') or ''}".rstrip())
            print(f"  compacted form: {events} events, the largest {largest:,} bytes "
                  f"(max_event_bytes {1 << 20:,})")
            print(f"  daemon RSS before the turn {rss_before / 2**20:.0f} MiB, after compaction and "
                  f"one full read {rss_after / 2**20:.0f} MiB")
            print(f"  5 clients on events?compact=true that never read: RSS peak +{(peak - rss_after) / 2**20:.0f} MiB, "
                  "all dropped after: " + (f"{dropped_at:.1f} s" if dropped_at is not None else "not within 60 s"))
        finally:
            stop_process(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="run the supervisor package of this checkout instead")
    parser.add_argument("--probes", default="silent,exports,compaction", help="comma-separated subset")
    args = parser.parse_args()
    print(f"source: {args.source or 'this checkout'}")
    probes = {"silent": probe_silent, "exports": probe_exports, "compaction": probe_compaction}
    for name in args.probes.split(","):
        probes[name](args.source)


if __name__ == "__main__":
    main()
