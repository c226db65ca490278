"""Turn ids: 26-char ULID-like strings (time-ordered, Crockford base32).

An id is also a file name, so every entry point validates it.
"""

from __future__ import annotations

import os
import re
import time

from supervisor.errors import InvalidSessionId, InvalidTurnId

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TURN_ID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
_ID_RE = re.compile(TURN_ID_PATTERN.rstrip("$") + r"\Z")
SESSION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_SESSION_RE = re.compile(SESSION_PATTERN.rstrip("$") + r"\Z")


def new_turn_id() -> str:
    """48 bits of milliseconds then 80 random bits: sorts by creation time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def validate_turn_id(turn_id: object) -> str:
    if not isinstance(turn_id, str) or not _ID_RE.match(turn_id):
        shown = repr(turn_id)[:40]
        raise InvalidTurnId(f"invalid turn id {shown}: expected 26 characters of Crockford base32")
    return turn_id


def validate_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not _SESSION_RE.match(session_id):
        shown = repr(session_id)[:40]
        raise InvalidSessionId(f"invalid session id {shown}: 1-128 of A-Z a-z 0-9 . _ : -")
    return session_id
