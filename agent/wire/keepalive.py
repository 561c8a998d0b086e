"""Dead-peer detection on the agent <-> controller link. A controller or
agent that vanishes without a FIN (power lost, link cut, a firewall that
forgot the flow) leaves an idle connection open forever. Both ends
therefore turn on TCP keepalive: an idle link is probed, so a dead peer is
noticed within DEAD_AFTER seconds and the agent dials again on its
reconnect schedule while it keeps enforcing what it has.

No TCP_USER_TIMEOUT: since Linux 5.x it also ends a connection whose peer
advertises a zero window for that long, and an agent applying a
million-entry snapshot stops reading for longer than any useful timeout
(the controller would cut it mid-snapshot and start over). A busy link to
a dead peer is ended by TCP's retransmission limit instead."""

from __future__ import annotations

import socket

IDLE_SECONDS = 15           # silence before the first probe
PROBE_INTERVAL_SECONDS = 5  # between unanswered probes
PROBES = 3                  # unanswered probes before the connection is dropped
DEAD_AFTER = IDLE_SECONDS + PROBE_INTERVAL_SECONDS * PROBES


def detect_dead_peer(sock, idle: float = IDLE_SECONDS, interval: float = PROBE_INTERVAL_SECONDS,
                     probes: int = PROBES) -> None:
    """Keepalive on a TCP socket (a socket.socket or asyncio's
    TransportSocket); other sockets are left alone."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
