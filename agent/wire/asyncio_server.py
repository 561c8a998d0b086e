"""The controller's asyncio transport: accept agents over mutual TLS, take
the node name from each client certificate, wait for a matching hello, and
run `handler(link)` with an AgentLink (transport.py) for that agent."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Awaitable, Callable

from agent.wire.asyncio_stream import StreamPeer
from agent.wire.connection import ConnectionClosed, ControllerConnection
from agent.wire.messages import CloseReason, Hello
from agent.wire.outbox import PRIORITY_POLICY
from agent.wire.tls import peer_node_name

log = logging.getLogger("edgewarden.wire")
HELLO_TIMEOUT = 10.0


class AsyncioAgentLink:
    def __init__(self, peer: StreamPeer, hello: Hello):
        self._peer, self.hello, self.node = peer, hello, hello.node

    @property
    def connection(self) -> ControllerConnection:
        return self._peer.conn

    async def next_event(self):
        return await self._peer.next_event()

    def send(self, msg) -> None:
        self._peer.queue(msg)

    def send_snapshot(self, encoded) -> None:
        self._peer.put_frames(self._peer.conn.snapshot_frames(encoded), PRIORITY_POLICY)

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None:
        await self._peer.close(reason, message)


async def serve(handler: Callable[[AsyncioAgentLink], Awaitable[None]], host: str, port: int, *,
                ssl_context: ssl.SSLContext, controller: str,
                authorize: Callable[[str], str | None] | None = None) -> asyncio.base_events.Server:
    """Start listening. `authorize(node)` returns None to let a node in, or
    the reason it may not (revoked, unknown): that connection is closed
    with bad_credentials and the reason."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        node = peer_node_name(writer.get_extra_info("ssl_object"))
        peer = StreamPeer(ControllerConnection(controller, expected_node=node), reader, writer)
        try:
            refusal = "no client certificate" if node is None else authorize(node) if authorize else None
            if refusal:
                await peer.close(CloseReason.BAD_CREDENTIALS, f"node {node!r}: {refusal}")
                return
            try:
                event = await asyncio.wait_for(peer.next_event(), HELLO_TIMEOUT)
            except asyncio.TimeoutError:
                await peer.close(CloseReason.UNEXPECTED_MESSAGE, f"no hello within {HELLO_TIMEOUT:.0f} s")
                return
            if isinstance(event, ConnectionClosed):
                log.info("agent %s closed before its hello: %s (%s)", node, event.reason, event.message)
                return
            link = AsyncioAgentLink(peer, event)
            await handler(link)
        except Exception:   # one agent's failure never takes the server down
            log.exception("agent %s: connection handler failed", node)
            await peer.close(CloseReason.SHUTDOWN, "controller error")
        finally:
            # a handler that returns without closing: flush what it queued, then close normally
            await peer.close(CloseReason.NORMAL, "session ended by the controller")

    return await asyncio.start_server(on_client, host, port, ssl=ssl_context, limit=1 << 21)
