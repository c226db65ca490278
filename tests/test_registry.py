"""supervisor.runtime.registry: bounded memory, sync and async waiters."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import wait_for

from supervisor.errors import UnknownTurn
from supervisor.runtime.registry import StreamRegistry


def _line(seq: int, size: int = 10) -> bytes:
    return b'{"seq":%d,"v":"%s"}' % (seq, b"x" * size)


def test_memory_is_bounded_in_bytes_and_says_when_to_use_the_log() -> None:
    reg = StreamRegistry(buffer_bytes=1000)
    reg.open("t")
    for seq in range(1, 101):
        reg.append("t", [_line(seq, 80)])
    _, held = reg.stats()
    assert held <= 1000
    assert reg.read("t", 0, 10).events is None  # seq 1 was dropped from memory
    tail = reg.read("t", 95, 10)
    assert tail.events == [_line(s, 80) for s in range(96, 101)] and tail.last_seq == 100
    assert reg.tail("t", 3).events == [_line(s, 80) for s in (98, 99, 100)]
    assert reg.tail("t", 100).events is None


def test_a_sync_waiter_wakes_on_append_and_on_end() -> None:
    reg = StreamRegistry(buffer_bytes=1 << 20)
    reg.open("t")
    woke = threading.Event()

    def waiter() -> None:
        if reg.wait("t", 0, 60):  # far beyond the join below: only a wake-up ends it in time
            woke.set()

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    wait_for(lambda: reg._cond._waiters)  # type: ignore[attr-defined]  # blocked: the append must wake it
    reg.append("t", [_line(1)])
    th.join(10)
    assert woke.is_set()
    assert reg.wait("t", 1, 0.01) is False  # nothing new: times out
    reg.append("t", [_line(2)], end=True)
    assert reg.wait("t", 2, 10) is True  # ended: no more waiting


@pytest.mark.timeout(10)
def test_an_async_waiter_wakes_from_another_thread() -> None:
    reg = StreamRegistry(buffer_bytes=1 << 20)
    reg.open("t")

    async def main() -> int:
        task = asyncio.ensure_future(reg.wait_async("t", 0))
        deadline = asyncio.get_running_loop().time() + 5
        while not reg._streams["t"].async_waiters:  # registered: only the append can wake it now
            assert asyncio.get_running_loop().time() < deadline and not task.done()
            await asyncio.sleep(0.001)
        appender = threading.Thread(target=reg.append, args=("t", [_line(1)]))
        appender.start()
        await asyncio.wait_for(task, 5)
        appender.join(5)
        return reg.position("t")[0]

    assert asyncio.run(main()) == 1


def test_unknown_turn() -> None:
    with pytest.raises(UnknownTurn):
        StreamRegistry(buffer_bytes=1).read("nope", 0, 1)


def test_ended_turns_lose_their_memory_but_keep_their_position() -> None:
    reg = StreamRegistry(buffer_bytes=1 << 20)
    reg.open("t")
    reg.append("t", [_line(1), _line(2)], end=True)
    assert reg.evict_ended(older_than_s=-1) == ["t"]
    assert reg.read("t", 0, 10).events is None
    assert reg.position("t") == (2, True)
