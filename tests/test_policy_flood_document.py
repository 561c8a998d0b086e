"""The [tenants.flood] table of the policy document: defaults, parsing and
validation of every flood setting."""

import pytest

from agent.datapath import abi
from agent.policy import PolicyError, Tenant, load_policy, policy_from_document, policy_to_document
from agent.policy.document import MAX_RATE
from agent.policy.model import FloodPolicy, FragmentPolicy, Rate

from policy_support import (
    AMPLIFICATION_PORTS,
    MAX_BITS,
    MAX_ID,
    RATE_PAIRS,
    SOURCE_PREFIXES,
    errors_of,
    one_tenant_errors,
    tenant,
)


AMP_PORT_LIST = ", ".join(str(p) for p in AMPLIFICATION_PORTS)
FLOOD_KEY_LIST = ("allow_amplification_ports, amplification, bit_burst, bits_per_second, fragment_burst, "
                  "fragments, fragments_per_second, packet_burst, packets_per_second, source_packet_burst, "
                  "source_packets_per_second, source_prefix_v4, source_prefix_v6, syn_ack, syn_burst, syn_cookies, "
                  "syns_per_second")
RATE_FIELDS = {"packets_per_second": "packets", "bits_per_second": "bits", "syns_per_second": "syns",
               "fragments_per_second": "fragment_rate", "source_packets_per_second": "per_source"}


def flood_errors(flood) -> list[str]:
    return one_tenant_errors(flood=flood)


def flood_policy_of(flood) -> FloodPolicy:
    return policy_from_document({"tenants": [tenant(flood=flood)]}).tenants[0].flood


def test_amplification_ports_are_the_headers():
    assert MAX_RATE == 10**10
    assert abi.AMPLIFICATION_PORTS == {port: bit for bit, port in enumerate(AMPLIFICATION_PORTS)}
    assert {k.name: k.value for k in abi.BucketKind} == {"packets": 0, "bytes": 1, "syn": 2, "fragments": 3}
    assert abi.BUCKET_KINDS == 4
    assert (abi.FLOOD_DROP_AMPLIFICATION, abi.FLOOD_DROP_FRAGMENTS, abi.FLOOD_LIMIT_FRAGMENTS,
            abi.FLOOD_HAS_LIMITS) == (1, 2, 4, 8)
    assert abi.TENANT_HAS_FLOOD_POLICY == 16


def test_flood_defaults():
    """No flood table, an empty one, and one spelling out the defaults are all the
    default policy: amplification sources dropped, fragments passed, no limits."""
    default = FloodPolicy(drop_amplification=True, allow_amplification_ports=(), fragments=FragmentPolicy.PASS,
                          packets=Rate(0, 0), bits=Rate(0, 0), syns=Rate(0, 0), fragment_rate=Rate(0, 0),
                          per_source=Rate(0, 0), source_prefix_v4=24, source_prefix_v6=64)
    assert FloodPolicy() == default and Tenant(1, "t").flood == default
    assert policy_from_document({"tenants": [tenant()]}).tenants[0].flood == default
    assert flood_policy_of({}) == default
    explicit = {"amplification": "drop", "allow_amplification_ports": [], "fragments": "pass",
                "source_prefix_v4": 24, "source_prefix_v6": 64}
    explicit |= {key: 0 for pair in RATE_PAIRS for key in pair}
    assert flood_policy_of(explicit) == default


def test_flood_table_is_parsed():
    flood = flood_policy_of({
        "amplification": "drop", "allow_amplification_ports": [123, 53, 53, 37810, 19],
        "fragments": "limit", "fragments_per_second": 100, "fragment_burst": 200,
        "packets_per_second": 10**10, "packet_burst": 1,
        "bits_per_second": MAX_BITS, "bit_burst": MAX_BITS,
        "syn_burst": 5,                                    # a burst alone: a hard cap
        "source_packets_per_second": 50, "source_packet_burst": 75,
        "source_prefix_v4": 32, "source_prefix_v6": 128,
    })
    assert flood == FloodPolicy(True, (19, 53, 123, 37810), FragmentPolicy.LIMIT,
                                packets=Rate(10**10, 1), bits=Rate(MAX_BITS, MAX_BITS), syns=Rate(0, 5),
                                fragment_rate=Rate(100, 200), per_source=Rate(50, 75),
                                source_prefix_v4=32, source_prefix_v6=128)
    assert flood_policy_of({"source_prefix_v4": 8, "source_prefix_v6": 16}) == FloodPolicy(
        source_prefix_v4=8, source_prefix_v6=16)
    assert flood_policy_of({"amplification": "pass", "fragments": "drop"}) == FloodPolicy(
        False, (), FragmentPolicy.DROP)
    # A fragment hard cap is enough for "limit".
    assert flood_policy_of({"fragments": "limit", "fragment_burst": 3}) == FloodPolicy(
        fragments=FragmentPolicy.LIMIT, fragment_rate=Rate(0, 3))


@pytest.mark.parametrize("flood", ["drop", 1, ["amplification"], True])
def test_flood_must_be_a_table(flood):
    assert flood_errors(flood) == ["tenants[0].flood: expected a table"]


@pytest.mark.parametrize("value", ["block", "DROP", "", True, 1, None, ["drop"]])
def test_bad_amplification_value(value):
    assert flood_errors({"amplification": value}) == [
        f"tenants[0].flood: amplification = {value!r} is not one of: drop, pass"]


@pytest.mark.parametrize("port", [80, 0, 1, 65535, -53, True, False, "53", None, 2**64])
def test_bad_allowed_amplification_port(port):
    assert flood_errors({"allow_amplification_ports": [53, port]}) == [
        f"tenants[0].flood: allow_amplification_ports: {port!r} is not an amplification port ({AMP_PORT_LIST})"]


def test_every_bad_allowed_port_is_reported():
    assert flood_errors({"allow_amplification_ports": [80, 53, True, 443]}) == [
        f"tenants[0].flood: allow_amplification_ports: {p!r} is not an amplification port ({AMP_PORT_LIST})"
        for p in (80, True, 443)]


@pytest.mark.parametrize("ports", [53, "53", {"port": 53}, None])
def test_allowed_amplification_ports_must_be_a_list(ports):
    assert flood_errors({"allow_amplification_ports": ports}) == [
        "tenants[0].flood: allow_amplification_ports must be a list of ports"]


@pytest.mark.parametrize("port", [[53], {"port": 53}])
def test_unhashable_allowed_port_is_a_validation_error(port):
    """Regression: a list or table inside allow_amplification_ports (looked up in a
    dict) is a located PolicyError beside the document's other errors, not a bare
    TypeError ('unhashable type')."""
    doc = {"tenants": [tenant(name=5, flood={"allow_amplification_ports": [port]})]}
    try:
        errs = errors_of(doc)
    except TypeError as err:
        pytest.fail(f"allow_amplification_ports = [{port!r}] escaped validation as {type(err).__name__}: {err}")
    assert errs == ["tenants[0]: name must be a non-empty string",
                    f"tenants[0].flood: allow_amplification_ports: {port!r} is not an amplification port "
                    f"({AMP_PORT_LIST})"]


def test_float_allowed_port_is_rejected_like_every_other_float():
    """Regression: allow_amplification_ports = [53.0] (53.0 == 53 and hashes alike, so
    it is 'in' AMPLIFICATION_PORTS) must not be kept as a float in the canonical
    document and the TOML; every other integer of the document rejects a float."""
    try:
        policy = policy_from_document({"tenants": [tenant(flood={"allow_amplification_ports": [53.0]})]})
    except PolicyError as err:
        assert err.errors == [f"tenants[0].flood: allow_amplification_ports: 53.0 is not an amplification port "
                              f"({AMP_PORT_LIST})"]
        return
    ports = policy_to_document(policy)["tenants"][0]["flood"]["allow_amplification_ports"]
    assert [type(p) for p in ports] == [int], f"the canonical document holds {ports!r}"


@pytest.mark.parametrize("value", ["reassemble", "Drop", "", 0, True, None, ["drop"]])
def test_bad_fragments_value(value):
    assert flood_errors({"fragments": value}) == [
        f"tenants[0].flood: fragments = {value!r} is not one of: pass, drop, limit"]


@pytest.mark.parametrize("rate_key,burst_key", RATE_PAIRS)
@pytest.mark.parametrize("which", ["rate", "burst"])
@pytest.mark.parametrize("value", ["negative", "too large", 1.5, 100.0, "100", True, None, [1]])
def test_bad_rate_values(rate_key, burst_key, which, value):
    limit = MAX_BITS if rate_key.startswith("bit") else MAX_RATE
    value = {"negative": -1, "too large": limit + 1}.get(value, value) if isinstance(value, str) else value
    key = rate_key if which == "rate" else burst_key
    table = {rate_key: 10, burst_key: 10, key: value}
    assert flood_errors(table) == [f"tenants[0].flood: {key} = {value!r} must be an integer in 0..{limit}"]


@pytest.mark.parametrize("rate_key,burst_key", RATE_PAIRS)
def test_rate_limits_are_inclusive(rate_key, burst_key):
    limit = MAX_BITS if rate_key.startswith("bit") else MAX_RATE
    flood = flood_policy_of({rate_key: limit, burst_key: limit})
    assert getattr(flood, RATE_FIELDS[rate_key]) == Rate(limit, limit)
    if not rate_key.startswith("bit"):   # only bits go up to 8 x MAX_RATE
        assert flood_errors({rate_key: MAX_BITS, burst_key: 1}) == [
            f"tenants[0].flood: {rate_key} = {MAX_BITS} must be an integer in 0..{MAX_RATE}"]


@pytest.mark.parametrize("rate_key,burst_key", RATE_PAIRS)
@pytest.mark.parametrize("burst", [None, 0])
def test_rate_needs_a_burst(rate_key, burst_key, burst):
    table = {rate_key: 1000} if burst is None else {rate_key: 1000, burst_key: burst}
    assert flood_errors(table) == [f"tenants[0].flood: {rate_key} needs {burst_key} of at least 1 "
                                   "(a bucket that holds nothing passes nothing)"]


@pytest.mark.parametrize("table", [{"fragments": "limit"},
                                   {"fragments": "limit", "fragments_per_second": 0, "fragment_burst": 0},
                                   {"fragments": "limit", "packets_per_second": 10, "packet_burst": 10}])
def test_fragment_limit_needs_a_fragment_rate(table):
    assert flood_errors(table) == [
        'tenants[0].flood: fragments = "limit" needs fragments_per_second and fragment_burst']


@pytest.mark.parametrize("key", sorted(SOURCE_PREFIXES))
@pytest.mark.parametrize("value", ["below", "above", 0, -24, True, 24.0, "24", None, [24]])
def test_bad_source_prefix(key, value):
    low, high, _ = SOURCE_PREFIXES[key]
    value = {"below": low - 1, "above": high + 1}.get(value, value) if isinstance(value, str) else value
    assert flood_errors({key: value}) == [f"tenants[0].flood: {key} = {value!r} must be an integer in {low}..{high}"]


@pytest.mark.parametrize("key", sorted(SOURCE_PREFIXES))
def test_source_prefix_bounds_are_inclusive(key):
    low, high, default = SOURCE_PREFIXES[key]
    assert getattr(FloodPolicy(), key) == default
    for value in (low, high):
        assert getattr(flood_policy_of({key: value}), key) == value


def test_fragment_limit_with_a_bad_fragment_rate_reports_the_rate_only():
    assert flood_errors({"fragments": "limit", "fragments_per_second": 5}) == [
        "tenants[0].flood: fragments_per_second needs fragment_burst of at least 1 "
        "(a bucket that holds nothing passes nothing)"]


@pytest.mark.parametrize("key", ["fragment", "rate", "burst", "packets", "pps", "allowed_ports", "Amplification"])
def test_unknown_flood_keys(key):
    assert flood_errors({"amplification": "pass", key: 1}) == [
        f"tenants[0].flood: unknown key {key!r} (expected one of: {FLOOD_KEY_LIST})"]


def test_every_flood_error_is_reported_at_once():
    doc = {"tenants": [
        {"id": 1, "name": "a", "flood": {
            "colour": "red", "amplification": "maybe", "allow_amplification_ports": [80, 53],
            "fragments": "limit", "packets_per_second": -5, "packet_burst": 10,
            "bits_per_second": 1000, "syns_per_second": 1.5, "syn_burst": 2,
            "source_packets_per_second": 9, "source_prefix_v4": 33, "source_prefix_v6": 12}},
        {"id": 2, "name": "b", "vips": ["x"], "flood": "none"},
        {"id": 3, "name": "c", "flood": {"fragments": "sometimes", "fragment_burst": MAX_RATE + 1}},
        {"id": 4, "name": "d", "flood": {"amplification": "pass", "allow_amplification_ports": [19],
                                         "fragments": "drop", "syn_burst": 1}},   # valid
    ]}
    assert errors_of(doc) == [
        f"tenants[0].flood: unknown key 'colour' (expected one of: {FLOOD_KEY_LIST})",
        "tenants[0].flood: amplification = 'maybe' is not one of: drop, pass",
        f"tenants[0].flood: allow_amplification_ports: 80 is not an amplification port ({AMP_PORT_LIST})",
        f"tenants[0].flood: packets_per_second = -5 must be an integer in 0..{MAX_RATE}",
        "tenants[0].flood: bits_per_second needs bit_burst of at least 1 (a bucket that holds nothing passes nothing)",
        f"tenants[0].flood: syns_per_second = 1.5 must be an integer in 0..{MAX_RATE}",
        "tenants[0].flood: source_packets_per_second needs source_packet_burst of at least 1 "
        "(a bucket that holds nothing passes nothing)",
        'tenants[0].flood: fragments = "limit" needs fragments_per_second and fragment_burst',
        "tenants[0].flood: source_prefix_v4 = 33 must be an integer in 8..32",
        "tenants[0].flood: source_prefix_v6 = 12 must be an integer in 16..128",
        "tenants[1].vips[0]: address 'x' is not an IP address",
        "tenants[1].flood: expected a table",
        "tenants[2].flood: fragments = 'sometimes' is not one of: pass, drop, limit",
        f"tenants[2].flood: fragment_burst = {MAX_RATE + 1} must be an integer in 0..{MAX_RATE}",
    ]


def test_flood_errors_come_with_the_tenants_other_errors():
    errs = errors_of({"tenants": [{"id": 0, "name": "", "flood": {"amplification": 0}}]})
    assert errs == [f"tenants[0]: id 0 must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)",
                    "tenants[0]: name must be a non-empty string",
                    "tenants[0].flood: amplification = 0 is not one of: drop, pass"]


def test_flood_in_a_toml_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('revision = 4\n\n[[tenants]]\nid = 1\nname = "game"\nvips = ["203.0.113.1"]\n\n'
                    '[tenants.flood]\namplification = "drop"\nallow_amplification_ports = [53, 123]\n'
                    'fragments = "drop"\nsyns_per_second = 2000\nsyn_burst = 4000\n'
                    'bits_per_second = 800_000_000\nbit_burst = 80_000_000\n\n'
                    '[[tenants]]\nid = 2\nname = "plain"\n\n'
                    '[[tenants]]\nid = 3\nname = "bad"\n[tenants.flood]\nfragments = "limit"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.errors == ['tenants[2].flood: fragments = "limit" needs fragments_per_second and fragment_burst']
    path.write_text(path.read_text().replace('fragments = "limit"', 'fragments = "limit"\nfragments_per_second = 10'
                                                                    '\nfragment_burst = 20'))
    game, plain, limited = load_policy(path).tenants
    assert game.flood == FloodPolicy(True, (53, 123), FragmentPolicy.DROP, bits=Rate(800_000_000, 80_000_000),
                                     syns=Rate(2000, 4000))
    assert plain.flood == FloodPolicy()
    assert limited.flood == FloodPolicy(fragments=FragmentPolicy.LIMIT, fragment_rate=Rate(10, 20))
