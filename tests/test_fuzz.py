"""Property-based fuzzing of /v1 against a real daemon: no 5xx, every error is JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_fixture import Daemon, start_daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FINISHED: dict[str, str] = {}
UNKNOWN_ID = "01M80G34PMMFJ1N1BN5GV52C57"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
turn_ids = st.sampled_from(["finished", UNKNOWN_ID, "../../etc/passwd", "", "A" * 300, "01m80g34pmmfj1n1bn5gv52c5"]) | texts
templates = st.sampled_from(["/v1/turns", "/v1/turns/{id}", "/v1/turns/{id}/events", "/v1/turns/{id}/export",
                             "/v1/turns/{id}/cancel", "/v1/prune", "/v1/agents", "/v1/health", "/metrics",
                             "/v1/openapi.json", "/v1/{id}", "/{id}"])
start_bodies = st.fixed_dictionaries(
    {}, optional={"agent": st.sampled_from(["result_value", "nope", ""]) | json_values, "input": json_values,
                  "session_id": texts | json_values, "timeout_s": json_values,
                  "multitask": st.sampled_from(["reject", "enqueue", "interrupt"]) | json_values,
                  "reason": json_values, "dry_run": json_values, "extra": json_values})
bodies = (st.none() | st.binary(max_size=200) | start_bodies.map(lambda d: json.dumps(d).encode())
          | json_values.map(lambda v: json.dumps(v).encode()))
queries = st.dictionaries(st.sampled_from(["limit", "after", "compact", "status", "session_id"]),
                          texts | st.integers(-5, 10**20).map(str), max_size=3)
headers = st.dictionaries(st.sampled_from(["last-event-id", "content-type", "content-length-x"]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30), max_size=2)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("fuzz"), top={"max_running_turns": 4, "max_queued": 8})
    with d.http() as c:
        turn = c.post("/v1/turns", json={"agent": "count", "input": {"n": 3}}).json()
        c.get(f"/v1/turns/{turn['turn_id']}/events")
        FINISHED["id"] = turn["turn_id"]
    try:
        yield d
    finally:  # the daemon first: a test run alone may never have opened the client
        code = d.stop()
        if (client := CLIENT.pop("c", None)) is not None:
            client.close()
    assert code == 0


CLIENT: dict[str, httpx.Client] = {}


@pytest.mark.timeout(240)
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), template=templates,
       turn_id=turn_ids, query=queries, body=bodies, extra_headers=headers)
def test_no_request_gets_a_5xx_and_every_error_is_json(daemon: Daemon, method: str, template: str, turn_id: str,
                                                        query: dict[str, str], body: bytes | None,
                                                        extra_headers: dict[str, str]) -> None:
    if turn_id == "finished":
        turn_id = FINISHED["id"]
    path = template.replace("{id}", turn_id)
    c = CLIENT.setdefault("c", daemon.http(timeout=10))
    try:
        r = c.request(method, path, params=query, content=body, headers=extra_headers)
    except (httpx.InvalidURL, httpx.LocalProtocolError):
        return  # the client would not even send it
    assert r.status_code < 500, (method, path, query, body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        payload: Any = r.json()
        assert isinstance(payload["error"]["code"], str) and payload["error"]["message"]


@pytest.mark.timeout(60)
def test_the_daemon_still_serves_after_the_fuzz(daemon: Daemon) -> None:
    with daemon.http() as c:
        assert c.get("/v1/health").status_code == 200
        spec = c.get("/v1/openapi.json").json()
        assert spec["openapi"].startswith("3.1") and "/v1/turns/{turn_id}/export" in spec["paths"]
        turn = c.post("/v1/turns", json={"agent": "result_value", "input": [1, 2]}).json()
        body = c.get(f"/v1/turns/{turn['turn_id']}/events").text
        assert '"result":{"echo":[1,2]}' in body


def test_openapi_document_names_every_route(tmp_path: Path) -> None:
    from supervisor.server.openapi import build
    spec = build()
    for path in ("/v1/turns", "/v1/turns/{turn_id}", "/v1/turns/{turn_id}/events", "/v1/turns/{turn_id}/export",
                 "/v1/turns/{turn_id}/cancel", "/v1/prune", "/v1/agents", "/v1/health"):
        assert path in spec["paths"]
    assert {"StartBody", "TurnInfo", "ExportPage", "ErrorBody"} <= set(spec["components"]["schemas"])
