"""The console's two read-only routes: captured output (bounded) and running turns' usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from daemon_fixture import Daemon, start_daemon, stopped


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from stopped(start_daemon(tmp_path))


@pytest.mark.timeout(60)
def test_output_is_read_in_bounded_pages(daemon: Daemon) -> None:
    with daemon.http(30) as c:
        tid = c.post("/v1/turns", json={"agent": "chatty", "input": {"mib": 1}}).json()["turn_id"]
        wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["status"] == "succeeded", 30, 0.02)
        first = c.get(f"/v1/turns/{tid}/output").json()
        assert first["size"] == 2 << 20 and first["offset"] == 0 and first["dropped"] == 0
        assert first["next_offset"] == len(first["text"]) == 64 * 1024  # the default bound
        assert set(first["text"]) == {"x", "\n"}
        page = c.get(f"/v1/turns/{tid}/output", params={"offset": (2 << 20) - 10, "limit": 1 << 20}).json()
        assert page["text"] == "x" * 9 + "\n" and page["next_offset"] == 2 << 20
        assert c.get(f"/v1/turns/{tid}/output", params={"limit": (1 << 20) + 1}).status_code == 400
        assert c.get(f"/v1/turns/{tid}/output", params={"offset": "-1"}).status_code == 400
        assert c.get("/v1/turns/01M80G34PMMFJ1N1BN5GV52C57/output").status_code == 404
        assert c.get("/v1/turns/..%2F..%2Fetc/output").status_code in (400, 404)
        assert c.post(f"/v1/turns/{tid}/output").status_code == 405
        quiet = c.post("/v1/turns", json={"agent": "count", "input": {"n": 1}}).json()["turn_id"]
        wait_for(lambda: c.get(f"/v1/turns/{quiet}").json()["status"] == "succeeded", 30, 0.02)
        assert c.get(f"/v1/turns/{quiet}/output").json() | {"turn_id": ""} == {
            "turn_id": "", "offset": 0, "next_offset": 0, "size": 0, "dropped": 0, "text": ""}


@pytest.mark.timeout(60)
def test_usage_reports_running_turns_memory_and_seq(daemon: Daemon) -> None:
    with daemon.http(30) as c:
        tid = c.post("/v1/turns", json={"agent": "wait_forever"}).json()["turn_id"]
        wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["status"] == "running", 30, 0.02)
        usage = c.get("/v1/turns/usage").json()["turns"]
        assert list(usage) == [tid]
        assert usage[tid]["rss_bytes"] > 1 << 20 and usage[tid]["processes"] >= 1
        assert usage[tid]["last_seq"] == c.get(f"/v1/turns/{tid}").json()["last_seq"]
        c.post(f"/v1/turns/{tid}/cancel", json={})
        wait_for(lambda: c.get(f"/v1/turns/{tid}").json()["status"] == "cancelled", 30, 0.02)
        assert c.get("/v1/turns/usage").json() == {"turns": {}}