"""Client and AsyncClient against a real daemon, including a daemon restart mid-follow."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from daemon_fixture import Daemon, start_daemon, stopped

from ipc import events as ev
from supervisor.control.client import AsyncClient, Client
from supervisor.errors import InvalidCursor, SessionBusy, UnknownAgent, UnknownTurn
from supervisor.turns import TurnStatus


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from stopped(start_daemon(tmp_path))


@pytest.mark.timeout(60)
def test_the_same_verbs_as_the_supervisor(daemon: Daemon) -> None:
    with Client(socket=daemon.socket) as client:
        turn = client.start_turn("count", {"n": 30}, session_id="s-1")
        assert turn.status in (TurnStatus.STARTING, TurnStatus.RUNNING)
        got = list(client.events(turn.turn_id))
        assert [s for s, _ in got] == list(range(1, 33))
        assert isinstance(got[-1][1], ev.RunFinished) and got[-1][1].result == {"n": 30}
        assert client.status(turn.turn_id).status is TurnStatus.SUCCEEDED
        page = client.export(turn.turn_id, after=30, limit=10)
        assert [s for s, _ in page.items()] == [31, 32] and not page.truncated
        assert [t.turn_id for t in client.list_turns(session_id="s-1")] == [turn.turn_id]
        assert "count" in client.agents()
        assert client.wait(turn.turn_id).status is TurnStatus.SUCCEEDED
        with pytest.raises(UnknownAgent):
            client.start_turn("nope")
        with pytest.raises(UnknownTurn):
            client.status("01M80G34PMMFJ1N1BN5GV52C57")
        with pytest.raises(InvalidCursor):
            list(client.events(turn.turn_id, after=99))
        busy = client.start_turn("sleep", {"seconds": 30}, session_id="s-2")
        with pytest.raises(SessionBusy) as err:
            client.start_turn("sleep", session_id="s-2")
        assert err.value.active_turn_id == busy.turn_id
        assert client.cancel(busy.turn_id).cancel_requested
        assert client.wait(busy.turn_id, timeout=10).status is TurnStatus.CANCELLED


@pytest.mark.timeout(60)
def test_events_resume_across_a_daemon_restart_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, shutdown_mode="drain", shutdown_timeout_s=20.0)
    seqs: list[int] = []
    last: list[ev.Event] = []
    with Client(socket=d.socket) as client:
        turn = client.start_turn("paced", {"n": 600, "interval": 0.004})

        def follow() -> None:
            for seq, event in client.events(turn.turn_id, reconnect_s=30):
                seqs.append(seq)
                last[:] = [event]

        reader = threading.Thread(target=follow)
        reader.start()
        wait_for(lambda: len(seqs) > 50)
        # drain: the turn finishes while the stream was told to go away
        assert d.stop(timeout=30) == 0
        d2 = start_daemon(tmp_path, shutdown_mode="drain")
        try:
            reader.join(30)
            assert not reader.is_alive()
        finally:
            assert d2.stop() == 0
    assert seqs == list(range(1, 603))
    assert isinstance(last[0], ev.RunFinished) and last[0].outcome.type == "success"


@pytest.mark.timeout(60)
def test_async_client(daemon: Daemon) -> None:
    async def main() -> list[int]:
        async with AsyncClient(socket=daemon.socket) as client:
            turn = await client.start_turn("count", {"n": 40})
            seqs = [s async for s, _ in client.events(turn.turn_id)]
            info = await client.status(turn.turn_id)
            assert info.status is TurnStatus.SUCCEEDED
            page = await client.export(turn.turn_id, limit=2)
            assert [s for s, _ in page.items()] == [41, 42]
            assert (await client.cancel(turn.turn_id)).status is TurnStatus.SUCCEEDED
            assert "count" in await client.agents()
            assert [t.turn_id for t in await client.list_turns()] == [turn.turn_id]
            return seqs

    assert asyncio.run(main()) == list(range(1, 43))


@pytest.mark.timeout(20)
def test_a_connection_reset_mid_request_is_daemon_unavailable(tmp_path: Path) -> None:
    # What `runnerctl shutdown` met while the daemon closed: accepted, then reset.
    import select
    import socket

    from supervisor.control.client import DaemonUnavailable

    path = str(tmp_path / "reset.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def reset_each() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            select.select([conn], [], [], 10)  # the request is in, and left unread:
            conn.close()  # closing over unread data resets the connection (ECONNRESET)

    threading.Thread(target=reset_each, daemon=True).start()
    try:
        with Client(socket=path, timeout=5) as c:
            with pytest.raises(DaemonUnavailable):
                c.health()

        async def _async() -> None:
            async with AsyncClient(socket=path, timeout=5) as ac:
                await ac.status("01AAAAAAAAAAAAAAAAAAAAAAAA")
        with pytest.raises(DaemonUnavailable):
            asyncio.run(_async())
    finally:
        server.close()
