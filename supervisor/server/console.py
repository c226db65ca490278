"""The operator console: ``GET /ui`` (static files in the package) and the two
small read-only routes it needs beyond the API: per-turn memory of running
turns, and a turn's captured stdout/stderr, bounded.

The page itself holds no data, so it is served without the token; every API
call it makes carries the token (see ``docs/SECURITY.md``).
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import msgspec
import psutil
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from supervisor.embedded import Supervisor
from supervisor.errors import InvalidRequest
from supervisor.ids import validate_turn_id

UI_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
            "app.css": "text/css; charset=utf-8"}
UI_PATHS = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in UI_FILES)})
OUTPUT_DEFAULT, OUTPUT_MAX = 64 * 1024, 1 << 20
# Defence in depth behind textContent: no inline script, nothing from elsewhere.
_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_json = msgspec.json.Encoder()


def _ui_file(name: str) -> bytes:
    return (resources.files("supervisor.server") / "ui" / name).read_bytes()


async def ui(request: Request) -> Response:
    name = request.url.path.removeprefix("/ui").strip("/") or "index.html"
    return Response(await run_in_threadpool(_ui_file, name), media_type=UI_FILES[name], headers=_HEADERS)


def tree_usage(root_pid: int, root_create_time: float) -> tuple[int, int]:
    """(RSS bytes, process count) of a turn's tree, read-only (pid reuse checked)."""
    try:
        root = psutil.Process(root_pid)
        if abs(root.create_time() - root_create_time) > 0.01:
            return 0, 0
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return rss, len(procs)


class Console:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def _usage(self) -> dict[str, Any]:
        usage = {}
        for turn_id, pid, ctime, last_seq in self.sup.table.running_trees():
            rss, count = tree_usage(pid, ctime)
            usage[turn_id] = {"rss_bytes": rss, "processes": count, "last_seq": last_seq}
        return {"turns": usage}

    async def usage(self, request: Request) -> Response:
        """Memory and last seq of each running turn (the list polls it while turns run)."""
        return Response(_json.encode(await run_in_threadpool(self._usage)), media_type="application/json")

    def _output(self, turn_id: str, offset: int, limit: int) -> dict[str, Any]:
        info = self.sup.status(turn_id)  # unknown turn: 404
        path = self.sup.output_dir / f"{turn_id}.output"
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(min(offset, size))
                data = f.read(limit)
        except FileNotFoundError:
            size, data = 0, b""
        start = min(offset, size)
        return {"turn_id": turn_id, "offset": start, "next_offset": start + len(data), "size": size,
                "dropped": info.output_dropped, "text": data.decode("utf-8", "replace")}

    async def output(self, request: Request) -> Response:
        """``GET /v1/turns/{id}/output?offset=&limit=``: the captured stdout/stderr, at most
        ``limit`` bytes (64 KiB by default, 1 MiB at most) from ``offset``."""
        turn_id = validate_turn_id(request.path_params["turn_id"])
        offset = _int(request.query_params.get("offset"), "offset", 0, 1 << 62)
        limit = _int(request.query_params.get("limit"), "limit", OUTPUT_DEFAULT, OUTPUT_MAX)
        body = await run_in_threadpool(self._output, turn_id, offset, limit)
        return Response(_json.encode(body), media_type="application/json")


def _int(raw: str | None, name: str, default: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > hi:
        raise InvalidRequest(f"{name} must be an integer in [0, {hi}], got {raw[:32]!r}")
    return int(raw)


def console_routes(sup: Supervisor) -> list[Route]:
    """Listed before the API's ``/v1/turns/{turn_id}`` so ``usage`` is not taken for an id."""
    console = Console(sup)
    return [
        *(Route(path, ui, methods=["GET"]) for path in sorted(UI_PATHS)),
        Route("/v1/turns/usage", console.usage, methods=["GET"]),
        Route("/v1/turns/{turn_id}/output", console.output, methods=["GET"]),
    ]
