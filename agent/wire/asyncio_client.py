"""The agent's asyncio transport: dial the controller over mutual TLS, send
the hello, wait for the welcome, then hand events and sends through
(a ControllerLink, see transport.py)."""

from __future__ import annotations

import asyncio
import ssl

from agent.wire.asyncio_stream import StreamPeer
from agent.wire.connection import AgentConnection, ConnectionClosed
from agent.wire.messages import CloseReason, Hello, Welcome
from agent.wire.signing import BundleVerifier


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
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=server_hostname or host,
                                limit=1 << 21), timeout)
    peer = StreamPeer(AgentConnection(verifier), reader, writer)
    peer.queue(hello)
    event = await asyncio.wait_for(peer.next_event(), timeout)
    if isinstance(event, ConnectionClosed):
        raise ControllerRefused(event.reason, event.message)
    return AsyncioControllerLink(peer, event)
