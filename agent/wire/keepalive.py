"""Dead-peer detection on the agent <-> controller link. A controller or
agent that vanishes without a FIN (power lost, link cut, a firewall that
forgot the flow) leaves an idle connection open forever, and a busy one
open for TCP's whole retransmission backoff (about 15 minutes). Both ends
therefore turn on TCP keepalive (an idle link is probed) and
TCP_USER_TIMEOUT (data unacknowledged this long closes the connection),
so a dead peer is noticed within DEAD_AFTER seconds and the agent dials
again on its reconnect schedule while it keeps enforcing what it has."""

from __future__ import annotations

import socket

IDLE_SECONDS = 15           # silence before the first probe
PROBE_INTERVAL_SECONDS = 5  # between unanswered probes
PROBES = 3                  # unanswered probes before the connection is dropped
USER_TIMEOUT_SECONDS = 30   # data unacknowledged this long drops the connection
DEAD_AFTER = max(IDLE_SECONDS + PROBE_INTERVAL_SECONDS * PROBES, USER_TIMEOUT_SECONDS)


def detect_dead_peer(sock, idle: float = IDLE_SECONDS, interval: float = PROBE_INTERVAL_SECONDS,
                     probes: int = PROBES, user_timeout: float = USER_TIMEOUT_SECONDS) -> None:
    """Keepalive and the user timeout on a TCP socket (a socket.socket or
    asyncio's TransportSocket); other sockets are left alone."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
