"""The workflow's HTTP routes: incidents, cases and their steps, termination
(admin, confirmed), the notification outbox and the rules in force. The
controller's app includes them with its own authentication dependency:
`app.include_router(workflow_router(workflow, caller))`."""

# no `from __future__ import annotations`: FastAPI resolves the annotations at definition time
import datetime as dt
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from controller.store import reading
from controller.tokens import Role
from controller.workflow import notify
from controller.workflow.ladder import IncidentReport, Workflow
from controller.workflow.rules import RulesError, describe
from controller.workflow.vocabulary import KINDS, STATES
from controller.errors import Invalid, Problem

Kind = Literal[tuple(KINDS)]   # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class IncidentIn(Strict):
    tenant_id: int = Field(ge=1, le=2**32 - 1)
    kind: Kind = Field(description="illegal_content (二, 七.1), network_attack (三.1, 七.2), virus (三.2, 七.3), "
                                   "spam (三.3, 七.4), false_filing (十)")
    summary: str = Field(min_length=1, max_length=4000, description="what was seen")
    severity: Literal["normal", "severe"] = "normal"
    harm_confirmed: bool = Field(default=False, description="七.3: the harm is confirmed; acts as severe")
    source: Literal["agent", "operator", "complaint"] = "operator"
    evidence: list[str] = Field(default_factory=list, max_length=100, description="references to sealed evidence")
    sources: list[str] = Field(default_factory=list, max_length=10000, description="source prefixes involved")
    ports: list[str] = Field(default_factory=list, max_length=100, description="port rules involved, 'tcp/25'")
    observed_at: dt.datetime | None = None


class Step(Strict):
    reason: str = Field(min_length=1, max_length=2000)


class Close(Step):
    resolution: Literal["remediated", "dismissed"] = "remediated"


class Terminate(Step):
    confirm: bool = Field(description="must be true: termination ends the tenant's CDN access (clause 八)")


class RulesReload(Strict):
    path: str | None = Field(default=None, description="a rule file; default the one loaded at start")


def _naive(when: dt.datetime | None) -> dt.datetime | None:
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def workflow_router(workflow: Workflow, caller: Callable[..., Any]) -> APIRouter:
    """`caller` is the controller's dependency returning the authenticated Caller (name, role, need())."""
    router = APIRouter(tags=["workflow"])
    Who = Annotated[Any, Depends(caller)]

    @router.post("/incidents", status_code=201)
    def report_incident(body: IncidentIn, who: Who) -> dict:
        who.need(Role.OPERATOR)
        report = IncidentReport(tenant_id=body.tenant_id, kind=body.kind, summary=body.summary,
                                severity=body.severity, harm_confirmed=body.harm_confirmed, source=body.source,
                                evidence=tuple(body.evidence), sources=tuple(body.sources), ports=tuple(body.ports),
                                observed_at=_naive(body.observed_at))
        return workflow.report(report, reported_by=who.name)

    @router.get("/incidents")
    def list_incidents(who: Who, tenant_id: int | None = None,
                       limit: Annotated[int, Query(ge=1, le=10000)] = 500) -> list[dict]:
        return workflow.list_incidents(tenant_id=tenant_id, limit=limit)

    @router.get("/cases")
    def list_cases(who: Who, tenant_id: int | None = None, state: Literal[tuple(STATES)] | None = None,  # type: ignore[valid-type]
                   open_only: bool = False, limit: Annotated[int, Query(ge=1, le=10000)] = 500) -> list[dict]:
        return workflow.list_cases(tenant_id=tenant_id, state=state, open_only=open_only, limit=limit)

    @router.get("/cases/{case_id}")
    def show_case(case_id: int, who: Who) -> dict:
        return workflow.show_case(case_id)

    @router.post("/cases/{case_id}/remediate")
    def remediate(case_id: int, body: Step, who: Who) -> dict:
        who.need(Role.OPERATOR)
        return workflow.remediate(case_id, operator=who.name, reason=body.reason)

    @router.post("/cases/{case_id}/escalate")
    def escalate(case_id: int, body: Step, who: Who) -> dict:
        who.need(Role.OPERATOR)
        return workflow.escalate(case_id, operator=who.name, reason=body.reason)

    @router.post("/cases/{case_id}/close")
    def close(case_id: int, body: Close, who: Who) -> dict:
        who.need(Role.OPERATOR)
        return workflow.close(case_id, operator=who.name, reason=body.reason, resolution=body.resolution)

    @router.post("/tenants/{tenant_id}/terminate")
    def terminate(tenant_id: int, body: Terminate, who: Who) -> dict:
        return workflow.terminate(tenant_id, operator=who.name, role=who.role, confirm=body.confirm,
                                  reason=body.reason)

    @router.get("/notifications")
    def list_notifications(who: Who, case_id: int | None = None,
                           status: Literal["pending", "sent", "failed"] | None = None,
                           limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict]:
        with reading(workflow.engine) as conn:
            return notify.list_notifications(conn, case_id=case_id, status=status, limit=limit)

    @router.get("/workflow/rules")
    def rules(who: Who) -> dict:
        return describe(workflow.rules)

    @router.post("/workflow/rules/reload")
    def reload_rules(body: RulesReload, who: Who) -> dict:
        who.need(Role.ADMIN)
        try:
            return describe(workflow.rulebook.reload(body.path))
        except RulesError as err:
            raise Invalid([Problem(err.source, p) for p in err.problems],
                          "the rule file was refused; the rules in force are unchanged") from None

    return router
