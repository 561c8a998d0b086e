"""Tenant-wide token buckets without a lock per packet (bpf/token_bucket.h
share_take): each CPU takes tokens from the shared bucket in batches and
spends them locally.

(a) The kernel's arithmetic, through a harness program that is handed the
    clock and the CPU, against the reference SharedBucket, step by step.
(b) The documented bound, on the reference (which (a) holds the kernel to):
    over 1 s on 2 CPUs the tenant never passes more than the configured
    limit lets through (rate x time + burst: every token is taken from the
    shared bucket once), and at most ncpus x batch units fewer than one
    exact bucket (the tokens CPUs hold taken and unspent); both are within
    1% of the configured rate. (It can pass a few more than the exact bucket,
    never more than the limit: the exact one throws away its refill while
    full, the shared one keeps refilling while CPUs hold tokens taken from it.)
(c) With batches of one unit (rates below 256/s), exactly what one exact
    bucket passes, whichever CPU a packet lands on.
"""

import random
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent._libbpf import lib
from agent.datapath.bpf_object import BpfObject
from agent.datapath.syscalls import test_run
from agent.reference import NS_PER_SECOND, SharedBucket, TokenBucket, share_batch
from native.bpf_build import compile_bpf

REPO = Path(__file__).resolve().parents[1]
U64 = 2**64 - 1
CPUS = 2


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    obj = compile_bpf(REPO / "tests" / "bpf" / "bucket_harness.bpf.c",
                      tmp_path_factory.mktemp("harness") / "bucket_harness.bpf.o")
    with BpfObject(obj) as harness_object:
        yield (harness_object.program_fd("share_harness"),
               harness_object.map("ew_buckets", "__u32", "struct ew_bucket"),
               harness_object.map("harness_shares", "__u32", "struct ew_bucket_share"))


def reset(harness):
    _, buckets, shares = harness
    buckets.update(b"\0\0\0\0", bytes(buckets.value_size))
    for cpu in range(4):
        shares.update(struct.pack("=I", cpu), bytes(shares.value_size))


def take(harness, now, rate, burst, units, cpu, generation=1) -> bool:
    prog_fd = harness[0]
    action = test_run(prog_fd, bytes(14) + struct.pack("=6Q", now, rate, burst, units, generation, cpu)).retval
    assert action in (lib.XDP_PASS, lib.XDP_DROP)
    return action == lib.XDP_PASS


def kernel_state(harness):
    _, buckets, shares = harness
    _, generation, tokens, last_ns = struct.unpack("=IIQQ", buckets.lookup(b"\0\0\0\0"))
    per_cpu = [struct.unpack("=QQQII", shares.lookup(struct.pack("=I", cpu)))[:3] for cpu in range(CPUS)]
    return (tokens, last_ns), per_cpu


def reference_state(reference: SharedBucket):
    per_cpu = [(reference.shares[c].tokens, reference.shares[c].dry_ns, reference.shares[c].dry_tokens)
               if c in reference.shares else (0, 0, 0) for c in range(CPUS)]
    return (reference.bucket.tokens, reference.bucket.last_ns), per_cpu


steps = st.tuples(
    st.sampled_from([0, 1, 999, 10**5, 10**6, 10**9 - 1, 10**9, 3 * 10**9, -1, -10**9]),   # clock step
    st.sampled_from([0, 1, 3, 255, 256, 1000, 10**6, 10**10]),     # rate
    st.sampled_from([0, 1, 2, 5, 1500, 10**6, 10**10]),            # burst
    st.sampled_from([1, 2, 1500, 10**10]),                         # units
    st.integers(0, CPUS - 1),                                      # the CPU the packet lands on
)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=30), st.integers(1, 2**50))
def test_share_arithmetic_matches_the_reference(harness, sequence, start):
    reset(harness)
    reference = SharedBucket()
    now = start
    for step, rate, burst, units, cpu in sequence:
        now = min(max(now + step, 1), U64)
        allowed = take(harness, now, rate, burst, units, cpu)
        assert allowed == reference.take(rate, burst, now, units, cpu), (now, rate, burst, units, cpu)
        assert kernel_state(harness) == reference_state(reference)


def test_a_new_policy_generation_empties_the_shares(harness):
    reset(harness)
    t0 = 10**12
    rate, burst = 25600, 1000          # batches of 100
    assert take(harness, t0, rate, burst, 1, 0, generation=7)
    assert kernel_state(harness)[1][0][0] == 99 * NS_PER_SECOND    # the rest of the batch, on CPU 0
    assert take(harness, t0, rate, burst, 1, 0, generation=8)
    # The new generation's bucket started full and lent a fresh batch.
    assert kernel_state(harness)[0][0] == (burst - 100) * NS_PER_SECOND


def offered_traffic(seed: int, rate: int, seconds: float = 1.0, load: float = 2.0):
    """(time ns, cpu) of packets offered at `load` times the rate for `seconds`,
    spread over CPUS CPUs unevenly, at random gaps."""
    rng = random.Random(seed)
    weights = [rng.uniform(0.2, 1.0) for _ in range(CPUS)]
    mean_gap = NS_PER_SECOND / (rate * load)
    now, packets = 10**12, []
    end = now + int(seconds * NS_PER_SECOND)
    while now < end:
        now += max(1, int(rng.expovariate(1 / mean_gap)))
        packets.append((now, rng.choices(range(CPUS), weights)[0]))
    return packets


@settings(max_examples=12, deadline=None)
# found by hypothesis: the shared bucket passes 7 more than the exact one, within the limit
@example(seed=33554433, rate=1000, burst_ms=10, load=1.2)
@given(seed=st.integers(0, 2**32), rate=st.sampled_from([1000, 5000, 25600, 40000]),
       burst_ms=st.sampled_from([10, 100, 1000]), load=st.sampled_from([1.2, 2.0, 5.0]))
def test_over_a_second_on_two_cpus_the_rate_is_within_one_percent(seed, rate, burst_ms, load):
    burst = rate * burst_ms // 1000
    exact, shared = TokenBucket(), SharedBucket()
    passed_exact = passed_shared = 0
    traffic = offered_traffic(seed, rate, load=load)
    for now, cpu in traffic:
        passed_exact += exact.take(rate, burst, now, 1)
        passed_shared += shared.take(rate, burst, now, 1, cpu)
    bound = CPUS * share_batch(rate, burst) // NS_PER_SECOND
    assert bound <= 0.01 * rate
    # What the configured limit lets through from the first packet to the last, at most.
    allowed = burst + (traffic[-1][0] - traffic[0][0]) * rate // NS_PER_SECOND
    assert passed_exact <= allowed
    assert passed_exact - bound <= passed_shared <= allowed, (passed_shared, passed_exact, bound, allowed)


def test_the_kernel_over_a_second_on_two_cpus(harness):
    """One second of offered traffic through the kernel's arithmetic: packet by
    packet what the reference passes, and within 1% of the rate."""
    reset(harness)
    rate, burst = 25600, 256
    reference, passed = SharedBucket(), 0
    for now, cpu in offered_traffic(7, rate, load=1.5):
        allowed = take(harness, now, rate, burst, 1, cpu)
        assert allowed == reference.take(rate, burst, now, 1, cpu)
        passed += allowed
    assert abs(passed - (rate + burst)) <= 0.01 * rate, passed


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), rate=st.integers(0, 255), burst=st.integers(1, 50), sizes=st.booleans())
def test_batches_of_one_unit_are_exact(seed, rate, burst, sizes):
    """Also for packets of several sizes (the byte bucket): one too big for
    what is left leaves it to the smaller ones."""
    exact, shared = TokenBucket(), SharedBucket()
    rng = random.Random(seed)
    now = 10**12
    for _ in range(300):
        now += rng.choice([0, 1, 10**6, 10**7, 10**8, 10**9])
        units = rng.choice([1, 1, 2, 5, 40]) if sizes else 1
        cpu = rng.randrange(CPUS)
        assert exact.take(rate, burst, now, units) == shared.take(rate, burst, now, units, cpu)
