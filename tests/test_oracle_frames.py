"""Frames built with scapy (tests/data/oracle/frames.json, written by
make_frames.py) through the real XDP program (BPF_PROG_TEST_RUN) under
tests/data/oracle/policy.toml: for every frame the XDP verdict, the tenant,
the verdict reason and the traffic class the README's rules give it. The
expectations come from no code of the project, so they catch what the
datapath and the reference model (a port of the C) would both get wrong.
The reference model is held to them as well."""

import json
from pathlib import Path

import pytest

from agent.datapath.private import PrivateDatapath
from agent.policy import load_policy
from agent.reference import ReferenceBuckets, judge
from oracle import ACTION_NAMES, observe

ORACLE_DIR = Path(__file__).resolve().parent / "data" / "oracle"
DOCUMENT = json.loads((ORACLE_DIR / "frames.json").read_text())
POLICY = load_policy(ORACLE_DIR / DOCUMENT["policy"])
CASES = {case["name"]: case for case in DOCUMENT["cases"]}


def expected_of(step: dict) -> dict:
    keys = ("verdict", "tenant", "reason", "class")
    return {k: step[k] for k in keys if k in step}


@pytest.fixture(scope="module")
def datapath():
    # One datapath for the file, cases in file order: the stateful cases
    # (hard caps) each have a tenant of their own, touched by no other case.
    with PrivateDatapath(POLICY) as datapath:
        yield datapath


def test_every_verdict_reason_has_an_oracle_frame():
    from agent.datapath.abi import VerdictReason
    covered = {step["reason"] for case in CASES.values() for step in case["frames"]}
    assert covered == {r.name for r in VerdictReason}


@pytest.mark.parametrize("name", list(CASES))
def test_xdp_gives_the_readme_verdict(datapath, name):
    case = CASES[name]
    for i, step in enumerate(case["frames"]):
        got = observe(datapath, bytes.fromhex(step["hex"]))
        observed = {"verdict": got.verdict, "tenant": got.tenant_id, "reason": got.reason,
                    "class": got.traffic_class}
        expected = expected_of(step)
        observed = {k: observed[k] for k in expected}
        assert observed == expected, f"{name} frame {i} ({case['why']}): {step['hex']}"


@pytest.fixture(scope="module")
def reference_buckets():
    buckets = ReferenceBuckets()
    buckets.apply(POLICY)
    return buckets


@pytest.mark.parametrize("name", list(CASES))
def test_reference_model_gives_the_readme_verdict(reference_buckets, name):
    case = CASES[name]
    for i, step in enumerate(case["frames"]):
        verdict = judge(POLICY, bytes.fromhex(step["hex"]), reference_buckets, 1)
        observed = {"verdict": ACTION_NAMES[verdict.action], "tenant": verdict.tenant_id,
                    "reason": verdict.reason.name, "class": verdict.traffic_class.name}
        expected = expected_of(step)
        observed = {k: observed[k] for k in expected}
        assert observed == expected, f"{name} frame {i} ({case['why']}): {step['hex']}"
