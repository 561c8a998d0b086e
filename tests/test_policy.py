"""The policy document (validation, TOML and document round trips), its
compilation into map and block-table contents, and the diff application of
compiled policies to maps (in-memory fakes with the BpfMap interface for the
regular maps, the kernel's own map-in-map tables for the block lists)."""

import dataclasses
import errno
import ipaddress
import socket
import struct
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._libbpf import ffi
from agent._prefixes import EntryTable, PrefixSet
from agent.blocklist import compile_prefixes_reference
from agent.datapath import abi, blocktables
from agent.datapath.apply import apply_compiled, apply_policy_to_maps, live_slots
from agent.datapath.blocktables import SwappableTable
from agent.datapath.program import LoadedProgram
from agent.policy import (
    Policy,
    PolicyError,
    PortRule,
    Tenant,
    TenantState,
    Vip,
    load_policy,
    policy_from_document,
    policy_to_document,
    policy_to_toml,
    save_policy,
)
from agent.policy.compile import (
    BLOCK_TABLES,
    POLICY_MAPS,
    SlotsExhausted,
    assign_slots,
    compile_policy,
    pack_u32,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "configs" / "policy.example.toml"
MAX_ID = 2**32 - 1
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ip = ipaddress.ip_address
net = ipaddress.ip_network


def errors_of(doc) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy_from_document(doc, "test")
    assert info.value.source == "test"
    assert info.value.errors, "a PolicyError must list at least one error"
    return info.value.errors


def tenant(**fields) -> dict:
    return {"id": 1, "name": "t", **fields}


def one_tenant_errors(**fields) -> list[str]:
    return errors_of({"tenants": [tenant(**fields)]})


def u32(value: bytes) -> int:
    assert len(value) == 4
    return ffi.from_buffer("__u32 *", value)[0]


# ==========================================================================
# The example configuration


def test_example_config_loads():
    policy = load_policy(EXAMPLE)
    assert policy.revision == 1
    assert policy.blocked_sources == (net("198.51.100.128/25"), net("2001:db8:bad::/48"))
    shop, video, spammer = policy.tenants
    assert shop == Tenant(
        1, "shop", TenantState.ACTIVE,
        vips=(Vip(ip("203.0.113.10")), Vip(ip("2001:db8:10::10"))),
        blocked_ports=(PortRule("tcp", 25, 25), PortRule("udp", 11211, 11211)),
        blocked_sources=(net("198.51.100.64/26"),),
    )
    assert video == Tenant(2, "video", TenantState.ACTIVE, vips=(Vip(ip("203.0.113.20"), "tcp", 443),))
    assert spammer == Tenant(3, "spammer", TenantState.SUSPENDED, vips=(Vip(ip("203.0.113.30")),))
    assert spammer.suspended and not shop.suspended
    assert policy.tenant(2) is video and policy.tenant(4) is None
    # It compiles.
    counts = compile_policy(policy).entry_counts()
    # v4 block lists count nodes: a /25 or /26 needs its /16 node and its /24 node.
    assert counts == {"ew_gblock_v4": 2, "ew_gblock_v6": 1, "ew_tblock_v4": 2, "ew_tblock_v6": 0,
                      "ew_port_blocks": 2, "ew_tenants": 3,
                      "ew_vips_v4": 3, "ew_vips_v6": 1,   # 203.0.113.20 has only a port VIP: a placeholder
                      "ew_vip_ports_v4": 1, "ew_vip_ports_v6": 0, "ew_config": 1}


def test_minimal_documents():
    assert policy_from_document({}) == Policy()
    assert policy_from_document({"revision": 7, "tenants": [{"id": MAX_ID, "name": " x "}]}) == Policy(
        7, (Tenant(MAX_ID, "x"),))


# ==========================================================================
# Validation: every error at once, each with its location


@pytest.mark.parametrize("tenant_id", [0, -1, MAX_ID + 1, 2**64, "1", 1.0, True, None, [1]])
def test_tenant_id_out_of_range_or_wrong_type(tenant_id):
    errs = one_tenant_errors(id=tenant_id)
    assert errs == [f"tenants[0]: id {tenant_id!r} must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)"]


def test_missing_id_and_name():
    errs = errors_of({"tenants": [{}]})
    assert errs == [f"tenants[0]: id None must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)",
                    "tenants[0]: name must be a non-empty string"]


@pytest.mark.parametrize("name", ["", "   ", "\t\n", 5, None, ["a"]])
def test_bad_tenant_name(name):
    assert one_tenant_errors(name=name) == ["tenants[0]: name must be a non-empty string"]


def test_duplicate_ids_and_names():
    errs = errors_of({"tenants": [
        {"id": 1, "name": "a"},
        {"id": 1, "name": "b"},
        {"id": 2, "name": " a "},   # names compare after stripping
        {"id": 2, "name": "a"},
    ]})
    assert errs == [
        "tenants[1] ('b'): id 1 is already used by tenants[0] ('a')",
        "tenants[2] ('a'): name 'a' is already used by tenants[0] ('a')",
        "tenants[3] ('a'): id 2 is already used by tenants[2] ('a')",
        "tenants[3] ('a'): name 'a' is already used by tenants[2] ('a')",
    ]


def test_duplicate_vips_across_tenants():
    errs = errors_of({"tenants": [
        {"id": 1, "name": "a", "vips": ["203.0.113.1", "2001:db8::1",
                                        {"address": "203.0.113.2", "protocol": "tcp", "port": 443}]},
        {"id": 2, "name": "b", "vips": ["203.0.113.1",
                                        "2001:DB8:0:0::1",  # same address, other spelling
                                        {"address": "203.0.113.2", "protocol": "TCP", "port": "443"}]},
    ]})
    assert errs == [
        "tenants[1] ('b'): VIP 203.0.113.1 is already assigned to tenants[0] ('a')",
        "tenants[1] ('b'): VIP 2001:db8::1 is already assigned to tenants[0] ('a')",
        "tenants[1] ('b'): VIP tcp/203.0.113.2:443 is already assigned to tenants[0] ('a')",
    ]


def test_same_address_with_other_protocol_or_port_is_not_a_duplicate():
    policy = policy_from_document({"tenants": [
        {"id": 1, "name": "a", "vips": ["203.0.113.1", {"address": "2001:db8::1", "protocol": "tcp", "port": 443}]},
        {"id": 2, "name": "b", "vips": [{"address": "203.0.113.1", "protocol": "tcp", "port": 443},
                                        {"address": "2001:db8::1", "protocol": "udp", "port": 443},
                                        {"address": "2001:db8::1", "protocol": "tcp", "port": 444}]},
    ]})
    compiled = compile_policy(policy)
    assert len(any_port_vips(compiled)) == 2   # one entry per address,
    assert port_vips(compiled) == {              # and every port VIP its own entry
        (ip("2001:db8::1"), socket.IPPROTO_TCP, 443): (1, 1, 0),
        (ip("203.0.113.1"), socket.IPPROTO_TCP, 443): (2, 2, 0),
        (ip("2001:db8::1"), socket.IPPROTO_UDP, 443): (2, 2, 0),
        (ip("2001:db8::1"), socket.IPPROTO_TCP, 444): (2, 2, 0),
    }


def test_zone_index_does_not_hide_a_duplicate_vip():
    """BUG: 'fe80::1' and 'fe80::1%eth0' are different Vip values (ipaddress keeps the
    zone index), so the duplicate check passes, but both compile to the same ew_vips_v6 key:
    the second tenant silently takes the first one's VIP."""
    doc = {"tenants": [{"id": 1, "name": "a", "vips": ["fe80::1"]},
                       {"id": 2, "name": "b", "vips": ["fe80::1%eth0"]}]}
    try:
        policy = policy_from_document(doc)
    except PolicyError:
        return  # rejected: fine
    vips = compile_policy(policy).maps["ew_vips_v6"]
    assert len(vips) == 2, f"two tenants' VIPs compiled into {len(vips)} ew_vips_v6 entry, owned by tenant " \
                           f"{[vip_of(v)[0] for v in vips.values()]}"


@pytest.mark.parametrize("vip,message", [
    ("not-an-ip", "address 'not-an-ip' is not an IP address"),
    ("300.1.1.1", "address '300.1.1.1' is not an IP address"),
    ("10.0.0.0/24", "address '10.0.0.0/24' is not an IP address"),
    ("", "address '' is not an IP address"),
    ({"address": "2001:db8::g"}, "address '2001:db8::g' is not an IP address"),
    ({"address": 3232235777}, "address 3232235777 is not an IP address"),
    ({"protocol": "tcp", "port": 1}, "address None is not an IP address"),
    ({"address": "203.0.113.1", "protocol": "tcp"}, "protocol and port go together"),
    ({"address": "203.0.113.1", "port": 443}, "protocol and port go together"),
    ({"address": "203.0.113.1", "protocol": "sctp", "port": 1}, "protocol 'sctp' is not one of: tcp, udp"),
    ({"address": "203.0.113.1", "protocol": 6, "port": 1}, "protocol 6 is not one of: tcp, udp"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": 0}, "port 0 is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": 65536}, "port 65536 is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": True}, "port True is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": "http"}, "port 'http' is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": 44.3}, "port 44.3 is not in 1..65535"),
    (5, "a VIP is an address string or a table {address, protocol, port}"),
    (["203.0.113.1"], "a VIP is an address string or a table {address, protocol, port}"),
])
def test_bad_vips(vip, message):
    errs = one_tenant_errors(vips=["192.0.2.1", vip])
    assert len(errs) == 1
    assert errs[0].startswith("tenants[0].vips[1]: "), errs
    assert message in errs[0]


def test_bad_vip_protocol_and_port_both_reported():
    errs = one_tenant_errors(vips=[{"address": "203.0.113.1", "protocol": "icmp", "port": 0}])
    assert errs == ["tenants[0].vips[0]: protocol 'icmp' is not one of: tcp, udp",
                    "tenants[0].vips[0]: port 0 is not in 1..65535"]


@pytest.mark.parametrize("rule,message", [
    ("tcp/0", "port 0 is not in 1..65535"),
    ("tcp/70000", "port 70000 is not in 1..65535"),
    ("udp/65536", "port 65536 is not in 1..65535"),
    ("udp/10-5", "port range '10-5' runs backwards"),
    ("sctp/1", "protocol 'sctp' is not one of: tcp, udp"),
    ("tcp/1-4097", "port range '1-4097' covers more than 4096 ports"),
    ("udp/1-65535", "port range '1-65535' covers more than 4096 ports"),
    ("tcp/0-10", "port 0 is not in 1..65535"),
    ("tcp/10-70000", "port 70000 is not in 1..65535"),
    ("tcp/", "port '' is not in 1..65535"),
    ("tcp/-5", "port '' is not in 1..65535"),
    ("tcp/abc", "port 'abc' is not in 1..65535"),
    ("tcp/1.5", "port '1.5' is not in 1..65535"),
    ("/25", "protocol '' is not one of: tcp, udp"),
    ("25", "'25' is not a port rule like 'tcp/25' or 'udp/6000-6010'"),
    ("tcp:25", "'tcp:25' is not a port rule"),
    (25, "25 is not a port rule"),
    ({"tcp": 25}, "is not a port rule"),
])
def test_bad_port_rules(rule, message):
    errs = one_tenant_errors(blocked_ports=["tcp/25", rule])
    assert errs and all(e.startswith("tenants[0].blocked_ports[1]: ") for e in errs), errs
    assert any(message in e for e in errs), errs


@pytest.mark.parametrize("rule", ["tcp/²", "udp/1-³", "tcp/¹²"])
def test_unicode_digit_port_is_a_validation_error(rule):
    """BUG: _parse_port trusts str.isdigit(), which is True for '²', '³', ...; int() then
    raises a bare ValueError out of policy_from_document, with no location and none of
    the document's other errors (it is not a PolicyError)."""
    doc = {"tenants": [tenant(blocked_ports=[rule], name=5)]}
    try:
        errs = errors_of(doc)
    except ValueError as err:
        if isinstance(err, PolicyError):
            raise
        pytest.fail(f"{rule!r} escaped validation as {type(err).__name__}: {err}")
    assert "tenants[0]: name must be a non-empty string" in errs
    assert any(e.startswith("tenants[0].blocked_ports[0]: ") for e in errs), errs


def test_unicode_digit_vip_port_is_a_validation_error():
    """BUG (same cause): a VIP port given as the string '²'."""
    doc = {"tenants": [tenant(vips=[{"address": "203.0.113.1", "protocol": "tcp", "port": "²"}])]}
    try:
        errs = errors_of(doc)
    except ValueError as err:
        if isinstance(err, PolicyError):
            raise
        pytest.fail(f"port '²' escaped validation as {type(err).__name__}: {err}")
    assert all(e.startswith("tenants[0].vips[0]: ") for e in errs), errs


@pytest.mark.parametrize("rule,expected", [
    ("tcp/1", PortRule("tcp", 1, 1)),
    ("udp/65535", PortRule("udp", 65535, 65535)),
    ("tcp/1-4096", PortRule("tcp", 1, 4096)),
    ("udp/61440-65535", PortRule("udp", 61440, 65535)),
    ("udp/7-7", PortRule("udp", 7, 7)),
    ("TCP/25", PortRule("tcp", 25, 25)),
    (" udp / 6000-6010 ", PortRule("udp", 6000, 6010)),
])
def test_good_port_rules(rule, expected):
    policy = policy_from_document({"tenants": [tenant(blocked_ports=[rule])]})
    assert policy.tenants[0].blocked_ports == (expected,)


@pytest.mark.parametrize("where,value,message", [
    ("global", "banana", "'banana' is not an IP address or CIDR prefix"),
    ("global", "10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR prefix"),
    ("global", "2001:db8::/129", "is not an IP address or CIDR prefix"),
    ("global", "10.0.0.0/255.0.255.0", "is not an IP address or CIDR prefix"),
    ("global", 10, "expected a CIDR string, got int"),
    ("global", None, "expected a CIDR string, got NoneType"),
    ("tenant", "1.2.3", "'1.2.3' is not an IP address or CIDR prefix"),
    ("tenant", ["10.0.0.0/8"], "expected a CIDR string, got list"),
])
def test_bad_blocked_sources(where, value, message):
    sources = ["10.0.0.0/8", value]
    if where == "global":
        errs = errors_of({"global": {"blocked_sources": sources}})
        location = "global.blocked_sources[1]: "
    else:
        errs = one_tenant_errors(blocked_sources=sources)
        location = "tenants[0].blocked_sources[1]: "
    assert len(errs) == 1 and errs[0].startswith(location), errs
    assert message in errs[0]


def test_blocked_sources_host_bits_are_cleared():
    policy = policy_from_document({"global": {"blocked_sources": ["10.1.2.3/8", " 2001:db8::1/32 ", "192.0.2.1"]},
                                   "tenants": [tenant(blocked_sources=["198.51.100.77/26"])]})
    assert policy.blocked_sources == (net("10.0.0.0/8"), net("2001:db8::/32"), net("192.0.2.1/32"))
    assert policy.tenants[0].blocked_sources == (net("198.51.100.64/26"),)


@pytest.mark.parametrize("doc,expected", [
    ({"revision": 1, "colour": "red"},
     ["top level: unknown key 'colour' (expected one of: global, revision, tenants)"]),
    ({"global": {"blocked_sources": [], "allowed_sources": []}},
     ["global: unknown key 'allowed_sources' (expected one of: blocked_sources)"]),
    ({"tenants": [tenant(ports=["tcp/25"])]},
     ["tenants[0]: unknown key 'ports' (expected one of: blocked_ports, blocked_sources, id, name, state, vips)"]),
    ({"tenants": [tenant(vips=[{"address": "192.0.2.1", "proto": "tcp"}])]},
     ["tenants[0].vips[0]: unknown key 'proto' (expected one of: address, port, protocol)"]),
])
def test_unknown_keys_at_every_level(doc, expected):
    assert errors_of(doc) == expected


@pytest.mark.parametrize("doc,expected", [
    ({"revision": -1}, "revision: -1 must be an integer in 0..18446744073709551615"),
    ({"revision": "1"}, "revision: '1' must be an integer in 0..18446744073709551615"),
    ({"revision": 1.0}, "revision: 1.0 must be an integer in 0..18446744073709551615"),
    ({"revision": True}, "revision: True must be an integer in 0..18446744073709551615"),
    ({"global": ["10.0.0.0/8"]}, "global: expected a table"),
    ({"global": {"blocked_sources": "10.0.0.0/8"}}, "global.blocked_sources: expected a list of CIDR strings"),
    ({"tenants": {"id": 1, "name": "t"}}, "tenants: expected an array of tables ([[tenants]])"),
    ({"tenants": ["shop"]}, "tenants[0]: expected a table"),
    ({"tenants": [tenant(state="paused")]}, "tenants[0]: state 'paused' is not one of: active, suspended"),
    ({"tenants": [tenant(state="ACTIVE")]}, "tenants[0]: state 'ACTIVE' is not one of: active, suspended"),
    ({"tenants": [tenant(state=1)]}, "tenants[0]: state 1 is not one of: active, suspended"),
    ({"tenants": [tenant(state=[])]}, "tenants[0]: state [] is not one of: active, suspended"),
    ({"tenants": [tenant(vips="192.0.2.1")]}, "tenants[0].vips: expected a list"),
    ({"tenants": [tenant(blocked_ports="tcp/25")]}, "tenants[0].blocked_ports: expected a list"),
    ({"tenants": [tenant(blocked_sources="10.0.0.0/8")]},
     "tenants[0].blocked_sources: expected a list of CIDR strings"),
])
def test_wrong_types(doc, expected):
    assert errors_of(doc) == [expected]


@pytest.mark.parametrize("doc", [[], "revision = 1", None, 5])
def test_document_must_be_a_table(doc):
    assert errors_of(doc) == ["top level: the document must be a table"]


def test_every_error_is_reported_at_once():
    doc = {
        "revision": -3,
        "colour": "red",
        "global": {"blocked_sources": ["10.0.0.0/8", "nope", 7], "extra": 1},
        "tenants": [
            {"id": 0, "name": "", "state": "gone", "flavour": 1,
             "vips": ["x", {"address": "192.0.2.1", "protocol": "tcp"}],
             "blocked_ports": ["tcp/0", "tcp/70000", "udp/10-5", "sctp/1", "tcp/1-5000"],
             "blocked_sources": ["1.2.3.4/40"]},
            {"id": 5, "name": "ok", "vips": ["192.0.2.10"]},
            {"id": 5, "name": "ok", "vips": ["192.0.2.10"]},
            "not a table",
            {"id": 6, "name": "fine", "vips": "192.0.2.99"},
        ],
    }
    errs = errors_of(doc)
    expected_locations = [
        "",  # the unknown top-level key
        "revision: ",
        "global: unknown key 'extra'",
        "global.blocked_sources[1]: ",
        "global.blocked_sources[2]: ",
        "tenants[0]: unknown key 'flavour'",
        "tenants[0]: id 0",
        "tenants[0]: name",
        "tenants[0]: state 'gone'",
        "tenants[0].vips[0]: ",
        "tenants[0].vips[1]: ",
        "tenants[0].blocked_ports[0]: ",
        "tenants[0].blocked_ports[1]: ",
        "tenants[0].blocked_ports[2]: ",
        "tenants[0].blocked_ports[3]: ",
        "tenants[0].blocked_ports[4]: ",
        "tenants[0].blocked_sources[0]: ",
        "tenants[2] ('ok'): id 5 is already used by tenants[1] ('ok')",
        "tenants[2] ('ok'): name 'ok' is already used by tenants[1] ('ok')",
        "tenants[2] ('ok'): VIP 192.0.2.10 is already assigned to tenants[1] ('ok')",
        "tenants[3]: expected a table",
        "tenants[4].vips: expected a list",
    ]
    assert len(errs) == len(expected_locations), errs
    for prefix in expected_locations:
        assert any(e.startswith(prefix) for e in errs), (prefix, errs)
    assert any("unknown key 'colour'" in e for e in errs)
    # The exception's message lists them all, prefixed with the source.
    with pytest.raises(PolicyError) as info:
        policy_from_document(doc, "doc.toml")
    text = str(info.value)
    assert f"({len(errs)} error(s)); nothing was applied" in text
    for e in errs:
        assert f"  doc.toml: {e}" in text


# ==========================================================================
# Loading files: bad TOML, unreadable files


def test_bad_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("revision = 1\n[[tenants]\nid = 1\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith("not valid TOML: ")


def test_toml_duplicate_key_is_bad_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("revision = 1\nrevision = 2\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert info.value.errors == ["cannot read: No such file or directory"]


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.errors == ["cannot read: Is a directory"]


def test_non_utf8_file_is_a_policy_error(tmp_path):
    """BUG: load_policy catches only OSError around read_text(); a file that is not
    UTF-8 raises a bare UnicodeDecodeError instead of a PolicyError naming the file."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'revision = 1\n[[tenants]]\nid = 1\nname = "caf\xe9"\n')
    try:
        load_policy(path)
    except PolicyError as err:
        assert err.source == str(path) and len(err.errors) == 1
    except UnicodeDecodeError as err:
        pytest.fail(f"load_policy raised {type(err).__name__} instead of PolicyError: {err}")
    else:
        pytest.fail("a non-UTF-8 file was accepted")


def test_invalid_file_contents_are_reported_with_the_path(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('revision = 1\n[[tenants]]\nid = 0\nname = "a"\n[[tenants]]\nid = 2\nname = "b"\nvips = ["1"]\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert info.value.errors == [
        f"tenants[0]: id 0 must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)",
        "tenants[1].vips[0]: address '1' is not an IP address",
    ]


def test_revision_beyond_u64_is_rejected():
    """BUG: revision is only checked to be >= 0, but ew_config.policy_revision is a
    __u64: a document with revision 2**64 validates, then compile_policy fails with
    OverflowError (a validated policy must compile)."""
    doc = {"revision": 2**64}
    try:
        policy = policy_from_document(doc)
    except PolicyError as err:
        assert err.errors[0].startswith("revision: ")
        return
    compile_policy(policy)


# ==========================================================================
# Round trips


def test_example_round_trips(tmp_path):
    policy = load_policy(EXAMPLE)
    assert policy_from_document(policy_to_document(policy)) == policy
    path = tmp_path / "out.toml"
    path.write_text(policy_to_toml(policy))
    assert load_policy(path) == policy


def test_save_policy_writes_atomically_and_loads_back(tmp_path):
    policy = load_policy(EXAMPLE)
    path = tmp_path / "sub" / "dir" / "policy.toml"
    save_policy(policy, path)
    assert load_policy(path) == policy
    newer = policy.replace_tenant(Tenant(2, "video", TenantState.SUSPENDED))
    save_policy(newer, path)
    assert load_policy(path) == newer
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.toml"]


def test_document_is_canonical():
    doc = {"revision": 3, "global": {"blocked_sources": ["10.9.8.7/8"]},
           "tenants": [{"id": 9, "name": " n ", "vips": ["2001:DB8::0:1", {"address": "192.0.2.1",
                                                                          "protocol": "UDP", "port": "53"}],
                        "blocked_ports": ["TCP/25-25", "udp/1-3"]}]}
    assert policy_to_document(policy_from_document(doc)) == {
        "revision": 3,
        "global": {"blocked_sources": ["10.0.0.0/8"]},
        "tenants": [{"id": 9, "name": "n", "state": "active",
                     "vips": ["2001:db8::1", {"address": "192.0.2.1", "protocol": "udp", "port": 53}],
                     "blocked_ports": ["tcp/25", "udp/1-3"], "blocked_sources": []}],
    }


# Strategy: valid documents, written in any of the accepted spellings.

_v4_int = st.integers(0, 2**32 - 1)
_v6_int = st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 0xFFFF).map(lambda x: (0x20010DB8 << 96) | x))
_address = st.one_of(_v4_int.map(ipaddress.IPv4Address), _v6_int.map(ipaddress.IPv6Address))


@st.composite
def _cidr_text(draw):
    address = draw(_address)
    length = draw(st.integers(0, address.max_prefixlen))
    form = draw(st.sampled_from(["cidr", "cidr", "bare", "padded"]))
    if form == "bare":
        return str(address)  # a host route
    text = f"{address}/{length}"
    return f"  {text} " if form == "padded" else text


@st.composite
def _port_rule_text(draw):
    protocol = draw(st.sampled_from(["tcp", "udp", "TCP", "Udp"]))
    first = draw(st.integers(1, 65535))
    span = draw(st.integers(0, min(40, 65535 - first)))
    if span == 0 and draw(st.booleans()):
        return f"{protocol}/{first}"
    return f"{protocol}/{first}-{first + span}"


_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s.strip() != "")


@st.composite
def valid_documents(draw):
    n = draw(st.integers(0, 5))
    ids = draw(st.lists(st.one_of(st.integers(1, 40), st.integers(1, MAX_ID), st.just(MAX_ID)),
                        min_size=n, max_size=n, unique=True))
    names = draw(st.lists(_names, min_size=n, max_size=n, unique_by=str.strip))
    used_vips = set()
    tenants = []
    for tenant_id, name in zip(ids, names):
        t = {"id": tenant_id, "name": name}
        if draw(st.booleans()):
            t["state"] = draw(st.sampled_from(["active", "suspended"]))
        vips = []
        for _ in range(draw(st.integers(0, 4))):
            address = draw(_address)
            if draw(st.booleans()):
                key = (address, None, None)
                vip = str(address) if draw(st.booleans()) else {"address": str(address)}
            else:
                protocol = draw(st.sampled_from(["tcp", "udp", "UDP"]))
                port = draw(st.integers(1, 65535))
                key = (address, protocol.lower(), port)
                vip = {"address": str(address), "protocol": protocol,
                       "port": str(port) if draw(st.booleans()) else port}
            if key not in used_vips:
                used_vips.add(key)
                vips.append(vip)
        if vips or draw(st.booleans()):
            t["vips"] = vips
        ports = draw(st.lists(_port_rule_text(), max_size=3))
        if ports or draw(st.booleans()):
            t["blocked_ports"] = ports
        sources = draw(st.lists(_cidr_text(), max_size=4))
        if sources or draw(st.booleans()):
            t["blocked_sources"] = sources
        tenants.append(t)
    doc = {}
    if draw(st.booleans()):
        doc["revision"] = draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1)))
    if draw(st.booleans()):
        doc["global"] = {"blocked_sources": draw(st.lists(_cidr_text(), max_size=6))}
    if tenants or draw(st.booleans()):
        doc["tenants"] = tenants
    return doc


@SETTINGS
@given(doc=valid_documents())
def test_valid_documents_round_trip(doc):
    policy = policy_from_document(doc)
    assert len(policy.tenants) == len(doc.get("tenants", []))
    canonical = policy_to_document(policy)
    assert policy_from_document(canonical) == policy
    assert policy_to_document(policy_from_document(canonical)) == canonical
    assert policy_from_document(tomllib.loads(policy_to_toml(policy))) == policy


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=valid_documents())
def test_valid_documents_round_trip_through_files(doc, tmp_path):
    policy = policy_from_document(doc)
    path = tmp_path / "policy.toml"
    save_policy(policy, path)
    assert load_policy(path) == policy


# ==========================================================================
# Compilation

PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def vip_of(value: bytes) -> tuple[int, int, int]:
    """(tenant id, counter slot, flags) of a struct ew_vip."""
    assert len(value) == ffi.sizeof("struct ew_vip")
    v = ffi.from_buffer("struct ew_vip *", value)
    assert v.reserved == 0
    return v.tenant_id, v.slot, v.flags


def any_port_vips(compiled) -> dict:
    """address -> (tenant, slot, flags) from ew_vips_v4 (4 address bytes in network
    order) and ew_vips_v6 (16 bytes)."""
    result = {}
    for name, length, cls in (("ew_vips_v4", 4, ipaddress.IPv4Address), ("ew_vips_v6", 16, ipaddress.IPv6Address)):
        for key, value in compiled.maps[name].items():
            assert len(key) == length, name
            result[cls(key)] = vip_of(value)
    return result


def decode_port_vip_key(name: str, key: bytes):
    family = name[-2:]
    s = ffi.from_buffer(f"struct ew_vip_port_{family}_key *", key)
    assert len(key) == ffi.sizeof(f"struct ew_vip_port_{family}_key") and s.pad == 0
    return ipaddress.ip_address(bytes(s.addr)), s.proto, socket.ntohs(s.port)


def port_vips(compiled) -> dict:
    """(address, protocol number, port) -> (tenant, slot, flags)."""
    return {decode_port_vip_key(name, k): vip_of(v)
            for name in ("ew_vip_ports_v4", "ew_vip_ports_v6") for k, v in compiled.maps[name].items()}


def expected_flags(t: Tenant) -> int:
    return ((abi.TENANT_SUSPENDED if t.suspended else 0)
            | (abi.TENANT_HAS_SOURCE_BLOCKS if t.blocked_sources else 0)
            | (abi.TENANT_HAS_PORT_BLOCKS if t.blocked_ports else 0))


def expected_vips(policy: Policy, slots: dict[int, int]) -> tuple[dict, dict]:
    """The VIP maps as the ABI header describes them, straight from the policy."""
    any_port, ports = {}, {}
    for t in policy.tenants:
        value = (t.id, slots[t.id], expected_flags(t))
        for v in t.vips:
            if v.protocol is None:
                any_port[v.address] = value
            else:
                ports[(v.address, PROTO[v.protocol], v.port)] = value
    for address in {a for a, _, _ in ports}:
        tenant_id, slot, flags = any_port.get(address, (abi.TENANT_UNASSIGNED, 0, 0))
        any_port[address] = (tenant_id, slot, flags | abi.VIP_HAS_PORT_VIPS)
    return any_port, ports


def decode_port_key(key: bytes):
    s = ffi.from_buffer("struct ew_port_key *", key)
    assert s.pad == 0
    return s.tenant_id, s.proto, socket.ntohs(s.port)


def tenant_entry(compiled, tenant_id: int) -> tuple[int, int]:
    """(flags, slot) of a tenant in ew_tenants."""
    t = ffi.from_buffer("struct ew_tenant *", compiled.maps["ew_tenants"][pack_u32(tenant_id)])
    return t.flags, t.slot


def tenant_flags(compiled, tenant_id: int) -> int:
    return tenant_entry(compiled, tenant_id)[0]


def config_of(compiled):
    (key, value), = compiled.maps["ew_config"].items()
    assert key == pack_u32(0)
    cfg = ffi.from_buffer("struct ew_config *", value)
    return cfg.policy_revision, cfg.flags


def compile_doc(doc, live=None, capacity=abi.MAX_TENANTS, named_lists=None):
    return compile_policy(policy_from_document(doc), live, capacity, named_lists)


# Block tables, decoded through the header's key layouts and blocktables' inverse.

def as_dict(table) -> dict[bytes, bytes]:
    """The entries of a compiled block table, an EntryTable: packed and sorted by key,
    each key once."""
    assert isinstance(table, EntryTable)
    items = table.items()
    keys = [k for k, _ in items]
    assert keys == sorted(set(keys)) and len(items) == len(table)
    assert table.keys_packed() == b"".join(keys) and table.values_packed() == b"".join(v for _, v in items)
    return dict(items)


def global_v4_networks(table: EntryTable) -> list:
    return blocktables.v4_networks_from_nodes({u32(k): v for k, v in as_dict(table).items()})


def tenant_v4_networks(table: EntryTable) -> dict[int, list]:
    nodes: dict[int, dict[int, bytes]] = {}
    for key, value in as_dict(table).items():
        k = ffi.from_buffer("struct ew_tenant_block_key *", key)
        nodes.setdefault(k.tenant_id, {})[k.node] = value
    return {tenant_id: blocktables.v4_networks_from_nodes(n) for tenant_id, n in nodes.items()}


def v6_networks(table: EntryTable) -> set:
    """{(tenant id or None, prefix)}; every value is list 0."""
    entries = as_dict(table)
    for value in entries.values():
        block = ffi.from_buffer("struct ew_block_value *", value)
        assert (block.list_id, block.reserved) == (0, 0)
    decoded = [blocktables.decode_v6_lpm_key(k) for k in entries]
    assert len(set(decoded)) == len(decoded)
    return set(decoded)


def v4_only(networks):
    return [n for n in networks if n.version == 4]


def v6_only(networks):
    return [n for n in networks if n.version == 6]


def test_compiled_layouts_match_the_abi():
    compiled = compile_policy(load_policy(EXAMPLE))
    assert set(compiled.maps) == set(POLICY_MAPS) and set(compiled.tables) == set(BLOCK_TABLES)
    for name, entries in compiled.maps.items():
        key_type, value_type = abi.MAP_LAYOUTS[name]
        for key, value in entries.items():
            assert len(key) == ffi.sizeof(key_type), name
            assert len(value) == ffi.sizeof(value_type), name
    for name, entries in compiled.tables.items():
        spec = abi.SWAPPABLE_TABLES[name]
        assert entries or name == "ew_tblock_v6", name   # the example has no tenant v6 list
        assert (entries.key_size, entries.value_size) == (ffi.sizeof(spec.key_type), ffi.sizeof(spec.value_type))
        for key, value in entries.items():
            assert len(key) == ffi.sizeof(spec.key_type), name
            assert len(value) == ffi.sizeof(spec.value_type), name
    assert compiled.revision == 1 and compiled.tenant_ids == frozenset({1, 2, 3})
    assert compiled.slots == {1: 1, 2: 2, 3: 3}


def test_vip_keys_and_values():
    compiled = compile_doc({"tenants": [
        {"id": 7, "name": "a", "vips": ["203.0.113.10", "2001:db8::10"], "blocked_ports": ["tcp/25"]},
        {"id": 70000, "name": "b", "state": "suspended",
         "vips": [{"address": "203.0.113.10", "protocol": "tcp", "port": 443},
                  {"address": "2001:db8::10", "protocol": "udp", "port": 0x1234},
                  {"address": "203.0.113.11", "protocol": "udp", "port": 65535},
                  {"address": "203.0.113.11", "protocol": "tcp", "port": 65535},
                  {"address": "2001:db8::11", "protocol": "tcp", "port": 1}]},
        {"id": 9, "name": "c", "vips": ["203.0.113.12"], "blocked_sources": ["192.0.2.0/24"]},
    ]})
    assert compiled.slots == {7: 1, 70000: 2, 9: 3}
    a = abi.TENANT_HAS_PORT_BLOCKS
    b = abi.TENANT_SUSPENDED
    port = abi.VIP_HAS_PORT_VIPS
    assert any_port_vips(compiled) == {
        ip("203.0.113.10"): (7, 1, a | port),           # the address also has a port VIP (of another tenant)
        ip("2001:db8::10"): (7, 1, a | port),
        ip("203.0.113.11"): (0, 0, port),               # port VIPs only: tenant 0 placeholder
        ip("2001:db8::11"): (0, 0, port),
        ip("203.0.113.12"): (9, 3, abi.TENANT_HAS_SOURCE_BLOCKS),
    }
    assert port_vips(compiled) == {
        (ip("203.0.113.10"), socket.IPPROTO_TCP, 443): (70000, 2, b),
        (ip("2001:db8::10"), socket.IPPROTO_UDP, 0x1234): (70000, 2, b),
        (ip("203.0.113.11"), socket.IPPROTO_UDP, 65535): (70000, 2, b),
        (ip("203.0.113.11"), socket.IPPROTO_TCP, 65535): (70000, 2, b),
        (ip("2001:db8::11"), socket.IPPROTO_TCP, 1): (70000, 2, b),
    }
    # The raw bytes: addresses and ports in network byte order, as the packet carries them.
    assert ip("203.0.113.12").packed in compiled.maps["ew_vips_v4"]
    key4 = next(k for k in compiled.maps["ew_vip_ports_v4"] if decode_port_vip_key("ew_vip_ports_v4", k)[1] == 17)
    assert key4 == ip("203.0.113.11").packed + b"\xff\xff" + bytes([socket.IPPROTO_UDP, 0])
    key6 = next(k for k in compiled.maps["ew_vip_ports_v6"] if decode_port_vip_key("ew_vip_ports_v6", k)[2] == 0x1234)
    assert key6 == ip("2001:db8::10").packed + b"\x12\x34" + bytes([socket.IPPROTO_UDP, 0])
    assert compiled.maps["ew_vips_v4"][ip("203.0.113.11").packed] == struct.pack("=IIII", 0, 0, port, 0)


def test_any_port_vip_of_a_tenant_without_port_vips_has_no_port_flag():
    compiled = compile_doc({"tenants": [{"id": 1, "name": "a", "vips": ["192.0.2.1", "2001:db8::1"]}]})
    assert any_port_vips(compiled) == {ip("192.0.2.1"): (1, 1, 0), ip("2001:db8::1"): (1, 1, 0)}
    assert not compiled.maps["ew_vip_ports_v4"] and not compiled.maps["ew_vip_ports_v6"]


@pytest.mark.parametrize("state", ["active", "suspended"])
@pytest.mark.parametrize("sources", [[], ["198.51.100.0/24"], ["2001:db8::/48"]])
@pytest.mark.parametrize("ports", [[], ["tcp/25"]])
def test_tenant_flags(state, sources, ports):
    compiled = compile_doc({"tenants": [
        {"id": 4, "name": "x", "state": state, "blocked_sources": sources, "blocked_ports": ports,
         "vips": ["192.0.2.4", {"address": "192.0.2.4", "protocol": "udp", "port": 53},
                  {"address": "2001:db8::4", "protocol": "tcp", "port": 80}]},
        {"id": 5, "name": "plain", "vips": ["192.0.2.5"]},
    ]})
    expected = ((abi.TENANT_SUSPENDED if state == "suspended" else 0)
                | (abi.TENANT_HAS_SOURCE_BLOCKS if sources else 0)
                | (abi.TENANT_HAS_PORT_BLOCKS if ports else 0))
    assert tenant_entry(compiled, 4) == (expected, 1)
    assert tenant_entry(compiled, 5) == (0, 2)
    # Copied into every VIP value, so the packet path needs one lookup.
    assert any_port_vips(compiled) == {ip("192.0.2.4"): (4, 1, expected | abi.VIP_HAS_PORT_VIPS),
                                       ip("2001:db8::4"): (0, 0, abi.VIP_HAS_PORT_VIPS),
                                       ip("192.0.2.5"): (5, 2, 0)}
    assert set(port_vips(compiled).values()) == {(4, 1, expected)}


def test_port_ranges_expand_to_one_entry_per_port():
    compiled = compile_doc({"tenants": [
        {"id": 1, "name": "a", "blocked_ports": ["udp/6000-6010", "tcp/25", "tcp/20-30", "udp/6005"]},
        {"id": 2, "name": "b", "blocked_ports": ["tcp/65530-65535", "tcp/1-4096"]},
    ]})
    entries = compiled.maps["ew_port_blocks"]
    assert set(entries.values()) == {b"\x01"}
    decoded = [decode_port_key(k) for k in entries]
    assert len(decoded) == len(set(decoded))
    assert set(decoded) == (
        {(1, socket.IPPROTO_UDP, p) for p in range(6000, 6011)}
        | {(1, socket.IPPROTO_TCP, p) for p in range(20, 31)}
        | {(2, socket.IPPROTO_TCP, p) for p in range(65530, 65536)}
        | {(2, socket.IPPROTO_TCP, p) for p in range(1, 4097)}
    )
    key = next(k for k in entries if decode_port_key(k) == (2, socket.IPPROTO_TCP, 0x0102))
    assert key == struct.pack("=I", 2) + b"\x01\x02" + bytes([socket.IPPROTO_TCP, 0])


# --- counter slots ------------------------------------------------------------

def test_slots_of_a_fresh_compile_are_dense_from_one():
    doc = {"tenants": [{"id": i, "name": f"t{i}", "vips": [f"192.0.2.{i & 0xFF}"]} for i in (50, 3, 2**32 - 1, 7)]}
    compiled = compile_doc(doc)
    assert compiled.slots == {50: 1, 3: 2, 2**32 - 1: 3, 7: 4}   # policy order; slot 0 is tenant 0's
    for tenant_id, slot in compiled.slots.items():
        assert tenant_entry(compiled, tenant_id)[1] == slot
    assert {a: v[:2] for a, v in any_port_vips(compiled).items()} == {
        ip("192.0.2.50"): (50, 1), ip("192.0.2.3"): (3, 2), ip("192.0.2.255"): (2**32 - 1, 3), ip("192.0.2.7"): (7, 4)}


def test_slots_are_stable_and_new_tenants_take_free_slots():
    doc = {"tenants": [{"id": i, "name": f"t{i}", "vips": [f"192.0.2.{i}"]} for i in (1, 2, 3, 4)]}
    live = {1: 5, 2: 1, 9: 2, 3: 4}   # 9 is being removed: its slot 2 stays taken in this apply
    compiled = compile_doc(doc, live, capacity=16)
    assert compiled.slots == {1: 5, 2: 1, 3: 4, 4: 3}
    assert {a: v[1] for a, v in any_port_vips(compiled).items()} == {
        ip("192.0.2.1"): 5, ip("192.0.2.2"): 1, ip("192.0.2.3"): 4, ip("192.0.2.4"): 3}
    # In the next apply tenant 9 is gone from the live maps, and its slot is free again.
    live = compiled.slots
    doc["tenants"] += [{"id": 10, "name": "t10"}, {"id": 11, "name": "t11"}]
    assert compile_doc(doc, live, capacity=16).slots == {1: 5, 2: 1, 3: 4, 4: 3, 10: 2, 11: 6}


def test_slots_exhausted():
    doc = {"tenants": [{"id": i, "name": f"t{i}"} for i in (1, 2, 3)]}
    assert compile_doc(doc, capacity=4).slots == {1: 1, 2: 2, 3: 3}
    with pytest.raises(SlotsExhausted, match=r"no free counter slot for tenant 4 \(3 slots, 0 held\).*"
                                             r"nothing was applied"):
        compile_doc({"tenants": doc["tenants"] + [{"id": 4, "name": "t4"}]}, capacity=4)
    # A removed tenant's slot is not reused in the same apply, even when the count fits.
    doc4 = {"tenants": [{"id": i, "name": f"t{i}"} for i in (1, 2, 4)]}
    with pytest.raises(SlotsExhausted, match=r"tenant 4 \(3 slots, 3 held\)"):
        compile_doc(doc4, {1: 1, 2: 2, 3: 3}, capacity=4)
    assert compile_doc(doc4, {1: 1, 2: 2}, capacity=4).slots == {1: 1, 2: 2, 4: 3}
    assert issubclass(SlotsExhausted, ValueError)


@SETTINGS
@given(ids=st.lists(st.integers(1, 30), unique=True, max_size=12),
       live=st.dictionaries(st.integers(1, 30), st.integers(1, 20), max_size=12),
       capacity=st.integers(1, 24))
def test_assign_slots_properties(ids, live, capacity):
    live = {t: s for t, s in live.items() if s < capacity}
    live = dict(zip(live, dict.fromkeys(live.values())))   # live tenants hold distinct slots
    policy = Policy(tenants=tuple(Tenant(i, f"t{i}") for i in ids))
    free = [s for s in range(1, capacity) if s not in set(live.values())]
    new = [i for i in ids if i not in live]
    if len(new) > len(free):
        with pytest.raises(SlotsExhausted):
            assign_slots(policy, live, capacity)
        return
    slots = assign_slots(policy, live, capacity)
    assert set(slots) == set(ids)
    assert all(slots[i] == live[i] for i in ids if i in live)            # tenants keep their slot
    assert [slots[i] for i in new] == free[:len(new)]                    # lowest slots held by no live tenant
    assert len(set(slots.values())) == len(slots)
    assert all(0 < s < capacity for s in slots.values())


# --- block tables ---------------------------------------------------------------

def test_block_tables_decode_to_the_merged_networks():
    doc = {
        "global": {"blocked_sources": ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.0.2.1",
                                       "2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::5/64", "::/0"]},
        "tenants": [{"id": 1, "name": "a", "blocked_sources": ["198.51.100.0/25", "198.51.100.128/25",
                                                               "198.51.100.7/32", "2001:db8:1::/48",
                                                               "203.0.113.64/27"]},
                    {"id": 0x01020304, "name": "b", "blocked_sources": ["198.51.100.0/24", "0.0.0.0/0"]}],
    }
    compiled = compile_doc(doc)
    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == [net("10.0.0.0/7"), net("192.0.2.1/32")]
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, net("::/0"))}
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == {
        1: [net("198.51.100.0/24"), net("203.0.113.64/27")], 0x01020304: [net("0.0.0.0/0")]}
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == {(1, net("2001:db8:1::/48"))}

    # The node encoding itself: 10.0.0.0/7 is 512 full /16 nodes; 192.0.2.1 is a /16 node
    # pointing at /24 number 2, whose node has host bit 1.
    gv4 = as_dict(compiled.tables["ew_gblock_v4"])

    def node(level, index, flags=0, a=0, b=0, table=gv4, tenant=None):
        key = struct.pack("=I", level << 24 | index) if tenant is None else struct.pack("=II", tenant, level << 24 | index)
        words = [(a >> (64 * i)) & (2**64 - 1) for i in range(4)] + [(b >> (64 * i)) & (2**64 - 1) for i in range(4)]
        assert table[key] == struct.pack("=II8Q", flags, 0, *words), (level, index)

    assert len(gv4) == 512 + 2
    for index16 in range(10 << 8, 12 << 8):
        node(16, index16, flags=abi.BLOCK_NODE_FULL)
    node(16, 192 << 8 | 0, b=1 << 2)
    node(24, (192 << 16) | 2, a=1 << 1)
    tv4 = as_dict(compiled.tables["ew_tblock_v4"])
    assert len(tv4) == 3 + 65536
    node(16, 198 << 8 | 51, a=1 << 100, table=tv4, tenant=1)
    node(16, 203 << 8 | 0, b=1 << 113, table=tv4, tenant=1)
    node(24, (203 << 16) | 113, a=(2**32 - 1) << 64, table=tv4, tenant=1)
    node(16, 0, flags=abi.BLOCK_NODE_FULL, table=tv4, tenant=0x01020304)
    # v6 keys: LPM length, then (tenant id big-endian, covered by the length), then the address.
    (key, _), = as_dict(compiled.tables["ew_tblock_v6"]).items()
    s = ffi.from_buffer("struct ew_tenant_lpm_v6_key *", key)
    assert s.prefixlen == 32 + 48 and bytes(s.tenant_id) == b"\0\0\0\1"
    assert bytes(s.addr) == ip("2001:db8:1::").packed
    (key, _), = as_dict(compiled.tables["ew_gblock_v6"]).items()
    assert key == struct.pack("=I", 0) + bytes(16)
    tenant_b = blocktables.v6_lpm_key(net("2001:db8::/32"), 0x01020304)
    assert tenant_b[4:8] == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("v4,v6,flags", [
    ([], [], 0),
    (["10.0.0.0/8"], [], abi.CONFIG_GLOBAL_V4_BLOCKS),
    ([], ["2001:db8::/32"], abi.CONFIG_GLOBAL_V6_BLOCKS),
    (["10.0.0.0/8"], ["2001:db8::/32"], abi.CONFIG_GLOBAL_V4_BLOCKS | abi.CONFIG_GLOBAL_V6_BLOCKS),
])
@pytest.mark.parametrize("revision", [0, 1, 2**32 + 5, 2**64 - 1])
def test_config_flags_and_revision(v4, v6, flags, revision):
    # Tenant block lists must not set the global flags.
    compiled = compile_doc({"revision": revision, "global": {"blocked_sources": v4 + v6},
                            "tenants": [{"id": 1, "name": "a", "blocked_sources": ["192.0.2.0/24", "2001:db8::/64"]}]})
    assert config_of(compiled) == (revision, flags)
    assert compiled.revision == revision
    assert ffi.from_buffer("struct ew_config *", compiled.maps["ew_config"][pack_u32(0)]).reserved == 0


def at_most_a_slash_8(policy: Policy) -> Policy:
    """The policy with IPv4 prefixes shorter than /8 lengthened to /8. A /0 is 65536
    table nodes, slow to decode in Python; the short prefixes are covered by
    test_block_tables_decode_to_the_merged_networks and tests/test_blocktables.py."""
    def bound(networks):
        return tuple(ipaddress.ip_network((n.network_address, 8), strict=False) if n.version == 4 and n.prefixlen < 8
                     else n for n in networks)
    return dataclasses.replace(policy, blocked_sources=bound(policy.blocked_sources), tenants=tuple(
        dataclasses.replace(t, blocked_sources=bound(t.blocked_sources)) for t in policy.tenants))


@SETTINGS
@given(doc=valid_documents())
def test_compile_properties(doc):
    policy = at_most_a_slash_8(policy_from_document(doc))
    compiled = compile_policy(policy)
    assert compiled.tenant_ids == frozenset(t.id for t in policy.tenants)
    assert compiled.slots == {t.id: i for i, t in enumerate(policy.tenants, 1)}
    assert compiled.revision == policy.revision
    flags_expected = ((abi.CONFIG_GLOBAL_V4_BLOCKS if any(n.version == 4 for n in policy.blocked_sources) else 0)
                      | (abi.CONFIG_GLOBAL_V6_BLOCKS if any(n.version == 6 for n in policy.blocked_sources) else 0))
    assert config_of(compiled) == (policy.revision, flags_expected)

    gblocks = compile_prefixes_reference(policy.blocked_sources)
    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == v4_only(gblocks)
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, n) for n in v6_only(gblocks)}

    ports, tv4, tv6 = set(), {}, set()
    for t in policy.tenants:
        assert tenant_entry(compiled, t.id) == (expected_flags(t), compiled.slots[t.id])
        ports |= {(t.id, PROTO[r.protocol], p) for r in t.blocked_ports for p in r.ports()}
        tblocks = compile_prefixes_reference(t.blocked_sources)
        if v4_only(tblocks):
            tv4[t.id] = v4_only(tblocks)
        tv6 |= {(t.id, n) for n in v6_only(tblocks)}
    assert len(compiled.maps["ew_tenants"]) == len(policy.tenants)
    any_port, port = expected_vips(policy, compiled.slots)
    assert any_port_vips(compiled) == any_port
    assert port_vips(compiled) == port
    assert sum(len(compiled.maps[n]) for n in ("ew_vip_ports_v4", "ew_vip_ports_v6")) == len(port)
    assert {decode_port_key(k) for k in compiled.maps["ew_port_blocks"]} == ports
    assert len(compiled.maps["ew_port_blocks"]) == len(ports)
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == tv4
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == tv6


# --- named block lists ------------------------------------------------------------

def prefix_set_of(texts) -> PrefixSet:
    networks = [ipaddress.ip_network(t, strict=False) for t in texts]
    return PrefixSet.from_list([(n.network_address.packed, n.prefixlen) for n in networks])


NAMED_DOC = {
    "revision": 5,
    "global": {"blocked_sources": ["198.51.100.0/25"]},
    "tenants": [
        {"id": 1, "name": "plain", "blocked_ports": ["tcp/25"],           # no list of its own in the policy
         "vips": ["203.0.113.1", {"address": "2001:db8::1", "protocol": "tcp", "port": 443}]},
        {"id": 2, "name": "listed", "vips": ["203.0.113.2"],
         "blocked_sources": ["192.0.2.0/25", "2001:db8:2::/48"]},
        {"id": 3, "name": "empty", "vips": ["203.0.113.3"]},
    ],
}
NAMED_LISTS = {
    None: ["198.51.100.128/25", "203.0.113.77", "2001:db8:bad::/48"],   # the v4 /25s merge into a /24
    1: ["100.64.0.0/10", "100.64.1.0/24", "2001:db8:1::/64"],
    2: ["192.0.2.128/25", "192.0.2.7", "2001:db8:2:1::/64"],            # both inside or beside the policy's
    3: [],                                                               # an empty list blocks nothing
}


def test_named_lists_are_united_into_the_tables():
    named = {scope: prefix_set_of(texts) for scope, texts in NAMED_LISTS.items()}
    compiled = compile_doc(NAMED_DOC, named_lists=named)
    plain = compile_doc(NAMED_DOC)

    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == [net("198.51.100.0/24"), net("203.0.113.77/32")]
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, net("2001:db8:bad::/48"))}
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == {1: [net("100.64.0.0/10")],
                                                                   2: [net("192.0.2.0/24")]}
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == {(1, net("2001:db8:1::/64")), (2, net("2001:db8:2::/48"))}
    # A global v6 list from a named list alone turns the global v6 lookup on.
    assert config_of(plain) == (5, abi.CONFIG_GLOBAL_V4_BLOCKS)
    assert config_of(compiled) == (5, abi.CONFIG_GLOBAL_V4_BLOCKS | abi.CONFIG_GLOBAL_V6_BLOCKS)

    # Tenant 1 has source blocks now, from its named list: in ew_tenants and in every VIP value.
    has, ports = abi.TENANT_HAS_SOURCE_BLOCKS, abi.TENANT_HAS_PORT_BLOCKS
    assert tenant_entry(plain, 1) == (ports, 1)
    assert {t: tenant_entry(compiled, t) for t in (1, 2, 3)} == {1: (ports | has, 1), 2: (has, 2), 3: (0, 3)}
    assert any_port_vips(compiled) == {ip("203.0.113.1"): (1, 1, ports | has), ip("203.0.113.2"): (2, 2, has),
                                       ip("203.0.113.3"): (3, 3, 0), ip("2001:db8::1"): (0, 0, abi.VIP_HAS_PORT_VIPS)}
    assert port_vips(compiled) == {(ip("2001:db8::1"), socket.IPPROTO_TCP, 443): (1, 1, ports | has)}

    # Exactly what the policy compiles to with the lists written into its own block lists.
    merged = compile_doc({
        **NAMED_DOC, "global": {"blocked_sources": NAMED_DOC["global"]["blocked_sources"] + NAMED_LISTS[None]},
        "tenants": [{**t, "blocked_sources": t.get("blocked_sources", []) + NAMED_LISTS[t["id"]]}
                    for t in NAMED_DOC["tenants"]]})
    assert compiled.maps == merged.maps and compiled.slots == merged.slots
    assert compiled.tables == merged.tables


def test_named_lists_of_a_tenant_not_in_the_policy_change_nothing():
    named = {scope: prefix_set_of(texts) for scope, texts in NAMED_LISTS.items()}
    absent = {99: prefix_set_of(["0.0.0.0/0", "::/0"]), 2**32 - 1: prefix_set_of(["10.0.0.0/8"])}
    for base in ({}, named):
        expected = compile_doc(NAMED_DOC, named_lists=base or None)
        compiled = compile_doc(NAMED_DOC, named_lists=base | absent)
        assert compiled.maps == expected.maps and compiled.slots == expected.slots
        assert set(compiled.tables) == set(BLOCK_TABLES)
        for name in BLOCK_TABLES:
            assert compiled.tables[name] == expected.tables[name], name
            assert as_dict(compiled.tables[name]) == as_dict(expected.tables[name]), name
        assert set(tenant_v4_networks(compiled.tables["ew_tblock_v4"])) <= {1, 2}
        assert all(t in (1, 2) for t, _ in v6_networks(compiled.tables["ew_tblock_v6"]))
    # No named lists at all, and empty ones, are the policy alone.
    plain = compile_doc(NAMED_DOC)
    empty = compile_doc(NAMED_DOC, named_lists={None: PrefixSet(), 1: PrefixSet(), 2: PrefixSet(), 3: PrefixSet()})
    assert empty.maps == plain.maps and empty.tables == plain.tables


_named_network = st.one_of(
    st.builds(lambda a, length: ipaddress.IPv4Network((a, length), strict=False), _v4_int, st.integers(8, 32)),
    st.builds(lambda a, length: ipaddress.IPv6Network((a, length), strict=False), _v6_int, st.integers(0, 128)))


@SETTINGS
@given(doc=valid_documents(), data=st.data())
def test_compile_with_named_lists_properties(doc, data):
    policy = at_most_a_slash_8(policy_from_document(doc))
    ids = [t.id for t in policy.tenants]
    scopes = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(ids or [None]), st.integers(1, MAX_ID)),
                                unique=True, max_size=4))
    lists = {scope: data.draw(st.lists(_named_network, max_size=4)) for scope in scopes}
    compiled = compile_policy(policy, named_lists={scope: prefix_set_of(map(str, n)) for scope, n in lists.items()})

    def blocked(scope, own):
        return compile_prefixes_reference(list(own) + lists.get(scope, []))

    gblocks = blocked(None, policy.blocked_sources)
    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == v4_only(gblocks)
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, n) for n in v6_only(gblocks)}
    assert config_of(compiled) == (policy.revision, (abi.CONFIG_GLOBAL_V4_BLOCKS if v4_only(gblocks) else 0)
                                   | (abi.CONFIG_GLOBAL_V6_BLOCKS if v6_only(gblocks) else 0))
    tv4, tv6 = {}, set()
    for t in policy.tenants:
        tblocks = blocked(t.id, t.blocked_sources)
        if v4_only(tblocks):
            tv4[t.id] = v4_only(tblocks)
        tv6 |= {(t.id, n) for n in v6_only(tblocks)}
        flags = expected_flags(t) | (abi.TENANT_HAS_SOURCE_BLOCKS if tblocks else 0)
        assert tenant_entry(compiled, t.id) == (flags, compiled.slots[t.id])
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == tv4   # lists of absent tenants: nowhere
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == tv6
    # The same as the policy with the lists written into its own block lists.
    merged = dataclasses.replace(
        policy, blocked_sources=policy.blocked_sources + tuple(lists.get(None, [])),
        tenants=tuple(dataclasses.replace(t, blocked_sources=t.blocked_sources + tuple(lists.get(t.id, [])))
                      for t in policy.tenants))
    expected = compile_policy(merged)
    assert compiled.maps == expected.maps and compiled.tables == expected.tables


# ==========================================================================
# Applying compiled policies. The regular maps are in-memory fakes with the
# BpfMap interface; the block tables are the kernel's own map-in-map tables
# (a private LoadedProgram), every write to them recorded in the same log.


NCPUS = 2   # of the fake per-CPU counters


class FakeMap:
    """In-memory stand-in for BpfMap. Like a kernel hash map it refuses a new key
    when full (E2BIG); like an array map (ew_config, ew_counters) it always holds
    every index and refuses deletes. Every successful mutation is appended to the
    shared `log`."""

    def __init__(self, name, log, max_entries=1000, *, array=False):
        self.name = name
        self.log = log
        self.max_entries = max_entries
        key_type, value_type = abi.MAP_LAYOUTS[name]
        self.key_size = ffi.sizeof(key_type)
        size = ffi.sizeof(value_type)
        self.value_size = ((size + 7) & ~7) * NCPUS if name in abi.PERCPU_MAPS else size
        self.array = array
        self.data = {pack_u32(i): bytes(self.value_size) for i in range(max_entries)} if array else {}

    def _write(self, key, value, flags=0):
        assert len(key) == self.key_size and len(value) == self.value_size, self.name
        if flags == 1 and key in self.data:
            raise OSError(errno.EEXIST, f"{self.name}: exists")
        if key not in self.data:
            if self.array:
                raise OSError(errno.E2BIG, f"{self.name}: index out of range")
            if len(self.data) >= self.max_entries:
                raise OSError(errno.E2BIG, f"{self.name}: full")
        self.data[key] = value
        self.log.append(("update", self.name, key))

    def items(self):
        return dict(self.data)

    def keys(self):
        return iter(list(self.data))

    def lookup(self, key):
        return self.data.get(key)

    def update(self, key, value, flags=0):
        self._write(key, value, flags)

    def update_many(self, entries):
        for key, value in entries.items():
            self._write(key, value)

    def delete(self, key):
        if self.array:
            raise OSError(errno.EINVAL, f"{self.name}: cannot delete from an array")
        if key not in self.data:
            return False
        del self.data[key]
        self.log.append(("delete", self.name, key))
        return True

    def delete_many(self, keys):
        for key in keys:
            self.delete(key)


class Recorded:
    """A real BpfMap whose mutations are appended to the shared log: `op` is "swap"
    for an outer map (its slot 0 is the table version packets see), "fill" for a
    fresh inner map not yet swapped in, "update" for the live inner map."""

    def __init__(self, bpf_map, table, log, op):
        self._map, self._table, self._log, self._op = bpf_map, table, log, op

    def __getattr__(self, attr):
        return getattr(self._map, attr)

    def update(self, key, value, flags=0):
        self._map.update(key, value, flags)
        self._log.append((self._op, self._table, key))

    def update_many(self, entries):
        self._map.update_many(entries)
        self._log.extend((self._op, self._table, key) for key in entries)

    def items_packed(self):
        return self._map.items_packed()

    def update_packed(self, keys, values):
        self._map.update_packed(keys, values)
        size = self._map.key_size
        self._log.extend((self._op, self._table, keys[i:i + size]) for i in range(0, len(keys), size))

    def delete(self, key):
        found = self._map.delete(key)
        if found:
            self._log.append(("delete", self._table, key))
        return found

    def delete_many(self, keys):
        for key in keys:
            self.delete(key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._map.close()


@pytest.fixture
def make_maps(monkeypatch):
    """make_maps(log, **capacities): fake regular maps and real, recorded block tables."""
    programs = []
    table_of = {spec.key_type: name for name, spec in abi.SWAPPABLE_TABLES.items()}

    def make(log, **capacity):
        program = LoadedProgram(pin_dir=None)
        programs.append(program)
        by_id, create = blocktables.map_by_id, blocktables.create_map
        monkeypatch.setattr(blocktables, "map_by_id", lambda map_id, name, key_type, value_type: Recorded(
            by_id(map_id, name, key_type, value_type), table_of[key_type], log, "update"))
        monkeypatch.setattr(blocktables, "create_map", lambda *args: Recorded(
            create(*args), table_of[args[2]], log, "fill"))
        maps = {name: FakeMap(name, log, capacity.get(name, 1000)) for name in POLICY_MAPS if name != "ew_config"}
        maps["ew_config"] = FakeMap("ew_config", log, 1, array=True)
        maps["ew_counters"] = FakeMap("ew_counters", log, capacity.get("ew_counters", 64), array=True)
        for name in BLOCK_TABLES:
            maps[name] = Recorded(program.maps[name], name, log, "swap")
        return maps

    yield make
    for program in programs:
        program.close()


def table_entries(maps, name):
    return SwappableTable(maps[name]).entries()


def snapshot(maps):
    return {name: m.items() if isinstance(m, FakeMap) else table_entries(maps, name) for name, m in maps.items()}


def assert_maps_hold(maps, compiled):
    for name in POLICY_MAPS:
        assert maps[name].items() == compiled.maps[name], name
    for name in BLOCK_TABLES:
        assert table_entries(maps, name) == as_dict(compiled.tables[name]), name
    assert live_slots(maps) == compiled.slots


def compile_for(maps, doc, named_lists=None):
    """Compiled as apply_policy_to_maps does: slots from the live maps."""
    return compile_doc(doc, live_slots(maps), maps["ew_counters"].max_entries, named_lists)


BASE_DOC = {
    "revision": 1,
    "global": {"blocked_sources": ["198.51.100.128/25", "2001:db8:bad::/48"]},
    "tenants": [
        {"id": 1, "name": "shop", "vips": ["203.0.113.10", "2001:db8:10::10"],
         "blocked_ports": ["tcp/25"], "blocked_sources": ["198.51.100.64/26"]},
        {"id": 2, "name": "video", "vips": [{"address": "203.0.113.20", "protocol": "tcp", "port": 443}]},
        {"id": 3, "name": "spammer", "state": "suspended", "vips": ["203.0.113.30"]},
    ],
}

NEXT_DOC = {
    "revision": 2,
    "global": {"blocked_sources": ["198.51.100.128/25", "192.0.2.0/24"]},   # v6 list emptied, v4 entry added
    "tenants": [
        {"id": 1, "name": "shop", "vips": ["203.0.113.10", "2001:db8:10::10"],
         "blocked_ports": ["tcp/25"], "blocked_sources": ["198.51.100.64/26"]},   # unchanged
        {"id": 2, "name": "video", "state": "suspended",                            # state changed
         "vips": [{"address": "203.0.113.20", "protocol": "tcp", "port": 443}]},
        # tenant 3 removed
        {"id": 4, "name": "news", "vips": ["203.0.113.40"], "blocked_ports": ["udp/53"],   # added
         "blocked_sources": ["2001:db8:4::/64"]},
    ],
}

THIRD_DOC = dict(NEXT_DOC, revision=3, tenants=NEXT_DOC["tenants"] + [{"id": 5, "name": "late", "vips": ["203.0.113.50"]}])


def positions(log, *, op=None, name=None):
    return [i for i, (o, n, _) in enumerate(log) if (op is None or o == op) and (name is None or n == name)]


def test_apply_to_empty_maps_writes_everything(make_maps):
    log = []
    maps = make_maps(log)
    counters = maps["ew_counters"]
    busy = b"\x07" * counters.value_size   # what a slot holds before a tenant takes it
    for slot in range(counters.max_entries):
        counters.data[pack_u32(slot)] = busy
    compiled = compile_for(maps, BASE_DOC)
    report = apply_compiled(maps, compiled)
    assert_maps_hold(maps, compiled)
    assert compiled.slots == {1: 1, 2: 2, 3: 3}
    # The newly assigned slots were zeroed; tenant 0's and the free ones were left alone.
    zero = bytes(counters.value_size)
    assert {k for k, v in counters.items().items() if v == zero} == {pack_u32(s) for s in (1, 2, 3)}
    assert sorted(key for op, name, key in log if name == "ew_counters") == [pack_u32(s) for s in (1, 2, 3)]

    assert report.revision == 1
    assert report.added == ({n: len(e) for n, e in compiled.maps.items() if n != "ew_config"} | {"ew_config": 0}
                            | {n: len(e) for n, e in compiled.tables.items()})
    assert report.changed == {n: 0 for n in (*POLICY_MAPS, *BLOCK_TABLES)} | {"ew_config": 1}
    assert report.removed == {n: 0 for n in (*POLICY_MAPS, *BLOCK_TABLES)}
    assert report.swapped == []   # a few entries: written into the empty live tables
    assert {(op, name) for op, name, _ in log if name in BLOCK_TABLES} == {
        ("update", n) for n, e in compiled.tables.items() if e}

    # Tables first, then the counters, then rules before the tenants and VIPs that
    # reach them, port VIPs before the any-port entries announcing them; config last.
    tables = positions(log, name="ew_gblock_v4") + positions(log, name="ew_gblock_v6") + positions(
        log, name="ew_tblock_v4")
    first = {n: min(positions(log, name=n)) for n in {n for _, n, _ in log}}
    last = {n: max(positions(log, name=n)) for n in {n for _, n, _ in log}}
    assert max(tables) < first["ew_counters"] and last["ew_counters"] < first["ew_port_blocks"]
    assert last["ew_port_blocks"] < first["ew_tenants"] < first["ew_vip_ports_v4"]
    assert last["ew_tenants"] < first["ew_vip_ports_v4"] and last["ew_vip_ports_v4"] < first["ew_vips_v4"]
    assert log[-1] == ("update", "ew_config", pack_u32(0)) and len(positions(log, name="ew_config")) == 1
    assert ffi.from_buffer("struct ew_config *", maps["ew_config"].items()[pack_u32(0)]).policy_revision == 1


def test_reapplying_the_same_policy_writes_nothing(make_maps):
    log = []
    maps = make_maps(log)
    compiled = compile_for(maps, BASE_DOC)
    apply_compiled(maps, compiled)
    log.clear()
    again = compile_for(maps, BASE_DOC)
    assert again.slots == compiled.slots
    report = apply_compiled(maps, again)
    assert log == []
    assert report.total_writes == 0 and report.swapped == []
    assert report.summary() == "revision 1: no changes"
    assert_maps_hold(maps, compiled)


def test_apply_diff_writes_only_changes_and_keeps_counters(make_maps):
    log = []
    maps = make_maps(log)
    old = compile_for(maps, BASE_DOC)
    apply_compiled(maps, old)
    counters = maps["ew_counters"]
    busy = {pack_u32(slot): bytes([slot + 1]) * counters.value_size for slot in range(counters.max_entries)}
    counters.data.update(busy)
    log.clear()

    new = compile_for(maps, NEXT_DOC)
    # Tenants keep their slots; the new tenant does not get removed tenant 3's slot in this apply.
    assert new.slots == {1: 1, 2: 2, 4: 4}
    report = apply_compiled(maps, new)
    assert_maps_hold(maps, new)

    def contents(compiled, kind, name):
        entries = getattr(compiled, kind)[name]
        return entries if kind == "maps" else as_dict(entries)

    def changed(kind, name):
        return {k for k, v in contents(new, kind, name).items() if contents(old, kind, name).get(k) != v}

    def stale(kind, name):
        return set(contents(old, kind, name)) - set(contents(new, kind, name))

    writes = {(name, key) for op, name, key in log if op == "update" and name != "ew_counters"}
    deletes = {(name, key) for op, name, key in log if op == "delete"}
    assert writes == ({(name, k) for name in POLICY_MAPS for k in changed("maps", name)}
                      | {(name, k) for name in BLOCK_TABLES for k in changed("tables", name)})
    assert deletes == ({(name, k) for name in POLICY_MAPS for k in stale("maps", name)}
                       | {(name, k) for name in BLOCK_TABLES for k in stale("tables", name)})
    assert len(writes) + len(deletes) == len(log) - 1   # each once, plus the one counter slot
    assert not positions(log, op="swap") and not positions(log, op="fill")   # small changes: in place
    assert ("ew_tenants", pack_u32(1)) not in writes           # unchanged tenant not rewritten
    assert ("ew_tenants", pack_u32(2)) in writes                # its state changed
    assert ("ew_tenants", pack_u32(3)) in deletes
    assert ("ew_vip_ports_v4", next(iter(new.maps["ew_vip_ports_v4"]))) in writes   # suspension copied in
    assert report.added["ew_tenants"] == 1 and report.changed["ew_tenants"] == 1
    assert report.removed["ew_tenants"] == 1
    assert report.added["ew_gblock_v4"] == 1 and report.removed["ew_gblock_v4"] == 0
    assert report.removed["ew_gblock_v6"] == 1 and report.added["ew_tblock_v6"] == 1
    assert report.removed["ew_vips_v4"] == 1 and report.added["ew_vips_v4"] == 1
    assert report.changed["ew_vips_v4"] == 0 and report.changed["ew_vip_ports_v4"] == 1
    assert report.changed["ew_config"] == 1
    assert config_of(new) == (2, abi.CONFIG_GLOBAL_V4_BLOCKS)
    assert ffi.from_buffer("struct ew_config *", maps["ew_config"].items()[pack_u32(0)]).policy_revision == 2

    # Counters: only the new tenant's slot is zeroed, before the tenant and its VIP exist;
    # every other slot (tenant 0's, the kept tenants', removed tenant 3's) is untouched.
    live = counters.items()
    assert live == busy | {pack_u32(4): bytes(counters.value_size)}
    assert positions(log, name="ew_counters") == [positions(log, op="update", name="ew_counters")[0]]
    zeroed = log.index(("update", "ew_counters", pack_u32(4)))
    assert zeroed < log.index(("update", "ew_tenants", pack_u32(4)))
    assert zeroed < log.index(("update", "ew_vips_v4", ip("203.0.113.40").packed))
    assert all(i < zeroed for name in BLOCK_TABLES for i in positions(log, name=name))

    # Next apply: tenant 3 is gone from the live maps, so a newcomer takes its slot (zeroed).
    log.clear()
    third = compile_for(maps, THIRD_DOC)
    assert third.slots == {1: 1, 2: 2, 4: 4, 5: 3}
    apply_compiled(maps, third)
    assert_maps_hold(maps, third)
    assert counters.items() == live | {pack_u32(3): bytes(counters.value_size)}
    assert [key for _, name, key in log if name == "ew_counters"] == [pack_u32(3)]


def test_named_lists_are_applied_and_withdrawn(make_maps):
    """apply_policy_to_maps with named lists enforces their union with the policy's
    lists; applying without them takes them out again, in place."""
    log = []
    maps = make_maps(log)
    named = {scope: prefix_set_of(texts) for scope, texts in NAMED_LISTS.items()}
    policy = policy_from_document(NAMED_DOC)
    report = apply_policy_to_maps(maps, policy, named)
    assert report.added["ew_tblock_v4"] > 0 and report.added["ew_gblock_v6"] == 1
    assert_maps_hold(maps, compile_for(maps, NAMED_DOC, named))
    assert tenant_v4_networks(SwappableTable(maps["ew_tblock_v4"]).entries_table())[1] == [net("100.64.0.0/10")]
    log.clear()
    report = apply_policy_to_maps(maps, policy)
    assert report.swapped == [] and report.removed["ew_gblock_v6"] == 1 and report.changed["ew_tenants"] == 1
    assert_maps_hold(maps, compile_for(maps, NAMED_DOC))
    assert 1 not in tenant_v4_networks(SwappableTable(maps["ew_tblock_v4"]).entries_table())


def test_revision_is_written_after_every_other_policy_change(make_maps):
    """The module promises 'the revision last, so a reader that sees a revision sees
    all of it': nothing, in any map or table, may be written or deleted after it."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    log.clear()
    apply_compiled(maps, compile_for(maps, NEXT_DOC))
    config_at = log.index(("update", "ew_config", pack_u32(0)))
    after = log[config_at + 1:]
    assert after == [], f"written after the new revision was published: {after}"


def test_capacity_error_in_a_policy_map_writes_nothing(make_maps):
    log = []
    maps = make_maps(log, ew_port_blocks=50)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    before = snapshot(maps)
    log.clear()
    doc = dict(NEXT_DOC, tenants=NEXT_DOC["tenants"] + [{"id": 9, "name": "z", "blocked_ports": ["tcp/1-51"]}])
    with pytest.raises(ValueError, match=r"policy needs 53 entries in ew_port_blocks, which holds 50; "
                                         r"nothing was applied"):
        apply_compiled(maps, compile_for(maps, doc))
    assert log == [] and snapshot(maps) == before


def test_slots_exhausted_writes_nothing(make_maps):
    log = []
    maps = make_maps(log, ew_counters=4)   # slot 0 (tenant 0) + 3 tenant slots
    apply_policy_to_maps(maps, policy_from_document(BASE_DOC))
    before = snapshot(maps)
    log.clear()
    # Tenant 3 removed, 4 added: 3 tenants, but 3's slot is still held in this apply.
    with pytest.raises(SlotsExhausted, match="nothing was applied"):
        apply_policy_to_maps(maps, policy_from_document(NEXT_DOC))
    assert log == [] and snapshot(maps) == before
    # Removing first, then adding, as the message advises, works.
    without = dict(NEXT_DOC, tenants=NEXT_DOC["tenants"][:2])
    apply_policy_to_maps(maps, policy_from_document(without))
    report = apply_policy_to_maps(maps, policy_from_document(NEXT_DOC))
    assert report.revision == 2 and live_slots(maps) == {1: 1, 2: 2, 4: 3}
    assert_maps_hold(maps, compile_for(maps, NEXT_DOC))


def test_capacity_error_on_empty_maps_writes_nothing(make_maps):
    log = []
    maps = make_maps(log, ew_vips_v4=2)
    with pytest.raises(ValueError, match="policy needs 3 entries in ew_vips_v4, which holds 2"):
        apply_compiled(maps, compile_for(maps, BASE_DOC))   # 3 IPv4 addresses
    assert log == []
    assert all(not m.items() for name, m in maps.items() if name in POLICY_MAPS and name != "ew_config")
    assert all(not table_entries(maps, name) for name in BLOCK_TABLES)


def test_block_table_capacity_error_writes_nothing(make_maps):
    """BUG: _check_capacity checks the regular maps only. A policy whose tenant v4 block
    table needs more nodes than the inner table holds (EW_MAX_TENANT_BLOCK_NODES_V4 =
    262144; five tenants blocking 0.0.0.0/0 need 5 x 65536) fails in
    SwappableTable._swap_in with 'nothing was applied', but only after the global tables
    of the new policy were already applied: the datapath enforces the new global list
    under the old revision, tenants and VIPs."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    before = snapshot(maps)
    log.clear()
    doc = dict(NEXT_DOC, tenants=[{"id": i, "name": f"t{i}", "blocked_sources": ["0.0.0.0/0"]} for i in range(1, 6)])
    with pytest.raises(ValueError, match="nothing was applied"):
        apply_compiled(maps, compile_for(maps, doc))
    assert log == [], f"{len(log)} writes before the capacity error, e.g. {sorted({(o, n) for o, n, _ in log})}"
    assert snapshot(maps) == before


@pytest.mark.parametrize("scenario", ["vips", "counters"])
def test_replacing_a_full_map_does_not_fail_half_way(make_maps, scenario):
    """Adding before removing needs room for old and new at once: a map without it must
    have its stale entries removed first (or the apply refused before any write), never
    an E2BIG half-way through with earlier maps already rewritten."""
    log = []
    old_doc = {"revision": 1, "tenants": [{"id": 1, "name": "a", "vips": ["203.0.113.1", "203.0.113.2"]},
                                          {"id": 2, "name": "b"}]}
    new_doc = {"revision": 2, "global": {"blocked_sources": ["192.0.2.0/24"]},
               "tenants": [{"id": 1, "name": "a", "vips": ["203.0.113.3", "203.0.113.4"]},
                           {"id": 2, "name": "b"}]}
    if scenario == "vips":
        maps = make_maps(log, ew_vips_v4=2)
    else:
        maps = make_maps(log, ew_counters=3)
        new_doc["tenants"] = [{"id": 3, "name": "c", "vips": ["203.0.113.1", "203.0.113.2"]},
                              {"id": 4, "name": "d"}]
    apply_policy_to_maps(maps, policy_from_document(old_doc))
    before = snapshot(maps)
    try:
        apply_policy_to_maps(maps, policy_from_document(new_doc))
    except (ValueError, OSError) as err:
        assert snapshot(maps) == before, f"apply failed half-way ({err}); maps were already modified"
    else:
        assert_maps_hold(maps, compile_for(maps, new_doc))


def test_large_table_change_is_swapped_in_whole(make_maps):
    """More than DELTA_LIMIT changed entries: a fresh inner table is filled and swapped
    in with one write of the outer slot; a small change after that is applied in place
    in the swapped-in table."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    log.clear()
    hosts = [str(ipaddress.IPv4Address((100 << 24) | (64 << 16) | (i << 8) | (i & 0xFF)))
             for i in range(blocktables.DELTA_LIMIT + 1)]   # one /24 node each
    doc = {**BASE_DOC, "revision": 2, "global": {"blocked_sources": hosts}}
    compiled = compile_for(maps, doc)
    report = apply_compiled(maps, compiled)
    assert report.swapped == ["ew_gblock_v4"]
    assert_maps_hold(maps, compiled)
    swap = log.index(("swap", "ew_gblock_v4", b"\0\0\0\0"))
    fills = positions(log, op="fill", name="ew_gblock_v4")
    assert len(fills) == len(compiled.tables["ew_gblock_v4"]) and max(fills) < swap
    assert not positions(log, op="update", name="ew_gblock_v4") and not positions(log, op="delete",
                                                                                   name="ew_gblock_v4")
    assert log[-1][1] == "ew_config"

    log.clear()
    smaller = {**doc, "revision": 3, "global": {"blocked_sources": hosts[1:]}}
    compiled = compile_for(maps, smaller)
    report = apply_compiled(maps, compiled)
    assert report.swapped == [] and report.removed["ew_gblock_v4"] == 1
    # 100.64.0.0 was the only host of its /24: the /16 node loses that /24's bit first,
    # then the /24 node goes.
    assert log == [("update", "ew_gblock_v4", struct.pack("=I", 16 << 24 | 100 << 8 | 64)),
                   ("delete", "ew_gblock_v4", struct.pack("=I", 24 << 24 | 100 << 16 | 64 << 8)),
                   ("update", "ew_config", pack_u32(0))]
    assert_maps_hold(maps, compiled)


def test_apply_to_real_maps():
    """The whole apply against the kernel's maps, per-CPU counters included."""
    with LoadedProgram(pin_dir=None) as program:
        maps = program.maps
        for doc in (BASE_DOC, NEXT_DOC, THIRD_DOC, BASE_DOC):
            policy = policy_from_document(doc)
            expected = compile_policy(policy, live_slots(maps), maps["ew_counters"].max_entries)
            if doc is NEXT_DOC:
                # traffic on the live slots, which the apply must not reset
                for slot in (0, 1, 2, 3):
                    maps["ew_counters"].update(pack_u32(slot), bytes([slot + 1]) * maps["ew_counters"].value_size)
            apply_policy_to_maps(maps, policy)
            for name in POLICY_MAPS:
                assert maps[name].items() == expected.maps[name], (doc["revision"], name)
            for name in BLOCK_TABLES:
                assert table_entries(maps, name) == as_dict(expected.tables[name]), (doc["revision"], name)
            assert live_slots(maps) == expected.slots
        counters = maps["ew_counters"]
        assert live_slots(maps) == {1: 1, 2: 2, 3: 5}   # 3 came back after 4 and 5 took slots 4 and 3
        for slot in (0, 1, 2):
            assert counters.lookup(pack_u32(slot)) == bytes([slot + 1]) * counters.value_size
        for slot in (3, 4, 5):
            assert counters.lookup(pack_u32(slot)) == bytes(counters.value_size)   # zeroed when (re)assigned


@pytest.fixture(scope="module")
def shared_program():
    with LoadedProgram(pin_dir=None) as program:
        yield program


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(2, 8),
       steps=st.lists(st.lists(st.integers(1, 9), unique=True, max_size=6), min_size=1, max_size=6))
def test_slots_and_counters_across_applies(shared_program, capacity, steps):
    """A sequence of policies applied with apply_policy_to_maps: tenants keep their slot
    and their counters; a new tenant takes the lowest slot not held before the apply,
    zeroed; a refused apply (SlotsExhausted) changes nothing."""
    log = []
    maps = {name: FakeMap(name, log) for name in POLICY_MAPS if name != "ew_config"}
    maps["ew_config"] = FakeMap("ew_config", log, 1, array=True)
    maps["ew_counters"] = counters = FakeMap("ew_counters", log, capacity, array=True)
    for name in BLOCK_TABLES:   # no block lists here: the (empty) tables are only read
        maps[name] = shared_program.maps[name]
    traffic = 0
    for revision, ids in enumerate(steps):
        held = live_slots(maps)
        free = [s for s in range(1, capacity) if s not in held.values()]
        new = [i for i in ids if i not in held]
        before = {name: maps[name].items() for name in (*POLICY_MAPS, "ew_counters")}
        policy = Policy(revision, tuple(Tenant(i, f"t{i}", vips=(Vip(ipaddress.IPv4Address(i)),)) for i in ids))
        if len(new) > len(free):
            with pytest.raises(SlotsExhausted):
                apply_policy_to_maps(maps, policy)
            assert {name: maps[name].items() for name in before} == before
            continue
        apply_policy_to_maps(maps, policy)
        slots = live_slots(maps)
        assert slots == {i: held[i] for i in ids if i in held} | dict(zip(new, free))
        assert {a: v[:2] for a, v in any_port_vips(compile_policy(policy, slots, capacity)).items()} == {
            ipaddress.IPv4Address(i): (i, slots[i]) for i in ids}
        assert {ipaddress.IPv4Address(k): vip_of(v)[:2] for k, v in maps["ew_vips_v4"].items().items()} == {
            ipaddress.IPv4Address(i): (i, slots[i]) for i in ids}
        after = counters.items()
        for slot in range(capacity):
            key = pack_u32(slot)
            if slot in (slots[i] for i in new):
                assert after[key] == bytes(counters.value_size)
            else:
                assert after[key] == before["ew_counters"][key], slot
        # traffic: every slot in use counts something new
        for slot in (0, *slots.values()):
            traffic += 1
            counters.data[pack_u32(slot)] = traffic.to_bytes(8, "little") * (counters.value_size // 8)
