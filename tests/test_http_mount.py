"""The ASGI app mounted in a host Starlette app, with the host owning the Supervisor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from conftest import make_config
from starlette.applications import Starlette
from starlette.routing import Mount

from supervisor.embedded import Supervisor
from supervisor.server.http import create_app


@pytest.mark.timeout(30)
def test_a_host_mounts_the_api(tmp_path: Path) -> None:
    with Supervisor(make_config(tmp_path)) as sup:
        host = Starlette(routes=[Mount("/agents-api", app=create_app(sup))])

        async def drive() -> None:
            transport = httpx.ASGITransport(app=host)
            async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
                r = await client.post("/agents-api/v1/turns", json={"agent": "count", "input": {"n": 5}})
                assert r.status_code == 201
                tid = r.json()["turn_id"]
                await asyncio.to_thread(sup.wait, tid, 10)
                body = (await client.get(f"/agents-api/v1/turns/{tid}/events")).text
                ids = [int(frame.split("\n")[0]) for frame in body.split("id: ")[1:]]
                assert ids == list(range(1, 8))
                page = (await client.get(f"/agents-api/v1/turns/{tid}/export", params={"after": 5})).json()
                assert [e["seq"] for e in page["events"]] == [6, 7]
                bad = (await client.get("/agents-api/v1/turns/bad")).json()
                assert bad["error"]["code"] == "invalid_turn_id"

        asyncio.run(drive())
