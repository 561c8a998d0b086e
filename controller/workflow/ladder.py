"""The enforcement ladder: incidents grouped into cases per tenant and kind,
each case moved through open -> warned -> remediating -> resolved (or
escalated) by the rules in force (controller.workflow.rules) or by an
operator, every step one transaction with its audit entries, its policy
revisions (controller.workflow.changes), its deadlines and its outbox rows.

The deadlines are rows, acted on by run_due() whichever process runs it:
the head lock every write takes (controller.store.writing) serialises the
actors, and SKIP LOCKED on PostgreSQL keeps a second process from queueing
behind a row the first is acting on; a deadline's done_at is set in the
transaction that acts on it, so each deadline is acted on exactly once."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from controller import audit, registry, schema as cschema
from controller.errors import Conflict, Forbidden, Invalid, NotFound, Problem
from controller.revisions import SYSTEM_OPERATOR
from controller.store import reading, writing
from controller.tokens import Role
from controller.workflow import changes, notify, schema
from controller.workflow.clock import Clock, SystemClock
from controller.workflow.rules import KindRule, RuleBook, Rules
from controller.workflow.vocabulary import (ESCALATED, KINDS, OPEN, REMEDIATING, RESOLVED, SEVERITIES, TRANSITIONS,
                                            WARNED)

RESOLUTIONS = ("remediated", "dismissed", "terminated")
SOURCES = ("agent", "operator", "complaint")
SUSPENDING = ("suspend", "suspend_temporarily")


def default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class IncidentReport:
    tenant_id: int
    kind: str
    summary: str
    severity: str = "normal"
    harm_confirmed: bool = False
    source: str = "operator"
    evidence: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()        # source prefixes involved (block_sources)
    ports: tuple[str, ...] = ()          # port rules involved, "tcp/25" (block_ports)
    observed_at: dt.datetime | None = None

    def problems(self) -> list[Problem]:
        out = []
        if self.kind not in KINDS:
            out.append(Problem("kind", f"{self.kind!r} is not one of: {', '.join(KINDS)}"))
        if self.severity not in SEVERITIES:
            out.append(Problem("severity", f"{self.severity!r} is not one of: {', '.join(SEVERITIES)}"))
        if self.source not in SOURCES:
            out.append(Problem("source", f"{self.source!r} is not one of: {', '.join(SOURCES)}"))
        if not self.summary.strip():
            out.append(Problem("summary", "say what was seen"))
        return out


@dataclass
class _Step:
    """What one ladder step did, for the audit entry and the notification."""

    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # what the step left in force, and why
    revisions: list[int] = field(default_factory=list)
    deadline: dt.datetime | None = None

    def revised(self, revision: int | None) -> None:
        if revision is not None:
            self.revisions.append(revision)


def _loads(text: str):
    return json.loads(text) if text else None


def case_record(conn: Connection, row, rules: Rules | None = None) -> dict:
    d = schema.deadlines.c
    pending = conn.execute(select(d.purpose, d.due_at).where(d.case_id == row["id"], d.done_at.is_(None),
                                                            d.cancelled_at.is_(None)).order_by(d.due_at)).first()
    incidents = conn.execute(select(func.count()).select_from(schema.incidents)
                             .where(schema.incidents.c.case_id == row["id"])).scalar_one()
    return {"id": row["id"], "tenant_id": row["tenant_id"], "kind": row["kind"], "clause": KINDS[row["kind"]],
            "state": row["state"], "severe": bool(row["severe"]), "strikes_before": row["strikes_before"],
            "termination_proposed": bool(row["termination_proposed"]), "resolution": row["resolution"],
            "effects": _loads(row["effects"]), "incidents": incidents, "opened_at": row["opened_at"],
            "warned_at": row["warned_at"], "updated_at": row["updated_at"], "resolved_at": row["resolved_at"],
            "next_deadline": {"purpose": pending[0], "due_at": pending[1]} if pending else None}


class Workflow:
    """The workflow over one store: reports, operator steps, the scheduler's tick."""

    def __init__(self, engine: Engine, rulebook: RuleBook | None = None, clock: Clock | None = None,
                 worker: str | None = None):
        self.engine = engine
        self.rulebook = rulebook or RuleBook()
        self.clock = clock or SystemClock()
        self.worker = worker or default_worker()

    @property
    def rules(self) -> Rules:
        return self.rulebook.current

    # --- reading ------------------------------------------------------------

    def _case_row(self, conn: Connection, case_id: int):
        row = conn.execute(select(schema.cases).where(schema.cases.c.id == case_id)).mappings().one_or_none()
        if row is None:
            raise NotFound(f"case {case_id} does not exist (list them with: edgewarden case list)")
        return row

    def list_cases(self, *, tenant_id: int | None = None, state: str | None = None, open_only: bool = False,
                   limit: int = 500) -> list[dict]:
        c = schema.cases.c
        query = select(schema.cases)
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        if state is not None:
            query = query.where(c.state == state)
        if open_only:
            query = query.where(c.state != RESOLVED)
        with reading(self.engine) as conn:
            return [case_record(conn, r) for r in conn.execute(query.order_by(c.id).limit(limit)).mappings()]

    def show_case(self, case_id: int) -> dict:
        with reading(self.engine) as conn:
            row = self._case_row(conn, case_id)
            out = case_record(conn, row)
            i, d, a = schema.incidents.c, schema.deadlines.c, cschema.audit.c
            out["incident_list"] = [self._incident_out(r) for r in conn.execute(
                select(schema.incidents).where(i.case_id == case_id).order_by(i.id)).mappings()]
            out["deadlines"] = [dict(r) for r in conn.execute(
                select(d.id, d.purpose, d.due_at, d.actions, d.rule, d.done_at, d.done_by, d.cancelled_at,
                       d.cancel_reason).where(d.case_id == case_id).order_by(d.id)).mappings()]
            for dl in out["deadlines"]:
                dl["actions"] = json.loads(dl["actions"])
            out["notifications"] = notify.list_notifications(conn, case_id=case_id)
            out["trail"] = [audit.entry_as_dict(r) for r in conn.execute(
                select(cschema.audit).where(a.target == f"case {case_id}").order_by(a.seq)).mappings()]
            return out

    @staticmethod
    def _incident_out(row) -> dict:
        out = dict(row)
        for key in ("evidence", "sources", "ports"):
            out[key] = json.loads(out[key])
        out["harm_confirmed"] = bool(out["harm_confirmed"])
        return out

    def list_incidents(self, *, tenant_id: int | None = None, limit: int = 500) -> list[dict]:
        i = schema.incidents.c
        query = select(schema.incidents)
        if tenant_id is not None:
            query = query.where(i.tenant_id == tenant_id)
        with reading(self.engine) as conn:
            return [self._incident_out(r) for r in conn.execute(query.order_by(i.id).limit(limit)).mappings()]

    # --- the state machine ----------------------------------------------------

    def _move(self, conn: Connection, head: dict, case: dict, to: str, *, operator: str, reason: str, rule: str | None,
              **values) -> dict:
        """One audited transition; `case` (a dict of the row) is updated in place."""
        if to != case["state"] and to not in TRANSITIONS[case["state"]]:
            raise Conflict(f"case {case['id']} is {case['state']}; it cannot become {to} "
                           f"(from {case['state']} it can become: {', '.join(sorted(TRANSITIONS[case['state']])) or 'nothing, it is closed'})")
        now = self.clock.now()
        before = case["state"]
        values.update(state=to, updated_at=now, version=case["version"] + 1)
        conn.execute(update(schema.cases).where(schema.cases.c.id == case["id"]).values(**values))
        case.update(values)
        audit.record(conn, head, operator=operator, action=f"case.{to}" if to != before else "case.update",
                     tenant_id=case["tenant_id"], target=f"case {case['id']}", reason=reason,
                     before={"state": before}, after={"state": to, "rule": rule,
                                                      **{k: v for k, v in values.items()
                                                         if k not in ("updated_at", "version", "state")}})
        return case

    def _effects(self, case: dict) -> dict:
        return json.loads(case["effects"])

    def _save_effects(self, conn: Connection, case: dict, effects: dict) -> None:
        case["effects"] = json.dumps(effects, sort_keys=True)
        conn.execute(update(schema.cases).where(schema.cases.c.id == case["id"]).values(effects=case["effects"]))

    def _holds_suspension_elsewhere(self, conn: Connection, case: dict) -> bool:
        c = schema.cases.c
        for (effects,) in conn.execute(select(c.effects).where(c.tenant_id == case["tenant_id"], c.id != case["id"],
                                                               c.state != RESOLVED)):
            if json.loads(effects).get("suspension"):
                return True
        return False

    def _holds_watch_elsewhere(self, conn: Connection, case: dict) -> bool:
        c = schema.cases.c
        for (effects,) in conn.execute(select(c.effects).where(c.tenant_id == case["tenant_id"], c.id != case["id"],
                                                               c.state != RESOLVED)):
            if json.loads(effects).get("watch"):
                return True
        return False

    def _deadline(self, conn: Connection, case: dict, purpose: str, due: dt.datetime, actions: list[str],
                  rule: str) -> None:
        conn.execute(insert(schema.deadlines).values(
            case_id=case["id"], tenant_id=case["tenant_id"], purpose=purpose, due_at=due, actions=json.dumps(actions),
            rule=rule, created_at=self.clock.now()))

    def _cancel_deadlines(self, conn: Connection, case: dict, reason: str, purpose: str | None = None) -> int:
        d = schema.deadlines.c
        query = update(schema.deadlines).where(d.case_id == case["id"], d.done_at.is_(None), d.cancelled_at.is_(None))
        if purpose:
            query = query.where(d.purpose == purpose)
        return conn.execute(query.values(cancelled_at=self.clock.now(), cancel_reason=reason)).rowcount

    def _lift(self, conn: Connection, head: dict, case: dict, step: _Step, *, operator: str, reason: str,
              blocks: bool, watch: bool) -> None:
        """Undo what the case did to the tenant, unless another open case still needs it."""
        effects = self._effects(case)
        if effects.get("suspension"):
            effects["suspension"] = False
            current = changes.suspension_by(conn, case["tenant_id"])
            if current is not None and not self._holds_suspension_elsewhere(conn, case):
                if current["operator"] == SYSTEM_OPERATOR:
                    step.revised(changes.set_state(conn, head, tenant_id=case["tenant_id"], state="active",
                                                   operator=operator, reason=reason))
                    step.done.append("resume")
                else:
                    # the suspension in force is an operator's, not this case's rule's (it was
                    # suspended before the rule acted, or again since): only that operator's
                    # decision lifts it
                    kept = (f"tenant {case['tenant_id']} stays suspended: {current['operator']} suspended it "
                            f"({current['reason']}), not case {case['id']}'s rule; lift that with: "
                            f"edgewarden tenant resume {case['tenant_id']} --reason ...")
                    step.kept.append(kept)
                    audit.record(conn, head, operator=operator, action="case.suspension_kept",
                                 tenant_id=case["tenant_id"], target=f"case {case['id']}", reason=kept,
                                 after={"suspended_by": current["operator"], "suspended_at": current["at"]})
        if watch and effects.get("watch"):
            effects["watch"] = False
            if not self._holds_watch_elsewhere(conn, case):
                step.revised(changes.set_watch(conn, head, tenant_id=case["tenant_id"], watch=False,
                                               operator=operator, reason=reason))
                step.done.append("unwatch")
        if blocks and effects.get("batches"):
            lifted = False
            for batch_id in effects["batches"]:
                revision = changes.unblock(conn, head, batch_id=batch_id, operator=operator, reason=reason)
                lifted |= revision is not None
                step.revised(revision)
            effects["batches"] = []
            if lifted:
                step.done.append("unblock")
        self._save_effects(conn, case, effects)

    def _apply(self, conn: Connection, head: dict, case: dict, actions: list[str], rule: KindRule, rule_ref: str,
               incident: dict | None, step: _Step) -> None:
        """Carry out ladder actions for the case, as the controller, naming the rule."""
        now = self.clock.now()
        tenant_id = case["tenant_id"]
        reason = f"rule {rule_ref} (agreement clause {rule.clause}), case {case['id']}"
        effects = self._effects(case)
        if "block_sources" in actions or "block_ports" in actions:
            sources = list(incident["sources"]) if incident and "block_sources" in actions else []
            ports = []
            if "block_ports" in actions:
                ports = list(dict.fromkeys([*(incident["ports"] if incident else []), *rule.blocked_ports]))
            if sources or ports:
                evidence = ", ".join(incident["evidence"])[:500] if incident and incident["evidence"] else None
                out = changes.block(conn, head, tenant_id=tenant_id, sources=sources, ports=ports,
                                    operator=SYSTEM_OPERATOR, reason=reason, evidence=evidence)
                effects.setdefault("batches", []).append(out["batch_id"])
                step.revised(out["revision"])
                step.done += [a for a in ("block_sources", "block_ports") if a in actions
                              and (sources if a == "block_sources" else ports)]
        if "watch" in actions:
            effects["watch"] = True
            step.revised(changes.set_watch(conn, head, tenant_id=tenant_id, watch=True, operator=SYSTEM_OPERATOR,
                                           reason=reason))
            step.done.append("watch")
        if any(a in actions for a in SUSPENDING):
            effects["suspension"] = True
            step.revised(changes.set_state(conn, head, tenant_id=tenant_id, state="suspended",
                                           operator=SYSTEM_OPERATOR, reason=reason))
            step.done.append("suspend_temporarily" if "suspend_temporarily" in actions else "suspend")
            if "suspend_temporarily" in actions:
                due = now + dt.timedelta(minutes=rule.suspension_minutes)
                self._deadline(conn, case, "suspension_ends", due, ["resume"], f"kinds.{rule.kind}.suspension_minutes")
                step.deadline = due
            # a suspended tenant has nothing left to do within a grace period
            self._cancel_deadlines(conn, case, f"suspended by rule {rule_ref}", purpose="grace_expired")
        if "resume" in actions:
            self._lift(conn, head, case, step, operator=SYSTEM_OPERATOR, reason=reason, blocks=False, watch=False)
            effects = self._effects(case)
        self._save_effects(conn, case, effects)
        if "warn" in actions:
            warned = {"warned_at": now}
            if case["state"] in (OPEN, REMEDIATING):
                self._move(conn, head, case, WARNED, operator=SYSTEM_OPERATOR, reason=reason, rule=rule_ref, **warned)
            else:
                conn.execute(update(schema.cases).where(schema.cases.c.id == case["id"]).values(**warned))
            step.done.insert(0, "warn")
            if rule.grace_minutes is not None:
                due = now + dt.timedelta(minutes=rule.grace_minutes)
                self._deadline(conn, case, "grace_expired", due, list(rule.grace_actions), f"kinds.{rule.kind}.grace_minutes")
                step.deadline = due
        elif "notify" in actions and case["state"] in (OPEN, REMEDIATING):
            self._move(conn, head, case, WARNED, operator=SYSTEM_OPERATOR, reason=reason, rule=rule_ref, warned_at=now)
        if "notify" in actions or "warn" in actions:
            self._notify(conn, case, rule, step, incident_summaries=self._seen(conn, case))

    def _seen(self, conn: Connection, case: dict) -> list[str]:
        i = schema.incidents.c
        out = []
        for summary, observed, severity, evidence in conn.execute(
                select(i.summary, i.observed_at, i.severity, i.evidence).where(i.case_id == case["id"]).order_by(i.id)):
            refs = json.loads(evidence)
            out.append(f"{observed:%Y-%m-%d %H:%M} UTC [{severity}] {summary}"
                       + (f" (证据 evidence: {', '.join(refs)})" if refs else ""))
        return out[-10:]

    def _notify(self, conn: Connection, case: dict, rule: KindRule, step: _Step, *, incident_summaries: list[str],
                event: str | None = None, operator_copy: bool = False) -> None:
        tenant = registry.get_tenant(conn, case["tenant_id"])
        if event is None:
            event = ("suspension" if any(a in step.done for a in SUSPENDING)
                     else "warning" if "warn" in step.done else "action")
        notice = notify.Notice(event=event, tenant_id=tenant["id"], tenant_name=tenant["name"], case_id=case["id"],
                               kind=case["kind"], clause=rule.clause, seen=incident_summaries, done=list(step.done),
                               must=rule.tenant_must, deadline=step.deadline)
        notify.enqueue(conn, notice, self.rules, self.clock.now(), operator_copy=operator_copy)

    def _strikes(self, conn: Connection, tenant_id: int, now: dt.datetime) -> int:
        """The tenant's strikes: its cases opened within the window, dismissed ones not counted."""
        c = schema.cases.c
        since = now - dt.timedelta(days=self.rules.strikes.window_days)
        return conn.execute(select(func.count()).select_from(schema.cases).where(
            c.tenant_id == tenant_id, c.opened_at >= since,
            or_(c.resolution.is_(None), c.resolution != "dismissed"))).scalar_one()

    # --- what operators and agents do -------------------------------------------

    def report(self, report: IncidentReport, *, reported_by: str) -> dict:
        """Record an incident, group it into its case, and climb the ladder as the rules say."""
        problems = report.problems()
        if problems:
            raise Invalid(problems)
        rules = self.rules
        rule = rules.kind(report.kind)
        now = self.clock.now()
        step = _Step()
        with writing(self.engine) as (conn, head):
            tenant = registry.get_tenant(conn, report.tenant_id)
            if tenant["state"] == "terminated":
                raise Conflict(f"tenant {report.tenant_id} is terminated; its records are kept, no new case is opened")
            c = schema.cases.c
            row = conn.execute(select(schema.cases).where(c.tenant_id == report.tenant_id, c.kind == report.kind,
                                                          c.state != RESOLVED).order_by(c.id).limit(1)).mappings().one_or_none()
            new = row is None
            if new:
                strikes = self._strikes(conn, report.tenant_id, now)
                case_id = conn.execute(insert(schema.cases).values(
                    tenant_id=report.tenant_id, kind=report.kind, state=OPEN, severe=False, strikes_before=strikes,
                    termination_proposed=False, effects=json.dumps({}), opened_at=now, updated_at=now, version=1)
                    .returning(c.id)).scalar_one()
                case = dict(conn.execute(select(schema.cases).where(c.id == case_id)).mappings().one())
                audit.record(conn, head, operator=reported_by, action="case.open", tenant_id=report.tenant_id,
                             target=f"case {case_id}", reason=f"first {report.kind} incident for the tenant",
                             after={"state": OPEN, "kind": report.kind, "strikes_before": strikes})
            else:
                case = dict(row)
            incident = {"evidence": list(report.evidence), "sources": list(report.sources), "ports": list(report.ports)}
            incident_id = conn.execute(insert(schema.incidents).values(
                case_id=case["id"], tenant_id=report.tenant_id, kind=report.kind, severity=report.severity,
                harm_confirmed=report.harm_confirmed, source=report.source, reported_by=reported_by,
                summary=report.summary.strip(), evidence=json.dumps(incident["evidence"], ensure_ascii=False),
                sources=json.dumps(incident["sources"]), ports=json.dumps(incident["ports"]),
                observed_at=report.observed_at or now, reported_at=now).returning(schema.incidents.c.id)).scalar_one()
            severe = report.severity == "severe" or report.harm_confirmed
            audit.record(conn, head, operator=reported_by, action="incident.report", tenant_id=report.tenant_id,
                         target=f"case {case['id']}", reason=report.summary.strip(),
                         after={"incident": incident_id, "kind": report.kind, "severity": report.severity,
                                "harm_confirmed": report.harm_confirmed, "source": report.source, **incident})
            if new or case["state"] == REMEDIATING:
                actions, ref = ((list(rule.severe_actions), f"kinds.{rule.kind}.severe_actions") if severe
                                else (list(rule.actions), f"kinds.{rule.kind}.actions"))
            elif severe and not case["severe"]:
                actions, ref = list(rule.severe_actions), f"kinds.{rule.kind}.severe_actions"
            else:
                actions, ref = [], None     # grouped into the case; the ladder already acted on it
            if severe:
                conn.execute(update(schema.cases).where(c.id == case["id"]).values(severe=True))
                case["severe"] = True
            if actions:
                self._apply(conn, head, case, actions, rule, ref, incident, step)
            if new and case["strikes_before"] >= rules.strikes.limit and case["state"] != ESCALATED:
                self._escalate(conn, head, case, rule, operator=SYSTEM_OPERATOR,
                               reason=f"rule strikes.limit = {rules.strikes.limit}: the tenant has "
                                      f"{case['strikes_before']} strikes within {rules.strikes.window_days} days "
                                      f"(clause 八, repeat offence)", rule_ref="strikes.limit")
            out = case_record(conn, case)
        out.update(incident_id=incident_id, new_case=new, done=step.done, revisions=step.revisions)
        return out

    def _escalate(self, conn: Connection, head: dict, case: dict, rule: KindRule, *, operator: str, reason: str,
                  rule_ref: str | None) -> None:
        self._move(conn, head, case, ESCALATED, operator=operator, reason=reason, rule=rule_ref,
                   termination_proposed=True)
        step = _Step(done=["escalate"])
        self._notify(conn, case, rule, step, incident_summaries=self._seen(conn, case), event="escalation",
                     operator_copy=True)

    def remediate(self, case_id: int, *, operator: str, reason: str) -> dict:
        """The tenant has fixed it: pending deadlines are cancelled and the case's suspension lifted."""
        step = _Step()
        with writing(self.engine) as (conn, head):
            case = dict(self._case_row(conn, case_id))
            if case["state"] == ESCALATED:
                raise Conflict(f"case {case_id} is escalated (clause 八): an admin terminates the tenant "
                               f"(edgewarden tenant terminate {case['tenant_id']} --confirm) or closes the case")
            self._move(conn, head, case, REMEDIATING, operator=operator, reason=reason, rule=None)
            self._cancel_deadlines(conn, case, f"remediated: {reason}")
            rule = self.rules.kind(case["kind"])
            self._lift(conn, head, case, step, operator=operator, reason=f"case {case_id} remediated: {reason}",
                       blocks=False, watch=False)
            if step.done:
                self._notify(conn, case, rule, step, incident_summaries=self._seen(conn, case), event="resumed")
            out = case_record(conn, case)
        out.update(done=step.done, kept=step.kept, revisions=step.revisions)
        return out

    def escalate(self, case_id: int, *, operator: str, reason: str) -> dict:
        with writing(self.engine) as (conn, head):
            case = dict(self._case_row(conn, case_id))
            self._escalate(conn, head, case, self.rules.kind(case["kind"]), operator=operator, reason=reason,
                           rule_ref=None)
            return case_record(conn, case)

    def close(self, case_id: int, *, operator: str, reason: str, resolution: str = "remediated") -> dict:
        """Resolve the case: deadlines cancelled, its suspension and watch-list entry lifted (and its
        blocks, where the kind's rule says lift_blocks_on_close)."""
        if resolution not in ("remediated", "dismissed"):
            raise Invalid(Problem("resolution", "remediated or dismissed (terminations close cases themselves)"))
        step = _Step()
        with writing(self.engine) as (conn, head):
            case = dict(self._case_row(conn, case_id))
            rule = self.rules.kind(case["kind"])
            self._cancel_deadlines(conn, case, f"case closed: {reason}")
            self._move(conn, head, case, RESOLVED, operator=operator, reason=reason, rule=None,
                       resolution=resolution, resolved_at=self.clock.now())
            self._lift(conn, head, case, step, operator=operator, reason=f"case {case_id} closed: {reason}",
                       blocks=rule.lift_blocks_on_close or resolution == "dismissed", watch=True)
            if step.done:
                self._notify(conn, case, rule, step, incident_summaries=self._seen(conn, case), event="resumed")
            out = case_record(conn, case)
        out.update(done=step.done, kept=step.kept, revisions=step.revisions)
        return out

    def terminate(self, tenant_id: int, *, operator: str, role: Role, confirm: bool, reason: str) -> dict:
        """Terminate the tenant's access (clause 八): only an admin, only confirmed; the
        controller never calls this on its own. Its records are kept; its open cases close."""
        if not role.allows(Role.ADMIN):
            raise Forbidden(f"terminating tenant {tenant_id} needs the admin role (clause 八 termination is an "
                            "admin's decision)")
        if not confirm:
            raise Invalid(Problem("confirm", f"terminating tenant {tenant_id} ends its CDN access; "
                                             "confirm it (--confirm, or confirm: true)"))
        with writing(self.engine) as (conn, head):
            tenant = registry.get_tenant(conn, tenant_id)
            if tenant["state"] == "terminated":
                raise Conflict(f"tenant {tenant_id} is terminated already")
            c = schema.cases.c
            open_cases = [dict(r) for r in conn.execute(select(schema.cases).where(
                c.tenant_id == tenant_id, c.state != RESOLVED).order_by(c.id)).mappings()]
            proposed = [k["id"] for k in open_cases if k["termination_proposed"]]
            revision = changes.set_state(conn, head, tenant_id=tenant_id, state="terminated", operator=operator,
                                         reason=reason, role=role)
            audit.record(conn, head, operator=operator, action="tenant.terminate", tenant_id=tenant_id,
                         target=f"tenant {tenant_id}", reason=reason,
                         after={"confirmed": True, "proposed_by_cases": proposed,
                                "open_cases": [k["id"] for k in open_cases], "revision": revision})
            for case in open_cases:
                self._cancel_deadlines(conn, case, f"tenant terminated: {reason}")
                self._move(conn, head, case, RESOLVED, operator=operator, reason=f"tenant terminated: {reason}",
                           rule=None, resolution="terminated", resolved_at=self.clock.now())
                step = _Step(done=["terminate"])
                self._notify(conn, case, self.rules.kind(case["kind"]), step,
                             incident_summaries=self._seen(conn, case), event="termination", operator_copy=True)
            return {"tenant_id": tenant_id, "state": "terminated", "revision": revision,
                    "closed_cases": [k["id"] for k in open_cases], "proposed_by_cases": proposed}

    # --- the scheduler ------------------------------------------------------------

    def run_due(self, limit: int = 1000) -> list[dict]:
        """Act on every deadline that is due by the clock, one transaction each."""
        acted = []
        d = schema.deadlines.c
        for _ in range(limit):
            now = self.clock.now()
            with writing(self.engine) as (conn, head):
                query = (select(schema.deadlines).where(d.done_at.is_(None), d.cancelled_at.is_(None), d.due_at <= now)
                         .order_by(d.due_at, d.id).limit(1))
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).mappings().one_or_none()
                if row is None:
                    break
                case = dict(self._case_row(conn, row["case_id"]))
                actions = json.loads(row["actions"])
                step = _Step()
                if case["state"] == RESOLVED:
                    conn.execute(update(schema.deadlines).where(d.id == row["id"]).values(
                        cancelled_at=now, cancel_reason="the case was resolved first"))
                    continue
                rule = self.rules.kind(case["kind"])
                late = (now - row["due_at"]).total_seconds()
                self._apply(conn, head, case, actions, rule, f"{row['rule']} (due {row['due_at']:%H:%M:%S}, "
                            f"acted {late:.0f} s late by {self.worker})", None, step)
                if "resume" in actions and "resume" in step.done:
                    self._notify(conn, case, rule, step, incident_summaries=self._seen(conn, case), event="resumed")
                conn.execute(update(schema.deadlines).where(d.id == row["id"]).values(done_at=now, done_by=self.worker))
                audit.record(conn, head, operator=SYSTEM_OPERATOR, action="deadline.done", tenant_id=case["tenant_id"],
                             target=f"case {case['id']}", reason=f"rule {row['rule']}: {row['purpose']}",
                             after={"deadline": row["id"], "due_at": row["due_at"], "actions": actions,
                                    "done": step.done, "worker": self.worker, "revisions": step.revisions})
                acted.append({"deadline": row["id"], "case_id": case["id"], "purpose": row["purpose"],
                              "done": step.done, "revisions": step.revisions})
        return acted

    def deliver(self) -> dict:
        return notify.deliver_due(self.engine, self.rules, self.clock)

    def tick(self) -> dict:
        """One scheduler pass: deadlines first (enforcement never waits on delivery), then the outbox."""
        return {"deadlines": self.run_due(), "notifications": self.deliver()}

