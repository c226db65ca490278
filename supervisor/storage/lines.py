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


def bound_page(lines: list[bytes], max_bytes: int, *, keep_tail: bool) -> tuple[list[bytes], bool]:
    """At most ``max_bytes`` of ``lines`` (but always one), from the head or the tail;
    and whether any were cut."""
    total = 0
    ordered = reversed(lines) if keep_tail else iter(lines)
    count = 0
    for line in ordered:
        total += len(line) + 1
        if count and total > max_bytes:
            break
        count += 1
    if count == len(lines):
        return lines, False
    return (lines[len(lines) - count:] if keep_tail else lines[:count]), True
