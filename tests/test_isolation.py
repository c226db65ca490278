"""A turn does not inherit what its parent holds: systemd's NOTIFY_SOCKET and LISTEN_*,
the parent's signal dispositions and mask, variables outside env_allowlist; and the
daemon's socket gets its mode and group whatever the daemon's umask."""

from __future__ import annotations

import grp
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_fixture import BIN, child_env, start_daemon, stopped, write_config

# The parent sets up everything a turn must not inherit, then runs one turn.
PARENT = """
import json, os, signal, sys
from supervisor.config import DEFAULT_ENV_ALLOWLIST, Config, LimitsConfig
from supervisor.embedded import Supervisor

allowlist = json.loads(sys.argv[2])
os.environ.update(NOTIFY_SOCKET="/run/systemd/notify", LISTEN_PID=str(os.getpid()), LISTEN_FDS="1",
                  LISTEN_FDNAMES="runnerd.socket", MY_API_KEY="k-123", OTHER_SECRET="s-456")
signal.signal(signal.SIGTERM, lambda *_: None)  # a host's own handlers...
signal.signal(signal.SIGUSR2, lambda *_: None)
for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGINT, signal.SIGQUIT):  # ...ignored signals...
    signal.signal(sig, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD})  # ...and a mask
limits = LimitsConfig(env_allowlist=None if allowlist is None else [*DEFAULT_ENV_ALLOWLIST, *allowlist])
config = Config(state_dir=sys.argv[1], agents={"isolation": "fixture_agents:isolation"}, limits=limits,
                start_method=sys.argv[3])
with Supervisor(config) as sup:
    turn = sup.start_turn("isolation")
    *_, (_, last) = sup.events(turn.turn_id, timeout=30)
print(json.dumps(last.result))
"""
GUARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGCHLD, signal.SIGALRM)


def _turn_sees(tmp_path: Path, allowlist: list[str] | None, start_method: str = "forkserver") -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", PARENT, str(tmp_path / "state"), json.dumps(allowlist), start_method],
                       capture_output=True, text=True, timeout=50, env=child_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _signals(mask: int) -> set[signal.Signals]:
    return {signal.Signals(n) for n in range(1, 65) if mask >> (n - 1) & 1 and n in signal.Signals._value2member_map_}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])  # spawn: exec'd from the host's thread
def test_the_turn_gets_default_signals_and_no_systemd_variables_even_with_no_allowlist(
        tmp_path: Path, start_method: str) -> None:
    seen = _turn_sees(tmp_path, None, start_method)  # no allowlist: everything else of the parent's environment passes
    assert {"OTHER_SECRET", "MY_API_KEY", "RUNNERD_TURN_ID"} <= set(seen["env"])
    assert not {k for k in seen["env"] if k == "NOTIFY_SOCKET" or k.startswith("LISTEN_")}, seen["env"]
    assert seen["SigBlk"] == 0, _signals(seen["SigBlk"])
    assert not _signals(seen["SigIgn"]) & set(GUARDED), _signals(seen["SigIgn"])
    assert not _signals(seen["SigCgt"]) & set(GUARDED), _signals(seen["SigCgt"])


@pytest.mark.timeout(60)
def test_env_allowlist_additions_pass_and_nothing_else(tmp_path: Path) -> None:
    seen = _turn_sees(tmp_path, ["MY_API_KEY", "NOTIFY_SOCKET", "LISTEN_FDS"])
    assert seen["env"]["MY_API_KEY"] == "k-123"
    assert "OTHER_SECRET" not in seen["env"]
    # Even allowlisted, systemd's variables are the daemon's alone.
    assert "NOTIFY_SOCKET" not in seen["env"] and "LISTEN_FDS" not in seen["env"]


def _other_group() -> grp.struct_group:
    for g in grp.getgrall():
        if g.gr_gid != os.getgid():
            return g
    pytest.skip("this machine has no group besides our own")


@pytest.mark.timeout(60)
def test_the_socket_has_its_mode_and_group_whatever_the_daemons_umask(tmp_path: Path) -> None:
    group = _other_group()
    old = os.umask(0)  # the daemon inherits the most permissive umask there is
    try:
        daemon = start_daemon(tmp_path, socket_group=group.gr_name)
    finally:
        os.umask(old)
    for d in stopped(daemon):
        st = os.stat(d.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
        # The tight umask was for the bind only: the daemon's own is back.
        umask = next(line for line in open(f"/proc/{d.proc.pid}/status") if line.startswith("Umask:"))
        assert int(umask.split()[1], 8) == 0
        with d.http() as c:
            assert c.get("/v1/health").status_code == 200


@pytest.mark.timeout(30)
def test_an_unknown_socket_group_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, socket_group="no-such-group-runnerd")
    r = subprocess.run([str(BIN / "runnerd"), "--config", str(config)], capture_output=True, text=True,
                       timeout=20, env=child_env())
    assert r.returncode == 2 and "socket group 'no-such-group-runnerd' does not exist" in r.stderr
    assert not (tmp_path / "run" / "runnerd.sock").exists()
