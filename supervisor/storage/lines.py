"""One stored line: an event's JSON with ``{"seq":N,`` spliced in front, as written by the relay."""

from __future__ import annotations

SEQ_PREFIX = b'{"seq":'


def line_seq(line: bytes) -> int:
    """The seq of one stored line (written first, so no JSON decode is needed)."""
    return int(line[7:line.index(b",", 7)])


def seq_or_none(line: bytes) -> int | None:
    """A corrupt line (not written by the relay, or damaged on disk) has no seq."""
    if not line.startswith(SEQ_PREFIX):
        return None
    try:
        return line_seq(line)
    except ValueError:
        return None
