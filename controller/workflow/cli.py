"""The workflow's commands in the `edgewarden` CLI, over the controller's API:

  edgewarden incident report ...            an operator's finding or a complaint
  edgewarden case list|show|remediate|escalate|close
  edgewarden tenant terminate ID --confirm  (admin; clause 八)
  edgewarden rules show | rules check FILE  the enforcement rules in force; check a rule file
"""

from __future__ import annotations

import json
import sys

from controller.cli import _api, _cmd, _emit, _short_time, print_table


def _case_table(cases):
    print_table(["CASE", "TENANT", "KIND", "CLAUSE", "STATE", "SEVERE", "STRIKES", "INCIDENTS", "NEXT DEADLINE", "OPENED"],
                [[c["id"], c["tenant_id"], c["kind"], c["clause"], c["state"] + ("!" if c["termination_proposed"] else ""),
                  "yes" if c["severe"] else "no", c["strikes_before"], c["incidents"],
                  (f"{c['next_deadline']['purpose']} {_short_time(c['next_deadline']['due_at'])}"
                   if c["next_deadline"] else None), _short_time(c["opened_at"])] for c in cases])


def _case_summary(c) -> None:
    print(f"case {c['id']}: tenant {c['tenant_id']}, {c['kind']} (clause {c['clause']}), {c['state']}"
          + (", termination proposed (admin: edgewarden tenant terminate "
             f"{c['tenant_id']} --confirm)" if c["termination_proposed"] and c["state"] != "resolved" else "")
          + (f", resolved as {c['resolution']}" if c.get("resolution") else ""))
    if c.get("done"):
        print(f"  done: {', '.join(c['done'])}; policy revisions: {', '.join(map(str, c.get('revisions') or [])) or 'none'}")
    for kept in c.get("kept") or []:
        print(f"  kept: {kept}")
    if c.get("next_deadline"):
        print(f"  next deadline: {c['next_deadline']['purpose']} at {_short_time(c['next_deadline']['due_at'])} UTC")


def _case_details(c) -> None:
    _case_summary(c)
    print("incidents:")
    print_table(["  ID", "OBSERVED", "SEVERITY", "SOURCE", "BY", "SUMMARY", "EVIDENCE"],
                [[f"  {i['id']}", _short_time(i["observed_at"]), i["severity"] + (" (confirmed)" if i["harm_confirmed"] else ""),
                  i["source"], i["reported_by"], i["summary"], ", ".join(i["evidence"]) or None] for i in c["incident_list"]])
    if c["deadlines"]:
        print("deadlines:")
        print_table(["  ID", "PURPOSE", "DUE", "ACTIONS", "DONE", "BY", "CANCELLED"],
                    [[f"  {d['id']}", d["purpose"], _short_time(d["due_at"]), ",".join(d["actions"]),
                      _short_time(d["done_at"]), d["done_by"], d["cancel_reason"]] for d in c["deadlines"]])
    if c["notifications"]:
        print("notifications:")
        print_table(["  ID", "CHANNEL", "TO", "STATUS", "ATTEMPTS", "LAST ERROR"],
                    [[f"  {n['id']}", n["channel"], n["recipient"], n["status"], n["attempts"], n["last_error"]]
                     for n in c["notifications"]])
    print("trail:")
    print_table(["  SEQ", "AT", "BY", "ACTION", "REASON"],
                [[f"  {a['seq']}", _short_time(a["at"]), a["operator"], a["action"], a["reason"]] for a in c["trail"]])


def cmd_case_list(args) -> int:
    params = {"open_only": args.open}
    if args.tenant is not None:
        params["tenant_id"] = args.tenant
    if args.state:
        params["state"] = args.state
    return _emit(args, _api(args).json("GET", "/cases", params=params), _case_table)


def cmd_case_show(args) -> int:
    return _emit(args, _api(args).json("GET", f"/cases/{args.id}"), _case_details)


def cmd_case_step(args) -> int:
    body = {"reason": args.reason}
    if args.step == "close":
        body["resolution"] = "dismissed" if args.dismiss else "remediated"
    return _emit(args, _api(args).json("POST", f"/cases/{args.id}/{args.step}", json=body), _case_summary)


def cmd_incident_report(args) -> int:
    body = {"tenant_id": args.tenant, "kind": args.kind, "summary": args.summary, "severity": args.severity,
            "harm_confirmed": args.harm_confirmed, "source": args.source, "evidence": args.evidence or [],
            "sources": args.source_prefix or [], "ports": args.port or []}
    if args.observed_at:
        body["observed_at"] = args.observed_at
    out = _api(args).json("POST", "/incidents", json=body)
    return _emit(args, out, lambda o: (print(f"incident {o['incident_id']} recorded in "
                                             f"{'new ' if o['new_case'] else ''}case {o['id']}"), _case_summary(o)))


def cmd_tenant_terminate(args) -> int:
    if not args.confirm:
        print(f"edgewarden: terminating tenant {args.id} ends its CDN access (clause 八); "
              "run again with --confirm (admin token)", file=sys.stderr)
        return 2
    out = _api(args).json("POST", f"/tenants/{args.id}/terminate", json={"confirm": True, "reason": args.reason})
    return _emit(args, out, lambda o: print(f"tenant {o['tenant_id']} terminated; policy revision {o['revision']}; "
                                            f"cases closed: {', '.join(map(str, o['closed_cases'])) or 'none'}"))


def cmd_rules_show(args) -> int:
    return _emit(args, _api(args).json("GET", "/workflow/rules"))


def cmd_rules_check(args) -> int:
    from controller.workflow.rules import RulesError, describe, load_rules
    try:
        rules = load_rules(args.file)
    except RulesError as err:
        print(f"edgewarden: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(describe(rules), indent=2, ensure_ascii=False))
    else:
        print(f"{args.file}: rules ok ({len(rules.kinds)} kinds, strikes {rules.strikes.limit} "
              f"in {rules.strikes.window_days} days)")
    return 0


def add_commands(sub, tenant_sub) -> None:
    """`sub`: the edgewarden subparsers; `tenant_sub`: the `tenant` command's subparsers."""
    from controller.workflow.vocabulary import KINDS, STATES

    p = _cmd(tenant_sub, "terminate", cmd_tenant_terminate,
             "terminate a tenant's CDN access (admin; clause 八): it leaves every agent's policy, its records stay")
    p.add_argument("id", type=int)
    p.add_argument("--confirm", action="store_true", help="required: you mean it")
    p.add_argument("--reason", required=True)

    case = sub.add_parser("case", help="enforcement cases (incidents grouped per tenant and kind)"
                          ).add_subparsers(dest="case_command", required=True, metavar="COMMAND")
    p = _cmd(case, "list", cmd_case_list, "cases, newest last")
    p.add_argument("--tenant", type=int)
    p.add_argument("--state", choices=STATES)
    p.add_argument("--open", action="store_true", help="only cases not resolved")
    p = _cmd(case, "show", cmd_case_show, "a case: incidents, deadlines, notifications, its audit trail")
    p.add_argument("id", type=int)
    for step, text in (("remediate", "the tenant has fixed it: cancels the deadlines, lifts the case's suspension"),
                       ("escalate", "escalate (clause 八): proposes termination to an admin"),
                       ("close", "resolve the case: lifts its suspension and watch-list entry")):
        p = _cmd(case, step, cmd_case_step, text)
        p.add_argument("id", type=int)
        p.add_argument("--reason", required=True)
        if step == "close":
            p.add_argument("--dismiss", action="store_true", help="the report was unfounded: no strike is counted")
        p.set_defaults(step=step)

    incident = sub.add_parser("incident", help="report incidents to the enforcement workflow"
                              ).add_subparsers(dest="incident_command", required=True, metavar="COMMAND")
    p = _cmd(incident, "report", cmd_incident_report, "report an incident (an operator's finding or a complaint)")
    p.add_argument("--tenant", type=int, required=True)
    p.add_argument("--kind", required=True, choices=list(KINDS))
    p.add_argument("--summary", required=True, help="what was seen")
    p.add_argument("--severity", choices=["normal", "severe"], default="normal")
    p.add_argument("--harm-confirmed", action="store_true", help="七.3: the harm is confirmed (acts as severe)")
    p.add_argument("--source", choices=["operator", "complaint", "agent"], default="operator")
    p.add_argument("--evidence", action="append", metavar="REF", help="sealed evidence reference (repeat)")
    p.add_argument("--source-prefix", action="append", metavar="PREFIX", help="a source prefix involved (repeat)")
    p.add_argument("--port", action="append", metavar="RULE", help="a port involved, tcp/25 (repeat)")
    p.add_argument("--observed-at", metavar="ISO_TIME")

    rules = sub.add_parser("rules", help="the enforcement rules").add_subparsers(
        dest="rules_command", required=True, metavar="COMMAND")
    _cmd(rules, "show", cmd_rules_show, "the rules in force on the controller")
    p = _cmd(rules, "check", cmd_rules_check, "check a rule file (configs/enforcement.toml) here, without a controller",
             remote=False)
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
