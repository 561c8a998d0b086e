"""The agent's asyncio transport: dial the controller over mutual TLS, send
the hello, wait for the welcome, then hand events and sends through
(a ControllerLink, see transport.py)."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from typing import Callable, Iterator

from agent.wire.asyncio_stream import StreamPeer
from agent.wire.connection import AgentConnection, ConnectionClosed
from agent.wire.messages import CloseReason, Hello, Welcome
from agent.wire.signing import BundleVerifier


# What the kernel may hold for the agent unread. The agent decodes a snapshot
# more slowly than loopback or a LAN delivers it; a deep receive buffer would
# hold, ahead of an emergency block, chunks the controller's outbox could
# still have put behind it. 256 KiB (the kernel doubles it) keeps ~2 chunks
# in flight, enough for the agent's decode rate at 20 ms of round trip.
RECEIVE_BUFFER = 256 * 1024


async def _dial(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)   # before connect: sets the window
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as err:
            sock.close()
            error = err
    raise error or OSError(f"cannot resolve {host}")


def reconnect_delays(first: float = 0.5, cap: float = 30.0,
                     rand: Callable[[], float] = random.random) -> Iterator[float]:
    """Seconds to wait before each reconnect: doubling from `first` up to
    `cap`, half of it random, so a fleet that lost its controller at once
    does not come back at once. Start a new iterator after a good session."""
    attempt = 0
    while True:
        ceiling = min(cap, first * 2 ** attempt)
        yield ceiling / 2 + rand() * ceiling / 2
        attempt = min(attempt + 1, 64)


class ControllerRefused(ConnectionError):
    """The controller closed the connection before the welcome; `reason` is its CloseReason value."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"controller closed the connection ({reason}): {message}")


class AsyncioControllerLink:
    def __init__(self, peer: StreamPeer, welcome: Welcome):
        self._peer, self.welcome = peer, welcome

    @property
    def connection(self) -> AgentConnection:
        return self._peer.conn

    async def next_event(self):
        return await self._peer.next_event()

    async def send(self, msg) -> None:
        self._peer.queue(msg)

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None:
        await self._peer.close(reason, message)


async def connect(host: str, port: int, *, ssl_context: ssl.SSLContext, hello: Hello, verifier: BundleVerifier,
                  server_hostname: str | None = None, timeout: float = 10.0) -> AsyncioControllerLink:
    """An open link to the controller; ControllerRefused if it closes before the welcome."""
    async def open_stream():
        return await asyncio.open_connection(sock=await _dial(host, port), ssl=ssl_context,
                                             server_hostname=server_hostname or host, limit=1 << 21)
    reader, writer = await asyncio.wait_for(open_stream(), timeout)
    peer = StreamPeer(AgentConnection(verifier), reader, writer)
    peer.queue(hello)
    try:
        event = await asyncio.wait_for(peer.next_event(), timeout)
    except asyncio.TimeoutError:
        await peer.close(CloseReason.UNEXPECTED_MESSAGE, f"no welcome within {timeout:.0f} s")
        raise
    if isinstance(event, ConnectionClosed):
        raise ControllerRefused(event.reason, event.message)
    return AsyncioControllerLink(peer, event)
