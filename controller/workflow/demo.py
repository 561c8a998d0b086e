"""`python -m controller.workflow.demo`: one tenant going up the enforcement
ladder with injected time, in a throwaway SQLite store: a virus warning, the
30-minute rule of 七.3 suspending it, remediation and resumption, then
repeat offences (八) escalating a case that only an admin's confirmation
terminates. Prints each step, the policy state the agents would get, the
warning as the tenant receives it, and the audit chain's verification."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from controller import audit, registry, revisions
from controller.models import TenantCreate
from controller.store import migrate, open_engine, reading, writing
from controller.tokens import Role
from controller.workflow.clock import ManualClock
from controller.workflow.ladder import IncidentReport, Workflow
from controller.workflow.rules import DEFAULT_RULES, RuleBook, Strikes

TENANT = {"id": 7, "name": "北京示例科技有限公司", "icp_filing": "京ICP备12345678号-1", "domains": ["www.example.cn"],
          "vips": ["203.0.113.10"], "reason": "onboarding (demo)",
          "contacts": [{"name": "张三", "email": "security@example.cn", "phone": "+86 10 5555 0100",
                        "webhook_url": "https://hooks.example.cn/edgewarden"}]}


def _policy_state(engine, tenant_id: int) -> str:
    with reading(engine) as conn:
        latest = revisions.list_revisions(conn, 1)[0]["revision"]
        doc = revisions.load_document(conn, latest)
    t = next((t for t in doc["tenants"] if t["id"] == tenant_id), None)
    if t is None:
        return f"revision {latest}: removed from the agents' policy (records kept)"
    return f"revision {latest}: state {t['state']}" + (", watch list" if t.get("watch") else "")


def run_demo(out=print, store_dir: str | None = None) -> dict:
    """Run the scenario; returns the final case and the audit verification (for tests)."""
    directory = Path(store_dir or tempfile.mkdtemp(prefix="edgewarden-workflow-demo-"))
    engine = open_engine(f"sqlite:///{directory / 'controller.db'}")
    migrate(engine)
    with writing(engine) as (conn, head):
        registry.create_tenant(conn, head, operator="alice", data=TenantCreate(**TENANT))
    clock = ManualClock()
    start = clock.now()
    rules = dataclasses.replace(DEFAULT_RULES, strikes=Strikes(window_days=180, limit=2))
    wf = Workflow(engine, RuleBook(rules), clock, worker="demo")
    tid = TENANT["id"]

    def at(text: str) -> None:
        minutes = (clock.now() - start).total_seconds() / 60
        out(f"[t+{minutes:6.1f} min] {text}")

    out("edgewarden enforcement workflow demo (injected clock; store in " + str(directory) + ")")
    out(f"tenant {tid} {TENANT['name']}: {_policy_state(engine, tid)}")
    case = wf.report(IncidentReport(tenant_id=tid, kind="virus", source="agent",
                                    summary="蠕虫向外扫描 445 端口 (worm scanning tcp/445)",
                                    evidence=("evidence/edge-bj-01/2026-12-01T08-00-00.pcap.sealed",)),
                     reported_by="agent:edge-bj-01")
    at(f"incident reported by agent edge-bj-01 -> case {case['id']} {case['state']}, done: {', '.join(case['done'])}; "
       f"deadline {case['next_deadline']['due_at']:%H:%M:%S} UTC (rule kinds.virus.grace_minutes = 30, 七.3)")
    shown = wf.show_case(case["id"])
    out("    the warning, as the tenant's e-mail says it:")
    with reading(engine) as conn:
        from controller.workflow import schema
        from sqlalchemy import select
        body = conn.execute(select(schema.notifications.c.body).where(
            schema.notifications.c.case_id == case["id"]).limit(1)).scalar_one()
    for line in body.splitlines():
        out("    | " + line)
    out(f"    queued notifications: {', '.join(n['channel'] + ' ' + n['recipient'] for n in shown['notifications'])}")
    clock.advance(minutes=29)
    at(f"scheduler pass: {len(wf.run_due())} deadline(s) due; {_policy_state(engine, tid)}")
    clock.advance(minutes=1)
    acted = wf.run_due()
    at(f"scheduler pass: not remediated in 30 minutes -> {', '.join(acted[0]['done'])}; {_policy_state(engine, tid)}")
    clock.advance(minutes=45)
    step = wf.remediate(case["id"], operator="alice", reason="病毒已清除，主机已重装 (hosts reimaged)")
    at(f"operator alice: case {case['id']} remediated -> {', '.join(step['done'])}; {_policy_state(engine, tid)}")
    wf.close(case["id"], operator="alice", reason="verified clean")
    at(f"operator alice: case {case['id']} closed (strike 1 of {rules.strikes.limit} allowed in "
       f"{rules.strikes.window_days} days)")

    clock.advance(minutes=3 * 24 * 60)
    spam = wf.report(IncidentReport(tenant_id=tid, kind="spam", source="complaint", summary="投诉：开放中继转发垃圾邮件"),
                     reported_by="alice")
    at(f"complaint: spam -> case {spam['id']} {spam['state']}, done: {', '.join(spam['done'])}; "
       f"{_policy_state(engine, tid)}")
    wf.remediate(spam["id"], operator="alice", reason="relay closed")
    wf.close(spam["id"], operator="alice", reason="verified")
    at(f"operator alice: case {spam['id']} remediated and closed (strike 2); {_policy_state(engine, tid)}")

    clock.advance(minutes=10 * 24 * 60)
    third = wf.report(IncidentReport(tenant_id=tid, kind="virus", source="agent", summary="同一蠕虫再次出现 (the worm is back)"),
                      reported_by="agent:edge-bj-01")
    at(f"incident again -> case {third['id']} {third['state']} (rule strikes.limit = {rules.strikes.limit}, 八); "
       f"termination proposed: {third['termination_proposed']}")
    for _ in range(3):
        clock.advance(minutes=24 * 60)
        wf.tick()
    with reading(engine) as conn:
        state = registry.get_tenant(conn, tid)["state"]
    at(f"three days of scheduler passes: tenant is {state} (suspended by the 30-minute rule), "
       "never terminated by the controller")
    try:
        wf.terminate(tid, operator="alice", role=Role.OPERATOR, confirm=True, reason="repeat offender")
    except Exception as err:   # the demo shows the refusal an operator would see
        at(f"operator alice tries to terminate: refused: {err}")
    done = wf.terminate(tid, operator="root", role=Role.ADMIN, confirm=True, reason="屡整屡犯 (clause 八), confirmed")
    at(f"admin root: terminate --confirm -> {_policy_state(engine, tid)}; cases closed: {done['closed_cases']}")
    with reading(engine) as conn:
        report = audit.verify(conn)
    out(f"audit chain: {report.entries} entries, {'intact' if report.intact else 'BROKEN'}")
    final = wf.show_case(third["id"])
    engine.dispose()
    return {"case": final, "audit": report.as_dict(), "tenant_state": "terminated"}


def main() -> int:
    result = run_demo()
    return 0 if result["audit"]["intact"] else 1


if __name__ == "__main__":
    sys.exit(main())
