"""The policy document (validation, TOML and document round trips), its
compilation into map contents, and the diff application of compiled
policies to maps (against an in-memory fake with the BpfMap interface)."""

import errno
import ipaddress
import socket
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._libbpf import ffi
from agent.blocklist import compile_prefixes_reference
from agent.datapath import abi
from agent.datapath.apply import apply_compiled
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
    POLICY_MAPS,
    compile_policy,
    decode_global_block_key,
    decode_tenant_block_key,
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
    assert counts == {"ew_gblock_v4": 1, "ew_gblock_v6": 1, "ew_tblock_v4": 1, "ew_tblock_v6": 0,
                      "ew_port_blocks": 2, "ew_tenants": 3, "ew_vips": 4, "ew_config": 1}


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
    assert len(compile_policy(policy).maps["ew_vips"]) == 5


def test_zone_index_does_not_hide_a_duplicate_vip():
    """BUG: 'fe80::1' and 'fe80::1%eth0' are different Vip values (ipaddress keeps the
    zone index), so the duplicate check passes, but both compile to the same ew_vips key:
    the second tenant silently takes the first one's VIP."""
    doc = {"tenants": [{"id": 1, "name": "a", "vips": ["fe80::1"]},
                       {"id": 2, "name": "b", "vips": ["fe80::1%eth0"]}]}
    try:
        policy = policy_from_document(doc)
    except PolicyError:
        return  # rejected: fine
    vips = compile_policy(policy).maps["ew_vips"]
    assert len(vips) == 2, f"two tenants' VIPs compiled into {len(vips)} ew_vips entry, owned by tenant " \
                           f"{[u32(v) for v in vips.values()]}"


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


def decode_vip(key: bytes):
    s = ffi.from_buffer("struct ew_vip_key *", key)
    addr = bytes(s.addr)
    address = ipaddress.IPv4Address(addr[:4]) if s.family == abi.FAMILY_IPV4 else ipaddress.IPv6Address(addr)
    if s.family == abi.FAMILY_IPV4:
        assert addr[4:] == bytes(12)
    else:
        assert s.family == abi.FAMILY_IPV6
    return address, s.proto, socket.ntohs(s.port)


def decode_port_key(key: bytes):
    s = ffi.from_buffer("struct ew_port_key *", key)
    assert s.pad == 0
    return s.tenant_id, s.proto, socket.ntohs(s.port)


def tenant_flags(compiled, tenant_id: int) -> int:
    return ffi.from_buffer("struct ew_tenant *", compiled.maps["ew_tenants"][pack_u32(tenant_id)]).flags


def config_of(compiled):
    (key, value), = compiled.maps["ew_config"].items()
    assert key == pack_u32(0)
    cfg = ffi.from_buffer("struct ew_config *", value)
    return cfg.policy_revision, cfg.flags


def compile_doc(doc):
    return compile_policy(policy_from_document(doc))


def test_compiled_layouts_match_the_abi():
    compiled = compile_policy(load_policy(EXAMPLE))
    assert set(compiled.maps) == set(POLICY_MAPS)
    for name, entries in compiled.maps.items():
        key_type, value_type = abi.MAP_LAYOUTS[name]
        for key, value in entries.items():
            assert len(key) == ffi.sizeof(key_type), name
            assert len(value) == ffi.sizeof(value_type), name
    assert compiled.revision == 1 and compiled.tenant_ids == frozenset({1, 2, 3})


def test_vip_keys():
    compiled = compile_doc({"tenants": [
        {"id": 7, "name": "a", "vips": ["203.0.113.10", "2001:db8::10"]},
        {"id": 70000, "name": "b", "vips": [{"address": "203.0.113.10", "protocol": "tcp", "port": 443},
                                            {"address": "2001:db8::10", "protocol": "udp", "port": 0x1234},
                                            {"address": "203.0.113.11", "protocol": "udp", "port": 65535}]},
    ]})
    vips = {decode_vip(k): u32(v) for k, v in compiled.maps["ew_vips"].items()}
    assert vips == {
        (ip("203.0.113.10"), 0, 0): 7,
        (ip("2001:db8::10"), 0, 0): 7,
        (ip("203.0.113.10"), socket.IPPROTO_TCP, 443): 70000,
        (ip("2001:db8::10"), socket.IPPROTO_UDP, 0x1234): 70000,
        (ip("203.0.113.11"), socket.IPPROTO_UDP, 65535): 70000,
    }
    # The port is in network byte order in the key bytes themselves.
    key = next(k for k in compiled.maps["ew_vips"] if decode_vip(k)[2] == 0x1234)
    assert key[16:18] == b"\x12\x34" and key[18] == socket.IPPROTO_UDP and key[19] == abi.FAMILY_IPV6


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


@pytest.mark.parametrize("state", ["active", "suspended"])
@pytest.mark.parametrize("sources", [[], ["198.51.100.0/24"], ["2001:db8::/48"]])
@pytest.mark.parametrize("ports", [[], ["tcp/25"]])
def test_tenant_flags(state, sources, ports):
    compiled = compile_doc({"tenants": [
        {"id": 4, "name": "x", "state": state, "blocked_sources": sources, "blocked_ports": ports},
        {"id": 5, "name": "plain"},
    ]})
    expected = ((abi.TENANT_SUSPENDED if state == "suspended" else 0)
                | (abi.TENANT_HAS_SOURCE_BLOCKS if sources else 0)
                | (abi.TENANT_HAS_PORT_BLOCKS if ports else 0))
    assert tenant_flags(compiled, 4) == expected
    assert tenant_flags(compiled, 5) == 0
    assert ffi.from_buffer("struct ew_tenant *", compiled.maps["ew_tenants"][pack_u32(4)]).reserved == 0


def test_block_keys_decode_to_the_merged_networks():
    doc = {
        "global": {"blocked_sources": ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.0.2.1",
                                       "2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::5/64", "::/0"]},
        "tenants": [{"id": 1, "name": "a", "blocked_sources": ["198.51.100.0/25", "198.51.100.128/25",
                                                               "198.51.100.7/32", "2001:db8:1::/48"]},
                    {"id": 0x01020304, "name": "b", "blocked_sources": ["198.51.100.0/24", "0.0.0.0/0"]}],
    }
    compiled = compile_doc(doc)
    gv4 = {decode_global_block_key("ew_gblock_v4", k) for k in compiled.maps["ew_gblock_v4"]}
    gv6 = {decode_global_block_key("ew_gblock_v6", k) for k in compiled.maps["ew_gblock_v6"]}
    assert gv4 == {net("10.0.0.0/7"), net("192.0.2.1/32")}
    assert gv6 == {net("::/0")}
    tv4 = {decode_tenant_block_key("ew_tblock_v4", k) for k in compiled.maps["ew_tblock_v4"]}
    tv6 = {decode_tenant_block_key("ew_tblock_v6", k) for k in compiled.maps["ew_tblock_v6"]}
    assert tv4 == {(1, net("198.51.100.0/24")), (0x01020304, net("0.0.0.0/0"))}
    assert tv6 == {(1, net("2001:db8:1::/48"))}
    # Tenant id is big-endian in the key, and the LPM length covers it.
    key = next(k for k in compiled.maps["ew_tblock_v4"] if decode_tenant_block_key("ew_tblock_v4", k)[0] != 1)
    s = ffi.from_buffer("struct ew_tenant_lpm_v4_key *", key)
    assert bytes(s.tenant_id) == b"\x01\x02\x03\x04" and s.prefixlen == 32
    for name in ("ew_gblock_v4", "ew_gblock_v6", "ew_tblock_v4", "ew_tblock_v6"):
        for value in compiled.maps[name].values():
            block = ffi.from_buffer("struct ew_block_value *", value)
            assert (block.list_id, block.reserved) == (0, 0)


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


@SETTINGS
@given(doc=valid_documents())
def test_compile_properties(doc):
    policy = policy_from_document(doc)
    compiled = compile_policy(policy)
    assert compiled.tenant_ids == frozenset(t.id for t in policy.tenants)
    assert compiled.revision == policy.revision
    flags_expected = ((abi.CONFIG_GLOBAL_V4_BLOCKS if any(n.version == 4 for n in policy.blocked_sources) else 0)
                      | (abi.CONFIG_GLOBAL_V6_BLOCKS if any(n.version == 6 for n in policy.blocked_sources) else 0))
    assert config_of(compiled) == (policy.revision, flags_expected)

    gblocks = [decode_global_block_key(name, k) for name in ("ew_gblock_v4", "ew_gblock_v6")
               for k in compiled.maps[name]]
    assert gblocks == compile_prefixes_reference(policy.blocked_sources)

    vips, ports, tblocks = {}, set(), set()
    for t in policy.tenants:
        flags = ((abi.TENANT_SUSPENDED if t.suspended else 0)
                 | (abi.TENANT_HAS_SOURCE_BLOCKS if t.blocked_sources else 0)
                 | (abi.TENANT_HAS_PORT_BLOCKS if t.blocked_ports else 0))
        assert tenant_flags(compiled, t.id) == flags
        for v in t.vips:
            vips[(v.address, socket.getprotobyname(v.protocol) if v.protocol else 0, v.port or 0)] = t.id
        ports |= {(t.id, socket.getprotobyname(r.protocol), p) for r in t.blocked_ports for p in r.ports()}
        tblocks |= {(t.id, n) for n in compile_prefixes_reference(t.blocked_sources)}
    assert len(compiled.maps["ew_tenants"]) == len(policy.tenants)
    assert {decode_vip(k): u32(v) for k, v in compiled.maps["ew_vips"].items()} == vips
    assert len(compiled.maps["ew_vips"]) == sum(len(t.vips) for t in policy.tenants)
    assert {decode_port_key(k) for k in compiled.maps["ew_port_blocks"]} == ports
    assert len(compiled.maps["ew_port_blocks"]) == len(ports)
    decoded = [decode_tenant_block_key(name, k) for name in ("ew_tblock_v4", "ew_tblock_v6")
               for k in compiled.maps[name]]
    assert len(decoded) == len(tblocks) and set(decoded) == tblocks


# ==========================================================================
# Applying compiled policies: a fake map with the BpfMap interface


class FakeMap:
    """In-memory stand-in for BpfMap. Like a kernel hash/LPM map it refuses a new key
    when full (E2BIG); like an array map (ew_config) it always holds every index and
    refuses deletes. Every successful mutation is appended to the shared `log`."""

    def __init__(self, name, log, max_entries=1000, *, array=False):
        self.name = name
        self.log = log
        self.max_entries = max_entries
        key_type, value_type = abi.MAP_LAYOUTS[name]
        self.key_size = ffi.sizeof(key_type)
        self.value_size = ffi.sizeof(value_type) * (2 if name in abi.PERCPU_MAPS else 1)
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

    def update(self, key, value, flags=0):
        self._write(key, value, flags)

    def update_many(self, entries):
        for key, value in entries.items():
            self._write(key, value)

    def delete_many(self, keys):
        for key in keys:
            if self.array:
                raise OSError(errno.EINVAL, f"{self.name}: cannot delete from an array")
            if key in self.data:
                del self.data[key]
                self.log.append(("delete", self.name, key))


def fake_maps(log, **capacity):
    maps = {name: FakeMap(name, log, capacity.get(name, 1000)) for name in POLICY_MAPS if name != "ew_config"}
    maps["ew_config"] = FakeMap("ew_config", log, 1, array=True)
    maps["ew_counters"] = FakeMap("ew_counters", log, capacity.get("ew_counters", 1000))
    return maps


def snapshot(maps):
    return {name: m.items() for name, m in maps.items()}


def assert_maps_hold(maps, compiled):
    for name in POLICY_MAPS:
        assert maps[name].items() == compiled.maps[name], name
    assert set(maps["ew_counters"].items()) == {pack_u32(t) for t in compiled.tenant_ids | {0}}


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
        {"id": 4, "name": "news", "vips": ["203.0.113.40"], "blocked_ports": ["udp/53"]},   # added
    ],
}


def test_apply_to_empty_maps_writes_everything():
    log = []
    maps = fake_maps(log)
    compiled = compile_doc(BASE_DOC)
    report = apply_compiled(maps, compiled)
    assert_maps_hold(maps, compiled)
    zero = bytes(maps["ew_counters"].value_size)
    assert all(v == zero for v in maps["ew_counters"].items().values())
    assert report.revision == 1
    assert report.added == {n: len(e) for n, e in compiled.maps.items() if n != "ew_config"} | {"ew_config": 0}
    assert report.changed == {n: 0 for n in POLICY_MAPS} | {"ew_config": 1}
    assert report.removed == {n: 0 for n in POLICY_MAPS}
    # Rules before the tenants and VIPs that reach them; counters before tenants; config last.
    order = [name for op, name, _ in log]
    first = {name: order.index(name) for name in set(order)}
    last = {name: len(order) - 1 - order[::-1].index(name) for name in set(order)}
    for rules in ("ew_gblock_v4", "ew_gblock_v6", "ew_tblock_v4", "ew_port_blocks"):
        assert last[rules] < first["ew_tenants"] < first["ew_vips"]
    assert last["ew_counters"] < first["ew_tenants"]
    assert order[-1] == "ew_config"


def test_reapplying_the_same_policy_writes_nothing():
    log = []
    maps = fake_maps(log)
    compiled = compile_doc(BASE_DOC)
    apply_compiled(maps, compiled)
    log.clear()
    report = apply_compiled(maps, compile_doc(BASE_DOC))
    assert log == []
    assert report.total_writes == 0
    assert report.summary() == "revision 1: no changes"
    assert_maps_hold(maps, compiled)


def test_apply_diff_writes_only_changes_and_keeps_counters():
    log = []
    maps = fake_maps(log)
    old = compile_doc(BASE_DOC)
    apply_compiled(maps, old)
    counters = maps["ew_counters"]
    busy = {t: bytes([t]) * counters.value_size for t in (0, 1, 2, 3)}
    for t, value in busy.items():
        counters.data[pack_u32(t)] = value
    log.clear()

    new = compile_doc(NEXT_DOC)
    report = apply_compiled(maps, new)
    assert_maps_hold(maps, new)

    def changed(name):
        return {k for k, v in new.maps[name].items() if old.maps[name].get(k) != v}

    def stale(name):
        return set(old.maps[name]) - set(new.maps[name])

    writes = {(name, key) for op, name, key in log if op == "update" and name != "ew_counters"}
    deletes = {(name, key) for op, name, key in log if op == "delete" and name != "ew_counters"}
    assert writes == {(name, k) for name in POLICY_MAPS for k in changed(name)}
    assert deletes == {(name, k) for name in POLICY_MAPS for k in stale(name)}
    assert ("ew_tenants", pack_u32(1)) not in writes           # unchanged tenant not rewritten
    assert ("ew_tenants", pack_u32(2)) in writes                # its state changed
    assert ("ew_tenants", pack_u32(3)) in deletes
    assert report.added["ew_tenants"] == 1 and report.changed["ew_tenants"] == 1
    assert report.removed["ew_tenants"] == 1
    assert report.added["ew_gblock_v4"] == 1 and report.removed["ew_gblock_v6"] == 1
    assert report.removed["ew_vips"] == 1 and report.added["ew_vips"] == 1
    assert report.changed["ew_config"] == 1
    assert config_of(new) == (2, abi.CONFIG_GLOBAL_V4_BLOCKS)
    assert ffi.from_buffer("struct ew_config *", maps["ew_config"].items()[pack_u32(0)]).policy_revision == 2

    # Counters: existing ones kept (never reset), the new tenant's created zeroed,
    # the removed tenant's dropped, tenant 0's kept.
    live = counters.items()
    assert live == {pack_u32(0): busy[0], pack_u32(1): busy[1], pack_u32(2): busy[2],
                    pack_u32(4): bytes(counters.value_size)}
    assert [(op, key) for op, name, key in log if name == "ew_counters"] == [
        ("update", pack_u32(4)), ("delete", pack_u32(3))]
    # A new tenant's counters exist before the tenant does.
    order = [(op, name, key) for op, name, key in log]
    assert order.index(("update", "ew_counters", pack_u32(4))) < order.index(("update", "ew_tenants", pack_u32(4)))


def test_revision_is_written_after_every_other_policy_change():
    """BUG: the module promises 'the revision last, so a reader that sees a revision
    sees all of it', but apply_compiled writes ew_config in its additions loop and only
    then deletes stale entries: a reader that sees revision 2 can still find the
    removed tenant 3's VIP and tenant entry (and the dropped global v6 block)."""
    log = []
    maps = fake_maps(log)
    apply_compiled(maps, compile_doc(BASE_DOC))
    log.clear()
    apply_compiled(maps, compile_doc(NEXT_DOC))
    policy_ops = [(op, name) for op, name, _ in log if name in POLICY_MAPS]
    config_at = policy_ops.index(("update", "ew_config"))
    after = policy_ops[config_at + 1:]
    assert after == [], f"written after the new revision was published: {after}"


def test_capacity_error_in_a_policy_map_writes_nothing():
    log = []
    maps = fake_maps(log, ew_port_blocks=50)
    apply_compiled(maps, compile_doc(BASE_DOC))
    before = snapshot(maps)
    log.clear()
    doc = dict(NEXT_DOC, tenants=NEXT_DOC["tenants"] + [{"id": 9, "name": "z", "blocked_ports": ["tcp/1-51"]}])
    with pytest.raises(ValueError, match=r"policy needs 53 entries in ew_port_blocks, which holds 50; "
                                         r"nothing was applied"):
        apply_compiled(maps, compile_doc(doc))
    assert log == [] and snapshot(maps) == before


def test_capacity_error_in_counters_writes_nothing():
    log = []
    maps = fake_maps(log, ew_counters=4)   # tenant 0 + 3 tenants
    apply_compiled(maps, compile_doc(BASE_DOC))
    before = snapshot(maps)
    log.clear()
    doc = dict(NEXT_DOC, tenants=NEXT_DOC["tenants"] + [{"id": 9, "name": "z"}])   # 4 tenants
    with pytest.raises(ValueError, match="policy has 4 tenants, counters hold 3; nothing was applied"):
        apply_compiled(maps, compile_doc(doc))
    assert log == [] and snapshot(maps) == before
    # Exactly at capacity (same tenants, other contents) it applies.
    compiled = compile_doc(dict(NEXT_DOC, tenants=BASE_DOC["tenants"][:2] + [NEXT_DOC["tenants"][2] | {"id": 3}]))
    apply_compiled(maps, compiled)
    assert_maps_hold(maps, compiled)


def test_capacity_error_on_empty_maps_writes_nothing():
    log = []
    maps = fake_maps(log, ew_vips=3)
    with pytest.raises(ValueError, match="ew_vips"):
        apply_compiled(maps, compile_doc(BASE_DOC))   # 4 VIPs
    assert log == []
    assert all(not m.items() for name, m in maps.items() if name != "ew_config")


@pytest.mark.parametrize("scenario", ["vips", "counters"])
def test_replacing_a_full_map_does_not_fail_half_way(scenario):
    """BUG: _check_capacity compares only the final entry counts with max_entries, but
    apply_compiled adds new entries (and new tenants' counters) before deleting stale
    ones, so the peak is live + new. Replacing the contents of a map that is (near) full
    passes the check and then fails in the kernel (E2BIG) after earlier maps were
    already rewritten: a half-applied policy, despite 'nothing was applied' promises."""
    log = []
    old_doc = {"revision": 1, "tenants": [{"id": 1, "name": "a", "vips": ["203.0.113.1", "203.0.113.2"]},
                                          {"id": 2, "name": "b"}]}
    new_doc = {"revision": 2, "global": {"blocked_sources": ["192.0.2.0/24"]},
               "tenants": [{"id": 1, "name": "a", "vips": ["203.0.113.3", "203.0.113.4"]},
                           {"id": 2, "name": "b"}]}
    if scenario == "vips":
        maps = fake_maps(log, ew_vips=2)
    else:
        maps = fake_maps(log, ew_counters=3)
        new_doc["tenants"] = [{"id": 3, "name": "c", "vips": ["203.0.113.1", "203.0.113.2"]},
                              {"id": 4, "name": "d"}]
    apply_compiled(maps, compile_doc(old_doc))
    before = snapshot(maps)
    new = compile_doc(new_doc)
    try:
        apply_compiled(maps, new)
    except (ValueError, OSError) as err:
        assert snapshot(maps) == before, f"apply failed half-way ({err}); maps were already modified"
    else:
        assert_maps_hold(maps, new)
