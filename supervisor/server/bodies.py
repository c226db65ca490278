"""Request bodies: read bounded in bytes and in nesting depth, decoded into a type; every route uses it."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request

from supervisor.errors import InvalidRequest, RunnerdError

MAX_JSON_DEPTH = 64  # of a request body; deeper is a 400, never a RecursionError


class BodyTooLarge(RunnerdError):
    code = "body_too_large"
    status = 413


async def read_json(request: Request, kind: Any, max_bytes: int) -> Any:
    """The body as ``kind``: 413 past ``max_bytes`` (declared or read), 400 when malformed or too deep."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise BodyTooLarge(f"request body over {max_bytes} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        body = b"{}"
    try:
        value = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"request body nested deeper than {MAX_JSON_DEPTH}") from None
    _check_depth(value, MAX_JSON_DEPTH)
    return value


def _check_depth(value: Any, limit: int) -> None:
    """Iteratively, so a deep value costs no stack: no container nested deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, msgspec.Struct)):
            if depth >= limit:
                raise InvalidRequest(f"request body nested deeper than {limit}")
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) \
                else (getattr(item, f) for f in item.__struct_fields__)
            stack.extend((child, depth + 1) for child in children)
