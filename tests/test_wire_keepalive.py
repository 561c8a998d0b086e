"""Dead-peer detection on the controller link (agent/wire/keepalive.py),
through real TCP between two lab namespaces: the far end is made to vanish
silently (nftables drops everything it receives, no RST, no FIN), and the
end with keepalive notices within its bound while an end without keeps
waiting. Then both ends of a real TLS link (serve / connect) carry it."""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
import time

import pytest

from agent.lab.topology import Topology, in_netns
from agent.wire import keepalive
from netns_thread import in_netns_thread

SERVER, CLIENT, PORT = "192.0.2.201", "192.0.2.202", 7411


@pytest.fixture
def pair():
    tag = secrets.token_hex(2)
    t = Topology(tag, ("a", "b"))
    t.veth("a", f"ewka{tag}", "b", f"ewkb{tag}")
    t.address("a", f"ewka{tag}", f"{CLIENT}/24")
    t.address("b", f"ewkb{tag}", f"{SERVER}/24")
    t.link_up("a", f"ewka{tag}")
    t.link_up("b", f"ewkb{tag}")
    t.up()
    try:
        yield t
    finally:
        t.down()


def _listen() -> socket.socket:
    return socket.create_server((SERVER, PORT), backlog=4)


def _dial(with_keepalive: bool) -> socket.socket:
    sock = socket.create_connection((SERVER, PORT), timeout=5)
    if with_keepalive:
        keepalive.detect_dead_peer(sock, idle=1, interval=1, probes=2)
    return sock


def _wait_for_error(sock: socket.socket, limit: float) -> tuple[float, int | None]:
    """Seconds until recv failed and its errno; (limit, None) if it still waits."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        sock.recv(1)
    except OSError as err:      # the kernel's ETIMEDOUT is a TimeoutError too: only the socket's own has no errno
        return (limit, None) if err.errno is None else (time.monotonic() - started, err.errno)
    return time.monotonic() - started, 0            # an orderly close: not what a vanished peer does


def test_a_peer_that_vanishes_silently_is_noticed_within_the_bound(pair):
    server = in_netns_thread(pair.ns["b"], _listen)
    try:
        probed = in_netns_thread(pair.ns["a"], lambda: _dial(True))
        plain = in_netns_thread(pair.ns["a"], lambda: _dial(False))
        accepted = [server.accept()[0] for _ in range(2)]
        # the far end vanishes: everything it receives is dropped, it answers nothing
        in_netns(pair.ns["b"], ["nft", "-f", "-"], input="table inet vanish { chain input { type filter hook input "
                 "priority -400; policy drop; }; }")
        seconds, code = _wait_for_error(probed, 15)
        assert code == errno.ETIMEDOUT, (seconds, code)
        assert seconds <= 1 + 2 * 1 + 2        # idle + probes x interval, and scheduling slack
        # without keepalive the idle connection waits on, none the wiser
        assert _wait_for_error(plain, 4) == (4, None)
        for s in (probed, plain, *accepted):
            s.close()
    finally:
        server.close()


def test_both_ends_of_a_controller_link_carry_it(tmp_path):
    from agent.wire import PROTOCOL_VERSION, BundleVerifier, Welcome
    from agent.wire.asyncio_client import connect
    from agent.wire.asyncio_server import serve
    from agent.wire.tls import NodeAuthority, client_context, server_context
    from wire_peers import hello, new_key

    ca = NodeAuthority.create(tmp_path / "ca")
    server_cert = ca.issue_controller("controller-1", ["127.0.0.1"])
    node = ca.issue_node("edge-1")
    seen = {}

    async def handler(link):
        seen["controller"] = _options(link._peer.writer.get_extra_info("socket"))
        link.send(Welcome(PROTOCOL_VERSION, "controller-1", 0))
        await link.next_event()         # the agent's close

    async def main():
        server = await serve(handler, "127.0.0.1", 0, controller="controller-1",
                             ssl_context=server_context(server_cert.cert_path, server_cert.key_path, ca.cert_path))
        port = server.sockets[0].getsockname()[1]
        async with server:
            link = await connect("127.0.0.1", port, hello=hello("edge-1"),
                                 ssl_context=client_context(node.cert_path, node.key_path, ca.cert_path),
                                 verifier=BundleVerifier([new_key().public_key()]))
            seen["agent"] = _options(link._peer.writer.get_extra_info("socket"))
            await link.close()
            await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(main(), 30))
    wanted = (1, keepalive.IDLE_SECONDS, keepalive.PROBE_INTERVAL_SECONDS, keepalive.PROBES, 0)
    assert seen == {"agent": wanted, "controller": wanted}


def _options(sock) -> tuple[int, ...]:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))      # 0: not set (see keepalive.py)
