"""The daemon's TCP listener gives asyncio (and so uvicorn) connections with Nagle off."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from supervisor.config import ServerConfig
from supervisor.server.daemon import bind_tcp


@pytest.mark.timeout(30)
def test_accepted_tcp_connections_have_tcp_nodelay(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("nodelay-token-0123456789")
    sock, _ = bind_tcp(ServerConfig(tcp="127.0.0.1:0", token_file=str(token)))

    async def accept_one() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server_side = writer.get_extra_info("socket")
            accepted.set_result(server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
            return value

    assert asyncio.run(accept_one()) != 0
