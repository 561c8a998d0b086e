"""The nftables half of the TCP state defences, without traffic: what a
policy needs, the table it renders (checked by nft itself in a throwaway
namespace), and that policies needing nothing do not need nft at all."""

import ipaddress
import secrets
import subprocess

import pytest

from agent.datapath import netfilter
from agent.lab import NETNS_DIR, remove_namespace, run
from agent.policy import policy_from_document


def policy(*tenants):
    return policy_from_document({"revision": 1, "tenants": list(tenants)})


def test_needs_follow_the_policy():
    p = policy(
        {"id": 1, "name": "a", "vips": ["203.0.113.1", "2001:db8::1", {"address": "203.0.113.2", "protocol": "tcp",
                                                                      "port": 443},
                                        {"address": "203.0.113.2", "protocol": "udp", "port": 53}],
         "flood": {"syn_cookies": True}},
        {"id": 2, "name": "b", "vips": ["203.0.113.3"], "flood": {"syn_ack": "track"}},
        {"id": 3, "name": "c", "vips": ["203.0.113.4"]})
    needs = netfilter.needs_of(p)
    ip = ipaddress.ip_address
    assert needs.cookie_addresses == {ip("203.0.113.1"), ip("2001:db8::1")}
    assert needs.cookie_ports == {(ip("203.0.113.2"), 443)}       # a UDP port VIP has no handshake
    assert needs.tracked and not needs.empty
    assert netfilter.needs_of(policy({"id": 3, "name": "c", "vips": ["203.0.113.4"]})).empty
    assert netfilter.table_name("eth0.100-x") == "edgewarden_eth0_100_x"


@pytest.mark.live
def test_the_rendered_table_is_what_nft_accepts_and_replaces_itself():
    needs = netfilter.TcpStateNeeds(frozenset({ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("2001:db8::1")}),
                                    frozenset({(ipaddress.ip_address("203.0.113.2"), 443)}), True)
    ns = f"ew-{secrets.token_hex(3)}-nft"
    try:
        run(["ip", "netns", "add", ns])
        nsenter = ["nsenter", f"--net={NETNS_DIR}/{ns}"]
        for _ in range(2):      # the script replaces an existing table in one transaction
            subprocess.run([*nsenter, "nft", "-f", "-"], input=netfilter.render("ewx0", needs), text=True,
                           check=True, capture_output=True)
        listing = subprocess.run([*nsenter, "nft", "list", "table", "inet", "edgewarden_ewx0"],
                                 capture_output=True, text=True, check=True).stdout
        assert "203.0.113.2 . 443" in listing and "2001:db8::1" in listing
        assert listing.count("synproxy") == 4 and listing.count("notrack") == 4
    finally:
        remove_namespace(ns)


def test_policies_that_need_nothing_do_not_need_nft(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert netfilter.table_exists("ewx0") is False
    netfilter.sync("ewx0", netfilter.TcpStateNeeds())        # nothing to do, and no nft to do it with
    with pytest.raises(netfilter.NetfilterError, match="nftables"):
        netfilter.sync("ewx0", netfilter.TcpStateNeeds(tracked=True))
