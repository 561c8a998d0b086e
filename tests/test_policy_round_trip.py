"""Policy documents round-trip: canonical documents, TOML written and read
back, and hypothesis-generated valid documents in every accepted spelling."""

import tomllib

from hypothesis import HealthCheck, given, settings

from agent.policy import (
    Policy,
    Tenant,
    TenantState,
    load_policy,
    policy_from_document,
    policy_to_document,
    policy_to_toml,
    save_policy,
)
from agent.policy.document import MAX_RATE
from agent.policy.model import FloodPolicy, FragmentPolicy, Rate

from policy_support import (
    AMPLIFICATION_PORTS,
    BUCKET_RATE_PAIRS,
    EXAMPLE,
    MAX_BITS,
    RATE_PAIRS,
    SETTINGS,
    SOURCE_RATE_PAIR,
    valid_documents,
)


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


def test_flood_document_is_canonical_and_only_there_when_not_the_default():
    doc = {"tenants": [
        {"id": 1, "name": "a", "flood": {"syn_burst": 7, "allow_amplification_ports": [5353, 19, 5353],
                                         "fragments": "drop", "amplification": "pass"}},
        {"id": 2, "name": "b", "flood": {}},
        {"id": 3, "name": "c", "flood": {"amplification": "drop", "fragments": "pass", "bits_per_second": 0,
                                         "bit_burst": 0, "allow_amplification_ports": []}},
        {"id": 4, "name": "d", "flood": {"bits_per_second": 8000, "bit_burst": 16000}},
        {"id": 5, "name": "e", "flood": {"source_prefix_v6": 48}},
        {"id": 6, "name": "f", "flood": {"source_prefix_v4": 24, "source_prefix_v6": 64}},
    ]}
    policy = policy_from_document(doc)
    canonical = policy_to_document(policy)
    zero = {key: 0 for pair in RATE_PAIRS for key in pair} | {"source_prefix_v4": 24, "source_prefix_v6": 64,
                                                              "syn_cookies": False, "syn_ack": "drop"}
    assert [t.get("flood") for t in canonical["tenants"]] == [
        {"amplification": "pass", "allow_amplification_ports": [19, 5353], "fragments": "drop",
         **zero, "syn_burst": 7},
        None, None,   # the default, however spelt, is not written
        {"amplification": "drop", "allow_amplification_ports": [], "fragments": "pass",
         **zero, "bits_per_second": 8000, "bit_burst": 16000},
        {"amplification": "drop", "allow_amplification_ports": [], "fragments": "pass",
         **zero, "source_prefix_v6": 48},
        None,
    ]
    assert all("flood" not in canonical["tenants"][i] for i in (1, 2, 5))
    assert policy_from_document(canonical) == policy
    text = policy_to_toml(policy)
    assert text.count("[tenants.flood]") == 3
    assert policy_from_document(tomllib.loads(text)) == policy
    # Of the example's tenants only shop has a flood table; the default ones get none.
    example = policy_to_document(load_policy(EXAMPLE))
    assert ["flood" in t for t in example["tenants"]] == [True, False, False]
    assert policy_to_toml(load_policy(EXAMPLE)).count("[tenants.flood]") == 1


def test_non_default_flood_policies_round_trip(tmp_path):
    floods = [FloodPolicy(False), FloodPolicy(allow_amplification_ports=(53,)),
              FloodPolicy(per_source=Rate(3, 4), source_prefix_v4=8, source_prefix_v6=128),
              FloodPolicy(False, AMPLIFICATION_PORTS, FragmentPolicy.DROP),
              FloodPolicy(fragments=FragmentPolicy.LIMIT, fragment_rate=Rate(1, 1)),
              FloodPolicy(packets=Rate(MAX_RATE, MAX_RATE), bits=Rate(MAX_BITS, MAX_BITS),
                          syns=Rate(0, 1), fragment_rate=Rate(MAX_RATE, 1))]
    policy = Policy(9, tuple(Tenant(i, f"t{i}", flood=f) for i, f in enumerate(floods, 1)))
    assert policy_from_document(policy_to_document(policy)) == policy
    assert all("flood" in t for t in policy_to_document(policy)["tenants"])
    save_policy(policy, tmp_path / "p.toml")
    assert load_policy(tmp_path / "p.toml") == policy


def expected_flood_policy(table: dict) -> FloodPolicy:
    """What a valid flood table means, read straight from it."""
    def rate(rate_key, burst_key):
        return Rate(table.get(rate_key, 0), table.get(burst_key, 0))
    return FloodPolicy(drop_amplification=table.get("amplification", "drop") == "drop",
                       allow_amplification_ports=tuple(sorted(set(table.get("allow_amplification_ports", [])))),
                       fragments=FragmentPolicy(table.get("fragments", "pass")),
                       packets=rate(*BUCKET_RATE_PAIRS[0]), bits=rate(*BUCKET_RATE_PAIRS[1]),
                       syns=rate(*BUCKET_RATE_PAIRS[2]), fragment_rate=rate(*BUCKET_RATE_PAIRS[3]),
                       per_source=rate(*SOURCE_RATE_PAIR),
                       source_prefix_v4=table.get("source_prefix_v4", 24),
                       source_prefix_v6=table.get("source_prefix_v6", 64))


@SETTINGS
@given(doc=valid_documents())
def test_valid_documents_round_trip(doc):
    policy = policy_from_document(doc)
    assert len(policy.tenants) == len(doc.get("tenants", []))
    for t, table in zip(policy.tenants, doc.get("tenants", [])):
        assert t.flood == expected_flood_policy(table.get("flood", {}))
    canonical = policy_to_document(policy)
    for t, table in zip(policy.tenants, canonical["tenants"]):
        assert ("flood" in table) == (t.flood != FloodPolicy())   # only when it is not the default
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
