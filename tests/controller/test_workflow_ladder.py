"""The enforcement ladder on both backends, with injected time: the virus
rule of 七.3 (warn, 30 minutes, suspend; severe: at once), spam (七.4: watch
list; severe: temporary suspension and the SMTP ports), attacks and illegal
content (七.1/七.2: block at once), false filing (十), repeat offenders (八:
escalation, termination only on an admin's confirmation), the rule file
refused whole. After each scenario the audit chain verifies."""

import dataclasses

import pytest

from controller.errors import Conflict, Forbidden, Invalid
from controller.tokens import Role
from controller.workflow import IncidentReport, ManualClock, RulesError
from controller.workflow.rules import DEFAULT_RULES, RuleBook, Strikes

from workflow_helpers import actions, add_tenant, assert_chain_intact, policy_tenant, tenant, workflow


def virus(tenant_id=1, **extra):
    return IncidentReport(tenant_id=tenant_id, kind="virus", summary="蠕虫 Conficker 向外扫描 445 端口",
                          evidence=("sha256:" + "ab" * 32,), **extra)


def test_virus_warned_then_suspended_at_minute_30(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    case = wf.report(virus(), reported_by="alice")
    assert case["state"] == "warned" and case["done"] == ["warn"]
    assert case["next_deadline"]["purpose"] == "grace_expired"
    assert (case["next_deadline"]["due_at"] - case["warned_at"]).total_seconds() == 30 * 60
    assert {n["channel"] for n in wf.show_case(case["id"])["notifications"]} == {"email", "webhook"}
    assert tenant(engine)["state"] == "active"

    clock.advance(minutes=29, seconds=59)
    assert wf.run_due() == []
    assert tenant(engine)["state"] == "active"

    clock.advance(seconds=1)
    acted = wf.run_due()
    assert [a["done"] for a in acted] == [["suspend"]]
    assert tenant(engine)["state"] == "suspended"
    assert policy_tenant(engine)["state"] == "suspended"       # the revision the agents get
    assert wf.run_due() == []                                  # acted on once
    shown = wf.show_case(case["id"])
    assert [n["subject"].split("/")[0] for n in shown["notifications"]].count("[edgewarden] 服务中断通知 ") == 2
    done = [a for a in shown["trail"] if a["action"] == "deadline.done"][0]
    assert done["reason"] == "rule kinds.virus.grace_minutes: grace_expired" and done["operator"] == "controller"

    out = wf.remediate(case["id"], operator="alice", reason="病毒已清除 hosts reimaged")
    assert out["state"] == "remediating" and out["done"] == ["resume"]
    assert policy_tenant(engine)["state"] == "active"
    wf.close(case["id"], operator="alice", reason="verified clean")
    assert actions(engine, case["id"]) == ["case.open", "incident.report", "case.warned", "deadline.done",
                                           "case.remediating", "case.resolved"]
    assert_chain_intact(engine)


def test_virus_remediated_within_the_grace_period_is_never_suspended(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    case = wf.report(virus(), reported_by="alice")
    clock.advance(minutes=10)
    wf.remediate(case["id"], operator="alice", reason="tenant disconnected the host")
    clock.advance(minutes=60)
    assert wf.run_due() == []
    assert tenant(engine)["state"] == "active"
    assert wf.show_case(case["id"])["deadlines"][0]["cancel_reason"].startswith("remediated")
    assert_chain_intact(engine)


@pytest.mark.parametrize("extra", [{"severity": "severe"}, {"harm_confirmed": True}])
def test_severe_or_confirmed_virus_suspends_at_once(engine, extra):
    add_tenant(engine)
    wf = workflow(engine)
    case = wf.report(virus(**extra), reported_by="alice")
    assert case["done"] == ["suspend"] and case["severe"]
    assert policy_tenant(engine)["state"] == "suspended"
    assert case["next_deadline"] is None
    assert_chain_intact(engine)


def test_severe_incident_on_a_warned_case_suspends_and_cancels_the_grace(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    first = wf.report(virus(), reported_by="alice")
    clock.advance(minutes=5)
    second = wf.report(virus(harm_confirmed=True), reported_by="agent-bj-01")
    assert second["id"] == first["id"] and not second["new_case"] and second["incidents"] == 2
    assert tenant(engine)["state"] == "suspended"
    clock.advance(minutes=30)
    assert wf.run_due() == []       # the grace deadline was cancelled by the suspension
    assert_chain_intact(engine)


def test_spam_watch_list_then_severe_temporary_suspension_and_smtp_ports(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    case = wf.report(IncidentReport(tenant_id=1, kind="spam", summary="投诉: 开放中继转发垃圾邮件",
                                    source="complaint"), reported_by="alice")
    assert case["done"] == ["warn", "watch"]
    doc = policy_tenant(engine)
    assert doc["watch"] is True and doc["state"] == "active" and doc["blocked_ports"] == []

    severe = wf.report(IncidentReport(tenant_id=1, kind="spam", summary="每小时 50 万封", severity="severe"),
                       reported_by="alice")
    assert severe["id"] == case["id"]
    assert set(severe["done"]) == {"block_ports", "watch", "suspend_temporarily"}
    doc = policy_tenant(engine)
    assert doc["state"] == "suspended"
    assert doc["blocked_ports"] == ["tcp/25", "tcp/465", "tcp/587"]

    clock.advance(minutes=24 * 60 - 1)
    assert wf.run_due() == []
    clock.advance(minutes=1)
    assert [a["done"] for a in wf.run_due()] == [["resume"]]
    doc = policy_tenant(engine)
    assert doc["state"] == "active" and doc["blocked_ports"] == ["tcp/25", "tcp/465", "tcp/587"]   # until closed

    closed = wf.close(case["id"], operator="alice", reason="relay closed, verified")
    assert set(closed["done"]) == {"unwatch", "unblock"}
    doc = policy_tenant(engine)
    assert doc.get("watch", False) is False and doc["blocked_ports"] == []
    assert_chain_intact(engine)


@pytest.mark.parametrize("kind", ["network_attack", "illegal_content"])
def test_attacks_and_illegal_content_block_sources_and_ports_at_once(engine, kind):
    add_tenant(engine)
    wf = workflow(engine)
    case = wf.report(IncidentReport(tenant_id=1, kind=kind, summary="UDP flood from the tenant's origin",
                                    sources=("198.51.100.0/26",), ports=("udp/6000-6010",),
                                    evidence=("evidence/2026-12-01/flood-0001.pcap.sealed",)), reported_by="agent-sh-02")
    assert case["done"] == ["block_sources", "block_ports"] and case["state"] == "warned"
    doc = policy_tenant(engine)
    assert doc["blocked_sources"] == ["198.51.100.0/26"] and doc["blocked_ports"] == ["udp/6000-6010"]
    assert doc["state"] == "active"
    assert wf.show_case(case["id"])["notifications"]
    # the blocks stay when the case closes (lift_blocks_on_close = false): they are removed by an operator
    wf.close(case["id"], operator="alice", reason="origin cleaned")
    assert policy_tenant(engine)["blocked_sources"] == ["198.51.100.0/26"]
    assert_chain_intact(engine)


def test_false_filing_suspended_until_corrected(engine):
    add_tenant(engine)
    wf = workflow(engine)
    case = wf.report(IncidentReport(tenant_id=1, kind="false_filing", summary="备案号与主体不符"), reported_by="alice")
    assert tenant(engine)["state"] == "suspended"
    out = wf.remediate(case["id"], operator="alice", reason="备案已更正 filing corrected")
    assert out["done"] == ["resume"] and tenant(engine)["state"] == "active"
    assert_chain_intact(engine)


def test_a_suspension_another_case_holds_is_not_lifted(engine):
    add_tenant(engine)
    wf = workflow(engine)
    filing = wf.report(IncidentReport(tenant_id=1, kind="false_filing", summary="备案不实"), reported_by="alice")
    bug = wf.report(virus(severity="severe"), reported_by="alice")
    wf.remediate(bug["id"], operator="alice", reason="virus gone")
    assert tenant(engine)["state"] == "suspended"      # the filing case still holds it
    wf.remediate(filing["id"], operator="alice", reason="filing corrected")
    assert tenant(engine)["state"] == "active"
    assert_chain_intact(engine)


def test_repeat_offender_escalated_and_terminated_only_on_an_admins_confirmation(engine):
    add_tenant(engine)
    clock = ManualClock()
    rules = dataclasses.replace(DEFAULT_RULES, strikes=Strikes(window_days=30, limit=2),
                                notify=dataclasses.replace(DEFAULT_RULES.notify, operator_email="noc@cdn.example.net"))
    wf = workflow(engine, rules=rules, clock=clock)
    for n in range(2):
        case = wf.report(virus(), reported_by="alice")
        assert case["state"] == "warned" and case["strikes_before"] == n
        wf.remediate(case["id"], operator="alice", reason="fixed")
        wf.close(case["id"], operator="alice", reason="verified")
        clock.advance(minutes=60)
    third = wf.report(virus(), reported_by="alice")
    assert third["state"] == "escalated" and third["termination_proposed"] and third["strikes_before"] == 2
    assert actions(engine, third["id"])[-1] == "case.escalated"
    escalations = [n for n in wf.show_case(third["id"])["notifications"] if "案件升级" in n["subject"]]
    assert {n["recipient"] for n in escalations} == {"security@example.cn", "http://127.0.0.1:9/unused",
                                                     "noc@cdn.example.net"}
    # the ladder keeps running on the escalated case, and never terminates by itself
    for _ in range(5):
        clock.advance(minutes=24 * 60)
        wf.tick()
    assert tenant(engine)["state"] == "suspended"      # the grace period of the third case ran out
    with pytest.raises(Conflict):
        wf.remediate(third["id"], operator="alice", reason="please")
    with pytest.raises(Forbidden):
        wf.terminate(1, operator="alice", role=Role.OPERATOR, confirm=True, reason="clause 八")
    with pytest.raises(Invalid):
        wf.terminate(1, operator="root", role=Role.ADMIN, confirm=False, reason="clause 八")
    assert tenant(engine)["state"] == "suspended"

    out = wf.terminate(1, operator="root", role=Role.ADMIN, confirm=True, reason="屡整屡犯 clause 八")
    assert out["proposed_by_cases"] == [third["id"]] and out["closed_cases"] == [third["id"]]
    assert tenant(engine)["state"] == "terminated"
    assert policy_tenant(engine) is None    # terminated: removed from every agent's policy, its records kept
    assert wf.show_case(third["id"])["resolution"] == "terminated"
    with pytest.raises(Conflict):
        wf.report(virus(), reported_by="alice")
    assert_chain_intact(engine)


def test_dismissed_cases_are_not_strikes(engine):
    add_tenant(engine)
    rules = dataclasses.replace(DEFAULT_RULES, strikes=Strikes(window_days=30, limit=1))
    wf = workflow(engine, rules=rules)
    case = wf.report(virus(), reported_by="alice")
    wf.close(case["id"], operator="alice", reason="false alarm", resolution="dismissed")
    assert wf.report(virus(), reported_by="alice")["state"] == "warned"


def test_bad_rule_file_is_refused_and_the_old_rules_stay(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[kinds.virus]\ngrace_minutes = 45\n", encoding="utf-8")
    book = RuleBook.from_file(good)
    assert book.current.kind("virus").grace_minutes == 45
    bad = tmp_path / "bad.toml"
    bad.write_text('[kinds.virus]\ngrace_minutes = -1\nactions = ["notify"]\n[kinds.spam]\n'
                   'severe_actions = ["suspend_temporarily", "terminate"]\n[strikes]\nlimt = 3\n', encoding="utf-8")
    with pytest.raises(RulesError) as err:
        book.reload(bad)
    text = str(err.value)
    for expected in ("kinds.virus.grace_minutes: -1", "unknown action 'terminate'", "strikes.limt: unknown key"):
        assert expected in text
    assert book.current.kind("virus").grace_minutes == 45 and book.path == str(good)
    (tmp_path / "broken.toml").write_text("[kinds.virus\n")
    with pytest.raises(RulesError, match="not valid TOML"):
        book.reload(tmp_path / "broken.toml")
    assert book.current.kind("virus").grace_minutes == 45


def test_the_shipped_rule_file_is_the_agreements_defaults():
    from pathlib import Path
    from controller.workflow import load_rules
    rules = load_rules(Path(__file__).resolve().parents[2] / "configs" / "enforcement.toml")
    assert rules.kinds == DEFAULT_RULES.kinds and rules.strikes == DEFAULT_RULES.strikes
    assert rules.kind("virus").grace_minutes == 30
    assert rules.kind("spam").blocked_ports == ("tcp/25", "tcp/465", "tcp/587")


def test_a_relapse_on_a_remediating_case_warns_again_with_a_new_grace_period(engine):
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    case = wf.report(virus(), reported_by="alice")
    clock.advance(minutes=5)
    wf.remediate(case["id"], operator="alice", reason="host cleaned")
    clock.advance(minutes=20)
    again = wf.report(virus(), reported_by="agent-bj-01")
    assert again["id"] == case["id"] and again["state"] == "warned"
    assert (again["next_deadline"]["due_at"] - clock.now()).total_seconds() == 30 * 60
    clock.advance(minutes=30)
    assert [a["done"] for a in wf.run_due()] == [["suspend"]]
    assert actions(engine, case["id"]).count("case.warned") == 2
    assert_chain_intact(engine)


def test_the_watch_flag_is_part_of_the_policy_document():
    from agent.policy import PolicyError, policy_from_document, policy_to_document
    doc = {"tenants": [{"id": 1, "name": "shop", "vips": ["203.0.113.1"], "watch": True}]}
    policy = policy_from_document(doc)
    assert policy.tenant(1).watch and policy_to_document(policy)["tenants"][0]["watch"] is True
    plain = policy_to_document(policy_from_document({"tenants": [{"id": 1, "name": "shop"}]}))
    assert "watch" not in plain["tenants"][0]          # documents without a watch list read and write as before
    with pytest.raises(PolicyError, match="watch 'yes' must be true or false"):
        policy_from_document({"tenants": [{"id": 1, "name": "shop", "watch": "yes"}]})


def test_the_demo_climbs_the_ladder_and_leaves_the_chain_intact(tmp_path):
    from controller.workflow.demo import run_demo
    lines = []
    result = run_demo(out=lines.append, store_dir=str(tmp_path))
    text = "\n".join(lines)
    assert result["audit"]["intact"] and result["case"]["resolution"] == "terminated"
    for expected in ("not remediated in 30 minutes -> suspend", "case 3 escalated", "never terminated by the controller",
                     "needs the admin role", "admin root: terminate --confirm"):
        assert expected in text


def _suspend_by_hand(engine, who="bob", reason="合同到期未续费 contract lapsed"):
    from controller import registry
    from controller.models import TenantPatch
    from controller.store import writing
    with writing(engine) as (conn, head):
        version = registry.get_tenant(conn, 1)["version"]
        registry.update_tenant(conn, head, operator=who, role=Role.OPERATOR, tenant_id=1,
                               patch=TenantPatch(version=version, state="suspended", reason=reason))


def test_a_cases_resolution_leaves_an_operators_suspension_in_force(engine):
    # an operator suspended the tenant by hand; a virus case's 30-minute rule then "suspends" it too
    # (already suspended: the rule changes nothing); remediating and closing that case lift only what
    # its rule imposed, which is nothing: the operator's suspension stays until the operator lifts it
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    _suspend_by_hand(engine)
    case = wf.report(virus(), reported_by="alice")
    clock.advance(minutes=30)
    assert [a["done"] for a in wf.run_due()] == [["suspend"]]
    out = wf.remediate(case["id"], operator="alice", reason="cleaned")
    assert out["done"] == [] and "resume" not in out["done"]
    assert out["kept"] and "bob suspended it" in out["kept"][0] and "edgewarden tenant resume 1" in out["kept"][0]
    assert tenant(engine)["state"] == "suspended" and policy_tenant(engine)["state"] == "suspended"
    assert actions(engine, case["id"])[-2:] == ["case.remediating", "case.suspension_kept"]
    wf.close(case["id"], operator="alice", reason="verified clean")
    assert tenant(engine)["state"] == "suspended" and policy_tenant(engine)["state"] == "suspended"

    # an unrelated spam case, severe: its temporary suspension ends and it closes; still bob's
    wf.report(IncidentReport(tenant_id=1, kind="spam", summary="open relay", severity="severe"), reported_by="alice")
    clock.advance(minutes=24 * 60)
    wf.run_due()
    assert tenant(engine)["state"] == "suspended"
    assert_chain_intact(engine)


def test_a_suspension_an_operator_makes_after_the_cases_own_is_not_the_cases_to_lift(engine):
    from controller import registry
    from controller.models import TenantPatch
    from controller.store import writing
    add_tenant(engine)
    clock = ManualClock()
    wf = workflow(engine, clock=clock)
    case = wf.report(virus(severity="severe"), reported_by="alice")      # suspends at once, by the rule
    assert tenant(engine)["state"] == "suspended"
    with writing(engine) as (conn, head):                                # bob resumes, then suspends for his own reason
        for state in ("active", "suspended"):
            version = registry.get_tenant(conn, 1)["version"]
            registry.update_tenant(conn, head, operator="bob", role=Role.OPERATOR, tenant_id=1,
                                   patch=TenantPatch(version=version, state=state, reason="abuse desk hold"))
    out = wf.close(case["id"], operator="alice", reason="verified clean")
    assert "resume" not in out["done"] and tenant(engine)["state"] == "suspended"

    # while the rule's own suspension is lifted by the case, as before
    other = add_tenant(engine, 2)
    case = wf.report(virus(tenant_id=other, severity="severe"), reported_by="alice")
    assert tenant(engine, other)["state"] == "suspended"
    out = wf.remediate(case["id"], operator="alice", reason="cleaned")
    assert out["done"] == ["resume"] and out["kept"] == [] and tenant(engine, other)["state"] == "active"
    assert_chain_intact(engine)
