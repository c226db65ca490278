"""One stored line: an event's JSON with ``{"seq":N,`` spliced in front.

The relay, recovery and compaction write lines only through ``splice`` and
``event_line``; every reader takes the seq back with ``line_seq``.
"""

from __future__ import annotations

from ipc import events as ev

SEQ_PREFIX = b'{"seq":'


def splice(seq: int, event_json: bytes) -> bytes:
    """``{"type":…}`` (as the worker encodes it) becomes ``{"seq":N,"type":…}``: no re-encoding."""
    return b'{"seq":%d,' % seq + event_json[1:]


def event_line(seq: int, event: ev.Event) -> bytes:
    return splice(seq, ev.encode_event(event))


def unsplice(line: bytes) -> bytes:
    """The event's own JSON again, without ``seq`` (the inverse of ``splice``)."""
    return b"{" + line[line.index(b",", 7) + 1:]


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


def is_terminal_line(line: bytes, seq: int) -> bool:
    """Is ``line`` the terminal event (``RUN_FINISHED``/``RUN_ERROR``) with this seq?"""
    return line.startswith(b'{"seq":%d,"type":"RUN_' % seq) and not line.startswith(
        b'{"seq":%d,"type":"RUN_STARTED"' % seq)
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
