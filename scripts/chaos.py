"""Chaos run: many turns, random SIGKILLs of turn processes and of the daemon.

Afterwards it checks, from the files on disk: every turn has exactly one
terminal event (last), seq is contiguous from 1, no event whose emit had
returned before its turn's process was killed is missing, and no process of
any turn is left. It prints the figures; exit status 1 on any violation.

    python scripts/chaos.py --turns 200 --concurrency 8 --daemon-kills 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from ipc.protocol import process_mark

SCRIPTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


@dataclass
class Report:
    turns: int = 0
    turn_kills: int = 0
    daemon_kills: int = 0
    events: int = 0
    endings: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    leftover_processes: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"turns                 {self.turns}",
            f"turn processes killed {self.turn_kills}",
            f"daemon SIGKILLs       {self.daemon_kills}",
            f"events checked        {self.events}",
            f"endings               {dict(sorted(self.endings.items()))}",
            f"violations            {len(self.violations)}",
            f"leftover processes    {self.leftover_processes}",
            f"seconds               {self.seconds:.1f}",
        ] + [f"  ! {v}" for v in self.violations[:20]]


class Daemon:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.socket = str(work / "runnerd.sock")
        self.config = work / "runnerd.toml"
        self.config.write_text("\n".join([
            f'state_dir = "{work / "state"}"', "cancel_grace_s = 0.2", "kill_grace_s = 0.2",
            "max_running_turns = 64", "", "[agents]", 'emitter = "chaos_agents:emitter"', "",
            "[server]", f'socket = "{self.socket}"', "shutdown_timeout_s = 5.0", ""]))
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url="http://runnerd", transport=httpx.HTTPTransport(uds=self.socket),
                                   timeout=10)

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]))
        with open(self.work / "runnerd.log", "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "runnerd"), "--config", str(self.config)],
                                         stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client.get("/v1/health").status_code == 200:
                    return
            except (httpx.TransportError, FileNotFoundError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"runnerd exited {self.proc.returncode}")
            time.sleep(0.02)  # polling readiness, bounded by the deadline
        raise RuntimeError("runnerd did not become ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def run(work: Path, *, turns: int, concurrency: int, events: int, kill_prob: float, daemon_kills: int,
        seed: int, pause: float = 0.002) -> Report:
    rng = random.Random(seed)
    report = Report()
    started = time.monotonic()
    daemon = Daemon(work)
    daemon.start()
    side_dir = work / "side"
    side_dir.mkdir()
    ids: list[str] = []
    side_of: dict[str, Path] = {}
    killed: set[str] = set()  # turns whose process we SIGKILLed (their emits must all be there)
    lost_to_daemon: set[str] = set()
    active: list[str] = []
    kill_points = sorted(rng.sample(range(1, turns), min(daemon_kills, turns - 1))) if daemon_kills else []
    try:
        while len(ids) < turns or active:
            while len(ids) < turns and len(active) < concurrency:
                side = side_dir / f"{len(ids)}"
                r = daemon.client.post("/v1/turns", json={"agent": "emitter", "input": {
                    "n": rng.randint(1, events), "side": str(side), "pause": pause}})
                r.raise_for_status()
                turn_id = r.json()["turn_id"]
                side_of[turn_id] = side
                ids.append(turn_id)
                active.append(turn_id)
                if kill_points and len(ids) >= kill_points[0]:
                    kill_points.pop(0)
                    lost_to_daemon.update(active)
                    daemon.kill()
                    report.daemon_kills += 1
                    daemon.start()
            for turn_id in list(active):
                info = daemon.client.get(f"/v1/turns/{turn_id}").json()
                if info["status"] in ("succeeded", "failed", "cancelled", "timed_out", "lost"):
                    active.remove(turn_id)
                elif info["status"] == "running" and info.get("pid") and rng.random() < kill_prob:
                    try:
                        proc = psutil.Process(info["pid"])
                        if abs(proc.create_time() - info["pid_create_time"]) < 0.01:
                            proc.kill()
                            killed.add(turn_id)
                            report.turn_kills += 1
                    except psutil.Error:
                        pass
            time.sleep(0.005)  # pacing the poll loop, not synchronising on anything
    finally:
        rc = daemon.stop()
        daemon.client.close()
    if rc != 0:
        report.violations.append(f"daemon exited {rc} on SIGTERM")
    report.turns = len(ids)
    _verify(work / "state" / "turns", side_of, ids, killed - lost_to_daemon, report)
    report.leftover_processes = _leftovers(ids)
    if report.leftover_processes:
        report.violations.append(f"{report.leftover_processes} turn processes left running")
    report.seconds = time.monotonic() - started
    return report


def _verify(turns_dir: Path, side_of: dict[str, Path], ids: list[str], killed: set[str], report: Report) -> None:
    for turn_id in ids:
        lines = (turns_dir / f"{turn_id}.jsonl").read_bytes().splitlines()
        events = [json.loads(x) for x in lines]
        report.events += len(events)
        seqs = [e["seq"] for e in events]
        if seqs != list(range(1, len(seqs) + 1)):
            report.violations.append(f"{turn_id}: seq not contiguous")
        terminals = [e for e in events if e["type"] in ("RUN_FINISHED", "RUN_ERROR")]
        if len(terminals) != 1 or events[-1] is not terminals[0]:
            report.violations.append(f"{turn_id}: {len(terminals)} terminal events")
            continue
        end = terminals[0]
        report.endings[end.get("code") or end["outcome"]["type"]] += 1
        if events[0]["type"] != "RUN_STARTED":
            report.violations.append(f"{turn_id}: does not start with RUN_STARTED")
        side = side_of[turn_id]
        returned = int(side.read_bytes() or b"0") if side.exists() else 0
        got = {e["value"] for e in events if e["type"] == "CUSTOM"}
        if turn_id in killed or end.get("code") != "lost":
            missing = [i for i in range(1, returned + 1) if i not in got]
            if missing:
                report.violations.append(f"{turn_id}: {len(missing)} emitted events missing (first {missing[0]})")


def _leftovers(ids: list[str]) -> int:
    marks = {process_mark(t) for t in ids}
    count = 0
    for p in psutil.process_iter(["name"]):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.info["name"] in marks:
                count += 1
        except psutil.Error:
            continue
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--events", type=int, default=2000, help="at most this many events per turn")
    parser.add_argument("--kill-prob", type=float, default=0.02, help="per poll, per running turn")
    parser.add_argument("--daemon-kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.002, help="agent sleep every 50 events")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runnerd-chaos-") as tmp:
        report = run(Path(tmp), turns=args.turns, concurrency=args.concurrency, events=args.events,
                     kill_prob=args.kill_prob, daemon_kills=args.daemon_kills, seed=args.seed,
                     pause=args.pause)
    print("\n".join(report.lines()))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
