"""systemd/: the unit files pass `systemd-analyze verify` and agree with the
daemon's configuration; the example configuration parses and shows the defaults."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.config import (
    AguiConfig,
    ClusterConfig,
    Config,
    LimitsConfig,
    RetentionConfig,
    ServerConfig,
    load_config,
)

pytestmark = pytest.mark.timeout(10)

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = SYSTEMD_DIR / "runnerd.service"
SOCKET = SYSTEMD_DIR / "runnerd.socket"
EXAMPLE = SYSTEMD_DIR / "runnerd.toml.example"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat in unit files)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


# --- the example configuration ---------------------------------------------------


def test_example_config_parses_with_expected_values() -> None:
    config = load_config(EXAMPLE)
    assert config.agents == {
        "demo": "worker.demos:chat",
        "sleep": "worker.demos:sleeper",
        "fail": "worker.demos:failer",
    }
    assert config.state_dir == "/var/lib/runnerd"
    assert config.server.socket == "/run/runnerd/runnerd.sock"
    assert config.server.socket_mode == "0660"
    assert config.server.shutdown_timeout_s == 10.0
    assert config.server.tcp is None


def test_example_config_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under systemd the path defaults come from these variables, so the example's
    # explicit paths must be exactly what a unit-started daemon gets anyway.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/runnerd")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/runnerd")
    assert load_config(EXAMPLE) == Config()


def test_example_config_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    # A key counts when it is set or shown commented out at the start of a line.
    shown = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))
    tables = {"agents", "server", "retention", "limits", "agui", "cluster"}
    assert set(Config.__struct_fields__) - tables <= shown
    assert set(ServerConfig.__struct_fields__) <= shown
    assert set(RetentionConfig.__struct_fields__) <= shown
    assert set(LimitsConfig.__struct_fields__) <= shown
    assert set(AguiConfig.__struct_fields__) <= shown and "[agui]" in text
    assert set(ClusterConfig.__struct_fields__) <= shown and "# [cluster]" in text
    assert "[agents]" in text and "[server]" in text and "[retention]" in text


# --- the units agree with the daemon and with each other ------------------------------


def test_service_lifecycle_settings() -> None:
    unit = parse_unit(SERVICE)
    svc = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "ExecStart") == "/usr/local/bin/runnerd --config /etc/runnerd/runnerd.toml"
    assert "PYTHONUNBUFFERED=1" in svc["Environment"]
    assert one(unit, "Service", "User") == one(unit, "Service", "Group") == "runnerd"
    # State must keep a stable owner; MemoryDenyWriteExecute breaks ctypes/libffi.
    assert "DynamicUser" not in svc
    assert "MemoryDenyWriteExecute" not in svc
    # systemd must not remove the directory holding runnerd.socket's socket file.
    assert one(unit, "Service", "RuntimeDirectory") == "runnerd"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert one(unit, "Service", "StateDirectory") == "runnerd"


def test_service_delegates_a_writable_cgroup_subtree() -> None:
    # A cgroup per turn (supervisor.runtime.cgroups) needs the service's subtree
    # with the controllers it sets limits with, and writable.
    unit = parse_unit(SERVICE)
    assert set(one(unit, "Service", "Delegate").split()) == {"pids", "memory", "cpu"}
    assert unit["Service"].get("ProtectControlGroups", ["no"]) == ["no"]
    assert one(unit, "Service", "OOMPolicy") == "continue"  # one turn's OOM never stops the service
def test_the_unit_caps_tasks_the_kernel_backstop_for_a_fork_bomb() -> None:
    """docs/SECURITY.md leans on TasksMax= for what polling cannot catch in time."""
    tasks = one(parse_unit(SERVICE), "Service", "TasksMax")
    assert tasks.isdigit() and 0 < int(tasks) <= 16384, tasks  # finite, not "infinity" or a percentage
    assert "TasksMax=" in (SERVICE.parent.parent / "docs" / "SECURITY.md").read_text()


def test_stop_timeout_outlasts_the_daemons_own_shutdown() -> None:
    config = load_config(EXAMPLE)
    unit = parse_unit(SERVICE)
    stop = float(one(unit, "Service", "TimeoutStopSec"))
    assert stop > config.server.shutdown_timeout_s + config.cancel_grace_s + config.kill_grace_s


def test_socket_matches_config() -> None:
    unit = parse_unit(SOCKET)
    config = load_config(EXAMPLE)
    assert one(unit, "Socket", "ListenStream") == config.server.socket
    assert one(unit, "Socket", "SocketMode") == config.server.socket_mode
    assert one(unit, "Socket", "SocketGroup") == "runnerd"
    # The socket's directory is the service's RuntimeDirectory.
    runtime_dir = one(parse_unit(SERVICE), "Service", "RuntimeDirectory")
    assert Path(config.server.socket).parent == Path("/run") / runtime_dir


# --- systemd-analyze verify -------------------------------------------------------------

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def verify(tmp_path: Path, *units: Path) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify` on copies of ``units`` whose ExecStart= exists.

    verify checks that ExecStart's binary is executable; the real one is where
    pip installs it on a server, so the copies point at /bin/true instead.
    """
    copies = []
    for unit in units:
        text = re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", unit.read_text(), flags=re.MULTILINE)
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    assert ANALYZE is not None
    proc = subprocess.run([ANALYZE, "verify", *copies], capture_output=True, text=True, env=env, timeout=8)
    names = tuple(u.name for u in units)
    # verify also loads the host's units our dependencies name (sockets.target,
    # network.target, ...) and may warn about *their* contents, or about running
    # without a system manager in a container. That is environment, not our
    # files: keep only lines that are about our units. (In the Debian 12
    # container this was written in, verify prints nothing for these units.)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if any(n in line for n in names)]
    return proc.returncode, lines


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    returncode, lines = verify(tmp_path, SOCKET, SERVICE)
    assert returncode == 0, lines
    bad = [line for line in lines if "Unknown" in line or "Invalid" in line or "ignoring" in line.lower()]
    assert not bad, bad
    assert not lines, lines


@needs_analyze
def test_systemd_analyze_verify_catches_a_bad_key(tmp_path: Path) -> None:
    # Guards the check above against passing vacuously (e.g. output going elsewhere).
    broken = tmp_path / "src" / "runnerd.service"
    broken.parent.mkdir()
    broken.write_text(SERVICE.read_text().replace("[Service]\n", "[Service]\nNotAnOption=1\n", 1))
    out = tmp_path / "out"
    out.mkdir()
    _, lines = verify(out, broken)
    assert any("Unknown key" in line and "NotAnOption" in line for line in lines), lines
