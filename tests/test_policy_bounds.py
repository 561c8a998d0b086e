"""The arithmetic bounds of flood limits hold for every Policy, not only
for TOML documents: a controller that builds a Policy directly cannot hand
the datapath a burst whose burst x 1e9 overflows 64 bits, or a rate whose
elapsed x rate does. Before, only the document validator checked them, and
a directly built policy compiled and ran with wrapped-around buckets."""

import dataclasses

import pytest

from agent.datapath.abi import VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.policy.model import MAX_RATE, FloodPolicy, Policy, Rate, Tenant, Vip
from agent.reference import ReferenceBuckets
from frames import udp_ipv4_frame
from oracle import Oracle
import ipaddress

VIP = ipaddress.ip_address("203.0.113.10")


@pytest.mark.parametrize("field", ["packets", "syns", "fragment_rate", "per_source"])
@pytest.mark.parametrize("rate", [Rate(MAX_RATE + 1, 1), Rate(1, MAX_RATE + 1), Rate(-1, 1), Rate(2**64, 1)],
                         ids=["rate", "burst", "negative", "wraps"])
def test_out_of_range_rates_are_refused_however_built(field, rate):
    with pytest.raises(ValueError, match=rf"flood\.{field}\.(per_second|burst) = .* must be an integer in 0\.\."):
        FloodPolicy(**{field: rate})
    with pytest.raises(ValueError):
        dataclasses.replace(FloodPolicy(), **{field: rate})


def test_bits_go_to_eight_times_the_rate_limit():
    FloodPolicy(bits=Rate(8 * MAX_RATE, 8 * MAX_RATE))
    with pytest.raises(ValueError, match=r"flood\.bits\.burst"):
        FloodPolicy(bits=Rate(8, 8 * MAX_RATE + 8))


def test_prefix_lengths_are_bounded():
    with pytest.raises(ValueError, match="source_prefix_v6"):
        FloodPolicy(source_prefix_v6=129)
    with pytest.raises(ValueError, match="source_prefix_v4"):
        FloodPolicy(source_prefix_v4=-1)


def test_the_largest_allowed_limits_still_count_right_in_the_datapath():
    """At the bound the arithmetic holds: a burst of MAX_RATE packets passes
    the first packets and the reference agrees (no wrap-around)."""
    flood = FloodPolicy(packets=Rate(MAX_RATE, MAX_RATE), per_source=Rate(MAX_RATE, MAX_RATE))
    policy = Policy(revision=1, tenants=(Tenant(1, "shop", vips=(Vip(VIP),), flood=flood),))
    buckets = ReferenceBuckets()
    buckets.apply(policy)
    with PrivateDatapath(policy) as datapath:
        oracle = Oracle(datapath, policy, buckets)
        for _ in range(3):
            assert oracle.check(udp_ipv4_frame("198.51.100.9", str(VIP), 5000, 8080)).reason is \
                VerdictReason.pass_allowed
