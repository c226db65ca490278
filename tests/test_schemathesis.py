"""schemathesis ``--checks all`` against a real daemon over TCP: zero failures.

The OpenAPI document is the contract: every status, enum, bound and media type
the daemon answers with must be in it, and every request it documents as bad
must be refused. The run is bounded in examples and time (seed fixed, so a
failure reproduces); only harmless demo agents are configured, since the
document lists them and the fuzzer starts them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from daemon_fixture import start_daemon

ST = Path(sys.executable).parent / "st"
TOKEN = "schemathesis-token-0123456789"
# A cursor beyond the turn's last seq is a 400 (invalid_cursor) that no schema can
# express (it depends on the turn): for these two reads only, 400 is an accepted answer.
# Turn ids are drawn from real turns most of the time, so the checks reach past the 404.
CONFIG = r"""
[dictionaries.turns]
values = [%s]

[parameters]
"path.turn_id" = { dictionary = "turns", probability = 0.7 }

[[operations]]
include-path-regex = '^/v1/turns/\{turn_id\}/(events|export)$'
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


@pytest.mark.timeout(300)
@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None, reason="schemathesis is not installed")
def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = tmp_path / "token"
    token.write_text(TOKEN)
    d = start_daemon(tmp_path, tcp=f"127.0.0.1:{port}", token_file=str(token),
                     only_agents={"demo": "worker.demos:chat", "fail": "worker.demos:failer"})
    try:
        with d.http() as c:  # one turn that succeeded, one that failed
            ids = [c.post("/v1/turns", json={"agent": a, "input": {"delay": 0}}).json()["turn_id"]
                   for a in ("demo", "fail")]
            wait_for(lambda: all(c.get(f"/v1/turns/{i}").json()["status"] in ("succeeded", "failed")
                                 for i in ids), 30)
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG % ", ".join(f'"{i}"' for i in ids))
        r = subprocess.run(
            [str(ST if ST.exists() else shutil.which("st")), "--config-file", str(config), "run", f"http://127.0.0.1:{port}/v1/openapi.json",
             "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
             "--exclude-path", "/v1/shutdown",  # it would stop the daemon under test
             "--max-examples", "25",
             "--max-time", "90", "--seed", "20261202", "--request-timeout", "10", "--no-color"],
            capture_output=True, text=True, timeout=240, env=d.env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert " passed" in r.stdout and "failed" not in r.stdout.split("SUMMARY")[-1]
    finally:
        assert d.stop() == 0
    log = d.log.read_text()
    assert "internal_error" not in log and "Traceback" not in log
