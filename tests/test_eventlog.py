"""supervisor.storage.eventlog: append, read after a cursor, tail, torn lines, metadata."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import msgspec
import pytest

from supervisor.errors import InvalidTurnId, StateDirError
from supervisor.ids import new_turn_id
from supervisor.storage.eventlog import FileEventLog
from supervisor.storage.turnfiles import FileTurnStore, line_seq
from supervisor.turns import TurnInfo, TurnStatus


def _lines(n: int, rng: random.Random) -> list[bytes]:
    # Mostly small, with a few lines far larger than the 64 KiB read block.
    return [b'{"seq":%d,"type":"CUSTOM","name":"n","value":"%s"}'
            % (i, b"x" * (rng.randint(0, 300) if i % 997 else 150_000)) for i in range(1, n + 1)]


@pytest.fixture
def filled(tmp_path: Path) -> tuple[FileEventLog, str, list[bytes]]:
    log = FileEventLog(tmp_path)
    turn_id = new_turn_id()
    log.create(turn_id)
    lines = _lines(5000, random.Random(1))
    for i in range(0, len(lines), 37):
        log.append(turn_id, lines[i:i + 37])
    return log, turn_id, lines


def test_read_after_and_tail_match_the_file_for_random_cursors(filled: tuple[FileEventLog, str, list[bytes]]) -> None:
    log, turn_id, lines = filled
    rng = random.Random(2)
    for _ in range(300):
        after = rng.randint(0, len(lines))
        limit = rng.randint(1, 400)
        upto = rng.randint(after, len(lines))
        assert log.read_after(turn_id, after, limit, upto) == lines[after:min(after + limit, upto)]
        assert log.tail(turn_id, limit, upto) == lines[max(0, upto - limit):upto]


def test_a_torn_last_line_is_never_returned_and_reopen_cuts_it(
        filled: tuple[FileEventLog, str, list[bytes]]) -> None:
    log, turn_id, lines = filled
    os.write(log._fds[turn_id], b'{"seq":5001,"type":"CUS')  # a write cut off by a crash
    assert log.tail(turn_id, 3, 10**9) == lines[-3:]
    assert log.read_after(turn_id, 4998, 10, 10**9) == lines[4998:]
    log.close(turn_id)
    assert log.reopen(turn_id) == 5000
    log.append(turn_id, [b'{"seq":5001,"type":"CUSTOM","name":"n","value":1}'])
    assert [line_seq(x) for x in log.tail(turn_id, 2, 10**9)] == [5000, 5001]


def test_metadata_is_replaced_atomically(tmp_path: Path) -> None:
    log = FileEventLog(tmp_path)
    records = FileTurnStore(log)
    info = TurnInfo(turn_id=new_turn_id(), agent="a")
    log.create(info.turn_id)
    # Two versions of very different sizes, rewritten while another thread reads:
    # a reader sees the one or the other, whole, never an empty or torn file.
    short = msgspec.structs.replace(info, status=TurnStatus.RUNNING)
    long = msgspec.structs.replace(info, status=TurnStatus.SUCCEEDED, cancel_reason="r" * 50_000)
    stop = threading.Event()
    seen: list[object] = []
    records.put(short, durable=False)

    def read() -> None:
        while not stop.is_set():
            seen.append(records.get(info.turn_id))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(600):
            records.put(long if i % 2 else short, durable=False)
    finally:
        stop.set()
        reader.join(10)
    assert seen and all(s == short or s == long for s in seen), {type(s) for s in seen}
    records.put(long)
    assert records.get(info.turn_id) == long
    assert not list(log.dir.glob("*.tmp")) and not list(log.dir.glob(".*.tmp"))
    assert [i.turn_id for i in records.load_all()] == [info.turn_id]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "", "A" * 27, "01M80FP1G25E9EFN7KJ4AG02Z/"])
def test_turn_ids_are_validated_before_touching_files(tmp_path: Path, bad: str) -> None:
    log = FileEventLog(tmp_path)
    with pytest.raises(InvalidTurnId):
        log.read_after(bad, 0, 1, 1)


def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateDirError, match="not usable"):
        FileEventLog(blocker)


def test_reads_are_bounded_in_bytes_but_always_return_one_line(tmp_path: Path) -> None:
    log = FileEventLog(tmp_path)
    turn_id = new_turn_id()
    log.create(turn_id)
    lines = [b'{"seq":%d,"type":"CUSTOM","name":"n","value":"%s"}' % (i, b"x" * 100_000) for i in range(1, 51)]
    log.append(turn_id, lines)
    got = log.read_after(turn_id, 0, 1000, 50, max_bytes=350_000)
    assert got == lines[:3]
    assert log.tail(turn_id, 1000, 50, max_bytes=350_000) == lines[-3:]
    assert log.read_after(turn_id, 10, 1000, 50, max_bytes=1) == [lines[10]]
