"""Shared bits of the workflow tests: a registered tenant, a workflow on an
injected clock, the latest policy document, the audit chain check."""

from controller import audit, registry, revisions
from controller.models import TenantCreate
from controller.store import reading, writing
from controller.workflow import ManualClock, RuleBook, Workflow
from controller.workflow.rules import DEFAULT_RULES

from controller_support import tenant_body


def add_tenant(engine, tenant_id=1, name=None, webhook_url="http://127.0.0.1:9/unused", email="security@example.cn"):
    body = tenant_body(name=name or f"北京示例科技有限公司{tenant_id}", vip=f"203.0.113.{tenant_id}",
                       domain=f"www{tenant_id}.example.cn", id=tenant_id)
    body["contacts"][0]["webhook_url"] = webhook_url
    body["contacts"][0]["email"] = email
    with writing(engine) as (conn, head):
        registry.create_tenant(conn, head, operator="alice", data=TenantCreate(**body))
    return tenant_id


def workflow(engine, rules=DEFAULT_RULES, clock=None, worker="test"):
    return Workflow(engine, RuleBook(rules), clock or ManualClock(), worker=worker)


def tenant(engine, tenant_id=1) -> dict:
    with reading(engine) as conn:
        return registry.get_tenant(conn, tenant_id)


def policy_tenant(engine, tenant_id=1) -> dict | None:
    """The tenant as the latest policy revision has it (what agents
    enforce); None when the revision has no such tenant (terminated)."""
    with reading(engine) as conn:
        latest = revisions.list_revisions(conn, 1)[0]["revision"]
        doc = revisions.load_document(conn, latest)
    return next((t for t in doc["tenants"] if t["id"] == tenant_id), None)


def assert_chain_intact(engine) -> int:
    with reading(engine) as conn:
        report = audit.verify(conn)
    assert report.intact, report.problems
    return report.entries


def actions(engine, case_id) -> list[str]:
    from controller.workflow.ladder import Workflow as W
    return [a["action"] for a in W(engine).show_case(case_id)["trail"]]
