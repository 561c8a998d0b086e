"""From the workflow to the datapath, without the distribution layer (issue
11): the revision the 30-minute rule makes, compiled by agent.datapath.compile,
sets the tenant's suspended flag; applied to the real XDP program
(BPF_PROG_TEST_RUN) the tenant's traffic is dropped as drop_tenant_suspended,
and passes again after the operator marks the case remediated. The spam
rule's revision blocks the SMTP ports in the same program."""

import struct

from agent.datapath import abi
from agent.datapath.abi import VerdictReason
from agent.datapath.compile import compile_policy, pack_u32
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from controller import revisions
from controller.store import reading
from controller.workflow import IncidentReport, ManualClock
from frames import tcp_ipv4_frame

from workflow_helpers import add_tenant, assert_chain_intact, workflow

XDP_DROP, XDP_PASS = 1, 2
VIP = "203.0.113.1"          # add_tenant(engine, 1) registers this VIP


def latest_policy(engine):
    with reading(engine) as conn:
        latest = revisions.list_revisions(conn, 1)[0]["revision"]
        return policy_from_document(revisions.load_document(conn, latest), f"revision {latest}")


def tenant_flags(policy, tenant_id=1) -> int:
    value = compile_policy(policy).maps["ew_tenants"][pack_u32(tenant_id)]
    return struct.unpack_from("<I", value, 0)[0]


def verdict(datapath, frame, tenant_id=1):
    before = datapath.counters().get(tenant_id)
    action = datapath.run(frame)
    after = datapath.counters()[tenant_id]
    grew = [r for r, n in after.reason_packets.items() if n > (before.reason_packets.get(r, 0) if before else 0)]
    assert len(grew) == 1, grew
    return action, grew[0]


def test_suspension_by_the_30_minute_rule_drops_the_tenant_in_the_xdp_program(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    case = wf.report(IncidentReport(tenant_id=1, kind="virus", summary="worm"), reported_by="alice")
    frame = tcp_ipv4_frame("198.51.100.7", VIP, 40000, 443, flags="S")
    with PrivateDatapath(latest_policy(engine)) as datapath:
        assert not tenant_flags(latest_policy(engine)) & abi.TENANT_SUSPENDED
        assert verdict(datapath, frame) == (XDP_PASS, VerdictReason.pass_allowed.name)

        clock.advance(minutes=30)
        wf.run_due()
        suspended = latest_policy(engine)
        assert tenant_flags(suspended) & abi.TENANT_SUSPENDED
        datapath.apply(suspended)
        assert verdict(datapath, frame) == (XDP_DROP, VerdictReason.drop_tenant_suspended.name)

        wf.remediate(case["id"], operator="alice", reason="cleaned")
        resumed = latest_policy(engine)
        assert not tenant_flags(resumed) & abi.TENANT_SUSPENDED
        datapath.apply(resumed)
        assert verdict(datapath, frame) == (XDP_PASS, VerdictReason.pass_allowed.name)
    assert_chain_intact(engine)


def test_severe_spam_blocks_the_smtp_ports_in_the_xdp_program(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    wf.report(IncidentReport(tenant_id=1, kind="spam", summary="open relay", severity="severe"), reported_by="alice")
    clock.advance(minutes=24 * 60)
    wf.run_due()                               # the temporary suspension ends; the port blocks stay
    with PrivateDatapath(latest_policy(engine)) as datapath:
        for port in (25, 465, 587):
            frame = tcp_ipv4_frame("198.51.100.7", VIP, 40000, port, flags="S")
            assert verdict(datapath, frame) == (XDP_DROP, VerdictReason.drop_port_block.name)
        web = tcp_ipv4_frame("198.51.100.7", VIP, 40000, 443, flags="S")
        assert verdict(datapath, web) == (XDP_PASS, VerdictReason.pass_allowed.name)
