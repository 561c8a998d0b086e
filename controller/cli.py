"""The controller's commands in the `edgewarden` CLI.

`edgewarden controller ...` runs, checks and migrates the controller and
manages tokens directly in its store (the first admin token has to come from
somewhere). Everything else talks to the HTTP API:

  edgewarden tenant ...     the tenant registry
  edgewarden lists ...      the controller's block lists (global or per tenant)
  edgewarden revision ...   policy revisions and their diffs
  edgewarden audit ...      the audit trail
  edgewarden token ...      operator tokens

`edgewarden block ...` stays what it was: the block lists in THIS node's maps.
The controller's lists are `edgewarden lists`, so no verb changes meaning
depending on whether a controller is configured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import unicodedata
from pathlib import Path

from controller.client import Api, ClientError, resolve_target, upload_chunks

_DURATION = re.compile(r"([0-9]+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str | None) -> str | None:
    """'30m', '2h', '7d', '1w' from now, or an ISO 8601 time (UTC if no zone given)."""
    if text is None:
        return None
    m = _DURATION.fullmatch(text.strip())
    if m:
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
        return when.isoformat()
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ClientError(f"--expires {text!r}: give a duration like 30m, 2h, 7d or an ISO time "
                          "like 2026-12-31T23:00:00+08:00", 2) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).isoformat()


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def print_table(headers: list[str], rows: list[list]) -> None:
    rows = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(_width(x) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(v + " " * (w - _width(v)) for v, w in zip(row, widths)).rstrip())


def _short_time(value: str | None) -> str | None:
    return value[:19].replace("T", " ") if value else value


def _emit(args, data, table=None) -> int:
    if args.json or table is None:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        table(data)
    return 0


def _api(args) -> Api:
    return Api(resolve_target(args.controller, args.token, args.client_config))


# --- the controller itself ----------------------------------------------------

def _settings(args):
    from controller.config import load_settings
    return load_settings(args.config, listen=getattr(args, "listen", None), database=args.db)


def cmd_controller(args) -> int:
    settings = _settings(args)
    if args.check:
        from controller.store import check_migrated, open_engine
        print(f"config ok: listen {settings.listen}, database {settings.database}")
        if args.check_store:
            check_migrated(open_engine(settings.database))
            print("store ok: schema is current")
        return 0
    from controller.server import run
    return run(settings)


def cmd_migrate(args) -> int:
    from controller.store import migrate, open_engine
    settings = _settings(args)
    print(f"store {settings.database}: schema at {migrate(open_engine(settings.database))}")
    return 0


def _local_store(args):
    from controller.store import check_migrated, migrate, open_engine
    engine = open_engine(_settings(args).database)
    migrate(engine)
    check_migrated(engine)
    return engine


def cmd_local_token_create(args) -> int:
    from controller.store import writing
    from controller.tokens import Role, create_token
    expires = parse_expiry(args.expires)
    expires_at = dt.datetime.fromisoformat(expires).astimezone(dt.timezone.utc).replace(tzinfo=None) if expires else None
    with writing(_local_store(args)) as (conn, head):
        token, record = create_token(conn, head, name=args.name, role=Role(args.role), created_by="local:" + _whoami(),
                                     reason=args.reason, expires_at=expires_at)
    print(token)
    print(f"token {args.name!r} ({args.role}) created; it is shown only this once, only its hash is kept",
          file=sys.stderr)
    return 0


def cmd_local_token_list(args) -> int:
    from controller.store import reading
    from controller.tokens import list_tokens
    with reading(_local_store(args)) as conn:
        records = list_tokens(conn)
    data = [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()} for r in records]
    return _emit(args, data, _token_table)


def cmd_local_token_revoke(args) -> int:
    from controller.store import writing
    from controller.tokens import revoke_token
    with writing(_local_store(args)) as (conn, head):
        revoke_token(conn, head, name=args.name, operator="local:" + _whoami(), reason=args.reason)
    print(f"token {args.name!r} revoked")
    return 0


def _whoami() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:   # no passwd entry in a container: still record something
        return "unknown"


# --- tenants --------------------------------------------------------------------

def _tenant_table(tenants):
    print_table(["ID", "NAME", "STATE", "ICP FILING", "DOMAINS", "VIPS", "CONTACTS", "VERSION"],
                [[t["id"], t["name"], t["state"], t["icp_filing"], ",".join(t["domains"]) or "-",
                  len(t["vips"]), len(t["contacts"]), t["version"]] for t in tenants])


def _parse_contact(text: str) -> dict:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4):
        raise ClientError(f"--contact {text!r}: give NAME,EMAIL,PHONE[,WEBHOOK_URL]", 2)
    contact = {"name": parts[0], "email": parts[1], "phone": parts[2]}
    if len(parts) == 4 and parts[3]:
        contact["webhook_url"] = parts[3]
    return contact


def _tenant_fields(args) -> dict:
    body = {}
    if args.file:
        import tomllib
        text = Path(args.file).read_text()
        body = tomllib.loads(text) if args.file.endswith(".toml") else json.loads(text)
    for key, value in (("name", args.name), ("icp_filing", args.icp), ("state", args.state)):
        if value is not None:
            body[key] = value
    if args.domain:
        body["domains"] = args.domain
    if args.vip:
        body["vips"] = args.vip
    if args.contact:
        body["contacts"] = [_parse_contact(c) for c in args.contact]
    if args.flood:
        body["flood"] = json.loads(args.flood)
    return body


def cmd_tenant_list(args) -> int:
    return _emit(args, _api(args).json("GET", "/tenants"), _tenant_table)


def cmd_tenant_show(args) -> int:
    return _emit(args, _api(args).json("GET", f"/tenants/{args.id}"))


def cmd_tenant_create(args) -> int:
    body = _tenant_fields(args)
    if args.id is not None:
        body["id"] = args.id
    body["reason"] = args.reason
    out = _api(args).json("POST", "/tenants", json=body)
    return _emit(args, out, lambda o: print(f"tenant {o['tenant']['id']} ({o['tenant']['name']}) registered; "
                                            f"policy revision {o['revision'] if o['revision'] is not None else 'unchanged'}"))


def _patch(args, api: Api, tenant_id: int, body: dict) -> int:
    if args.version is None:
        # read-modify-write: the server still refuses it with 409 if someone changes it in between
        body["version"] = api.json("GET", f"/tenants/{tenant_id}")["version"]
    else:
        body["version"] = args.version
    body["reason"] = args.reason
    out = api.json("PATCH", f"/tenants/{tenant_id}", json=body)
    return _emit(args, out, lambda o: print(f"tenant {tenant_id} now at version {o['tenant']['version']}; policy revision "
                                            f"{o['revision'] if o['revision'] is not None else 'unchanged'}"))


def cmd_tenant_update(args) -> int:
    return _patch(args, _api(args), args.id, _tenant_fields(args))


def cmd_tenant_state(args) -> int:
    return _patch(args, _api(args), args.id, {"state": args.new_state})


def cmd_tenant_history(args) -> int:
    return _emit(args, _api(args).json("GET", f"/tenants/{args.id}/history"),
                 lambda rows: print_table(["AT", "STATE", "OPERATOR", "REASON"],
                                          [[_short_time(r["at"]), r["state"], r["operator"], r["reason"]] for r in rows]))


def cmd_tenant_export(args) -> int:
    data = _api(args).call("GET", "/tenants/export", params={"format": args.format}).content
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output} ({len(data)} bytes, {args.format})", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
    return 0


# --- block lists ---------------------------------------------------------------

def _entries_table(entries):
    print_table(["ID", "BATCH", "SCOPE", "KIND", "VALUE", "REASON", "OPERATOR", "CREATED", "EXPIRES", "EVIDENCE"],
                [[e["id"], e["batch_id"], e["tenant_id"] or "global", e["kind"] + ("!" if e["emergency"] else ""),
                  e["value"], e["reason"], e["operator"], _short_time(e["created_at"]), _short_time(e["expires_at"]),
                  e["evidence"]] for e in entries])


def cmd_lists_show(args) -> int:
    params = {"scope": args.scope, "limit": args.limit, "include_ended": args.all}
    if args.kind:
        params["kind"] = args.kind
    return _emit(args, _api(args).json("GET", "/lists/entries", params=params), _entries_table)


def _batch_summary(out) -> None:
    scope = "the global list" if out["tenant_id"] is None else f"tenant {out['tenant_id']}'s list"
    print(f"batch {out['batch_id']}: {out['entries']} entries on {scope}; policy revision "
          f"{out['revision'] if out['revision'] is not None else 'unchanged'}")


def cmd_lists_add(args) -> int:
    body = {"tenant_id": args.tenant, "sources": args.source or [], "ports": args.port or [], "reason": args.reason,
            "expires_at": parse_expiry(args.expires), "evidence": args.evidence, "emergency": args.emergency}
    return _emit(args, _api(args).json("POST", "/lists/entries", json=body), _batch_summary)


def cmd_lists_import(args) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as err:
        raise ClientError(f"{args.file}: cannot read block list: {err.strerror}", 2) from None
    params = {"reason": args.reason, "source": Path(args.file).name, "strict": args.strict,
              "emergency": args.emergency}
    if args.tenant is not None:
        params["tenant_id"] = args.tenant
    if args.expires:
        params["expires_at"] = parse_expiry(args.expires)
    if args.evidence:
        params["evidence"] = args.evidence
    show = sys.stderr.isatty() and not args.json
    out = _api(args).json("POST", "/lists/import", params=params, content=upload_chunks(data, show),
                          headers={"Content-Type": "text/plain", "Content-Length": str(len(data))})
    if args.json:
        return _emit(args, out)
    for bad in out["bad_lines"][:20]:
        print(f"{args.file}:{bad['line']}: {bad['reason']}: {bad['text']!r}", file=sys.stderr)
    if len(out["bad_lines"]) > 20:
        print(f"  and {len(out['bad_lines']) - 20} more", file=sys.stderr)
    print(f"{args.file}: {out['entries_read']} entries read, {len(out['bad_lines'])} bad lines skipped, "
          f"{out['entries']} prefixes after merging")
    _batch_summary(out)
    return 0


def cmd_lists_remove(args) -> int:
    out = _api(args).json("POST", f"/lists/entries/{args.id}/remove", json={"reason": args.reason})
    return _emit(args, out, lambda o: print(f"entry {args.id} removed; policy revision {o['revision']}"))


def cmd_lists_remove_batch(args) -> int:
    out = _api(args).json("POST", f"/lists/batches/{args.id}/remove", json={"reason": args.reason})
    return _emit(args, out, lambda o: print(f"batch {args.id}: {o['removed']} entries removed; policy revision {o['revision']}"))


# --- revisions, audit, tokens ---------------------------------------------------

def cmd_revision_list(args) -> int:
    return _emit(args, _api(args).json("GET", "/revisions", params={"limit": args.limit}),
                 lambda rows: print_table(["REVISION", "CREATED", "OPERATOR", "TENANTS", "GLOBAL PREFIXES", "REASON"],
                                          [[r["revision"], _short_time(r["created_at"]), r["operator"], r["tenants"],
                                            r["global_sources"], r["reason"]] for r in rows]))


def cmd_revision_show(args) -> int:
    doc = _api(args).json("GET", f"/policy/{args.revision}")
    if args.toml:
        import tomli_w
        print(tomli_w.dumps(doc), end="")
        return 0
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


def cmd_revision_diff(args) -> int:
    out = _api(args).json("GET", f"/policy/{args.old}/diff/{args.new}")
    if args.json:
        return _emit(args, out)
    print(f"revision {out['from']} -> {out['to']}")
    g = out["global_sources"]
    print(f"global sources: +{len(g['added'])} -{len(g['removed'])}")
    for p in g["added"][:50]:
        print(f"  + {p}")
    for p in g["removed"][:50]:
        print(f"  - {p}")
    for label in ("tenants_added", "tenants_removed"):
        if out[label]:
            print(f"{label.replace('_', ' ')}: {', '.join(map(str, out[label]))}")
    for tid, changes in out["tenants_changed"].items():
        print(f"tenant {tid}: " + ", ".join(sorted(changes)))
    return 0


def cmd_audit_list(args) -> int:
    params = {"limit": args.limit}
    for key, value in (("tenant_id", args.tenant), ("operator", args.operator), ("since", args.since),
                       ("until", args.until)):
        if value is not None:
            params[key] = value
    return _emit(args, _api(args).json("GET", "/audit", params=params),
                 lambda rows: print_table(["SEQ", "AT", "OPERATOR", "ACTION", "TARGET", "REASON"],
                                          [[r["seq"], _short_time(r["at"]), r["operator"], r["action"], r["target"],
                                            r["reason"]] for r in rows]))


def cmd_audit_verify(args) -> int:
    out = _api(args).json("GET", "/audit/verify")
    if args.json:
        print(json.dumps(out, indent=2))
    elif out["intact"]:
        print(f"audit chain intact: {out['entries']} entries")
    else:
        print(f"audit chain BROKEN ({out['entries']} entries):", file=sys.stderr)
        for p in out["problems"]:
            print(f"  {p}", file=sys.stderr)
    return 0 if out["intact"] else 1


def _token_table(rows):
    print_table(["NAME", "ROLE", "CREATED", "BY", "EXPIRES", "REVOKED"],
                [[r["name"], r["role"], _short_time(r["created_at"]), r["created_by"], _short_time(r["expires_at"]),
                  _short_time(r["revoked_at"])] for r in rows])


def cmd_token_list(args) -> int:
    return _emit(args, _api(args).json("GET", "/tokens"), _token_table)


def cmd_token_create(args) -> int:
    out = _api(args).json("POST", "/tokens", json={"name": args.name, "role": args.role, "reason": args.reason,
                                                   "expires_at": parse_expiry(args.expires)})
    if args.json:
        return _emit(args, out)
    print(out["token"])
    print(f"token {args.name!r} ({args.role}) created; it is shown only this once", file=sys.stderr)
    return 0


def cmd_token_revoke(args) -> int:
    _api(args).json("POST", f"/tokens/{args.name}/revoke", json={"reason": args.reason})
    print(f"token {args.name!r} revoked")
    return 0


# --- argument parsing -----------------------------------------------------------

def _guarded(func):
    """Errors an operator can hit end as a message and a non-zero exit, not a traceback."""
    def run(args) -> int:
        from controller.config import ConfigError
        from controller.errors import ControllerError
        from controller.store import StoreError
        try:
            return func(args)
        except ClientError as err:
            print(f"edgewarden: {err}", file=sys.stderr)
            return err.exit_code
        except (ConfigError, ControllerError, StoreError, json.JSONDecodeError) as err:
            print(f"edgewarden: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"edgewarden: {err}", file=sys.stderr)
            return 1
    return run


def _remote(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("controller")
    g.add_argument("--controller", metavar="URL", help="controller URL (else $EDGEWARDEN_CONTROLLER, else the client config)")
    g.add_argument("--token", help="operator token (else $EDGEWARDEN_TOKEN, else the client config)")
    g.add_argument("--client-config", metavar="PATH",
                   help="client config with [controller] url, token or token_file "
                        "(default $EDGEWARDEN_CLIENT_CONFIG or ~/.config/edgewarden/client.toml)")
    parser.add_argument("--json", action="store_true", help="JSON output for scripts")


def _cmd(sub, name, func, help_text, remote=True):
    p = sub.add_parser(name, help=help_text, description=help_text)
    if remote:
        _remote(p)
    p.set_defaults(func=_guarded(func))
    return p


def _store_args(p, listen=False):
    p.add_argument("--config", metavar="PATH", help="controller config (TOML), e.g. configs/controller.toml")
    p.add_argument("--db", metavar="URL", help="database URL, overrides the config: sqlite:///PATH or postgresql://...")
    if listen:
        p.add_argument("--listen", metavar="HOST:PORT", help="listen address, overrides the config")


def _tenant_field_args(p) -> None:
    p.add_argument("--file", metavar="PATH", help="the tenant's fields as JSON or TOML (flags override)")
    p.add_argument("--name")
    p.add_argument("--icp", metavar="FILING", help="ICP filing number, e.g. 京ICP备12345678号-1")
    p.add_argument("--domain", action="append", help="a domain (repeat)")
    p.add_argument("--vip", action="append", help="a VIP address (repeat)")
    p.add_argument("--contact", action="append", metavar="NAME,EMAIL,PHONE[,WEBHOOK]", help="a security contact (repeat)")
    p.add_argument("--flood", metavar="JSON", help="flood settings as in the policy document, as JSON")
    # "terminated" stays a choice so the controller's refusal (HTTP 409) can name the command that does it
    p.add_argument("--state", choices=["active", "suspended", "terminated"],
                   help="active or suspended; terminating is `edgewarden tenant terminate ID --confirm` (admin)")


def add_commands(sub) -> None:
    """Add the controller's commands to the `edgewarden` subparsers."""
    # controller: run / check / migrate / token (local store)
    p = sub.add_parser("controller", help="run the central controller (or: migrate, token)",
                       description="Run the controller's HTTP API in the foreground (as systemd runs it).")
    _store_args(p, listen=True)
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("--check-store", action="store_true", help="with --check: also check the store's schema is current")
    p.set_defaults(func=_guarded(cmd_controller))
    csub = p.add_subparsers(dest="controller_command", metavar="COMMAND")
    m = csub.add_parser("migrate", help="bring the store's schema up to date")
    _store_args(m)
    m.set_defaults(func=_guarded(cmd_migrate))
    tok = csub.add_parser("token", help="operator tokens, directly in the store (for the first admin token)"
                          ).add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    t = tok.add_parser("create", help="create a token and print it once")
    _store_args(t)
    t.add_argument("--name", required=True, help="who holds the token")
    t.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    t.add_argument("--expires", metavar="WHEN", help="30m, 12h, 90d or an ISO time; default never")
    t.add_argument("--reason", default="token created on the controller host")
    t.set_defaults(func=_guarded(cmd_local_token_create))
    t = tok.add_parser("list", help="tokens (names, roles, expiry; never the tokens)")
    _store_args(t)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_guarded(cmd_local_token_list))
    t = tok.add_parser("revoke", help="revoke a token")
    _store_args(t)
    t.add_argument("--name", required=True)
    t.add_argument("--reason", required=True)
    t.set_defaults(func=_guarded(cmd_local_token_revoke))
    from controller.distribution.cli import add_controller_commands
    add_controller_commands(csub, _store_args, _guarded)

    # tenant
    tenant = sub.add_parser("tenant", help="the controller's tenant registry (over the API)"
                            ).add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")
    _cmd(tenant, "list", cmd_tenant_list, "registered tenants")
    p = _cmd(tenant, "show", cmd_tenant_show, "one tenant, all its fields (JSON)")
    p.add_argument("id", type=int)
    p = _cmd(tenant, "create", cmd_tenant_create, "register a tenant")
    p.add_argument("--id", type=int, help="tenant id (default: the next free one)")
    _tenant_field_args(p)
    p.add_argument("--reason", required=True)
    p = _cmd(tenant, "update", cmd_tenant_update, "change a tenant (only the fields given)")
    p.add_argument("id", type=int)
    _tenant_field_args(p)
    p.add_argument("--version", type=int, help="the version you read (default: read it now)")
    p.add_argument("--reason", required=True)
    # terminate is the workflow's (admin, --confirm): controller.workflow.cli
    for verb, state in (("suspend", "suspended"), ("resume", "active")):
        p = _cmd(tenant, verb, cmd_tenant_state, f"set a tenant's state to {state}")
        p.add_argument("id", type=int)
        p.add_argument("--version", type=int)
        p.add_argument("--reason", required=True)
        p.set_defaults(new_state=state)
    p = _cmd(tenant, "history", cmd_tenant_history, "a tenant's state changes")
    p.add_argument("id", type=int)
    p = _cmd(tenant, "export", cmd_tenant_export, "tenant records for the authorities (JSON, or CSV with BOM)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--output", "-o", metavar="FILE")

    from controller.workflow.cli import add_commands as add_workflow_commands
    add_workflow_commands(sub, tenant)
    from controller.distribution.cli import add_fleet_commands
    add_fleet_commands(sub, tenant, _cmd)

    # lists
    lists = sub.add_parser("lists", help="the controller's block lists, global or per tenant (over the API; "
                                         "`edgewarden block` is this node's maps)"
                           ).add_subparsers(dest="lists_command", required=True, metavar="COMMAND")
    p = _cmd(lists, "show", cmd_lists_show, "block entries")
    p.add_argument("--scope", default="all", help="all, global or a tenant id")
    p.add_argument("--kind", choices=["source", "port"])
    p.add_argument("--all", action="store_true", help="include removed and expired entries")
    p.add_argument("--limit", type=int, default=1000)
    for name, func, text in (("add", cmd_lists_add, "block sources and/or ports"),
                             ("import", cmd_lists_import, "import a block-list file (one batch)")):
        p = _cmd(lists, name, func, text)
        if name == "import":
            p.add_argument("file")
            p.add_argument("--strict", action="store_true", help="refuse the whole file if any line is bad")
        else:
            p.add_argument("--source", action="append", help="address, CIDR or range a-b (repeat)")
            p.add_argument("--port", action="append", help="tcp/25 or udp/6000-6010 (repeat)")
        p.add_argument("--tenant", type=int, help="the tenant's list (default: the global list)")
        p.add_argument("--reason", required=True)
        p.add_argument("--expires", metavar="WHEN", help="30m, 12h, 7d or an ISO time")
        p.add_argument("--evidence", metavar="REF", help="reference to sealed evidence")
        p.add_argument("--emergency", action="store_true", help="emergency block (admin)")
    p = _cmd(lists, "remove", cmd_lists_remove, "remove one entry")
    p.add_argument("id", type=int)
    p.add_argument("--reason", required=True)
    p = _cmd(lists, "remove-batch", cmd_lists_remove_batch, "remove every entry an add or import made")
    p.add_argument("id", type=int)
    p.add_argument("--reason", required=True)

    # revisions
    rev = sub.add_parser("revision", help="the controller's policy revisions (over the API)"
                         ).add_subparsers(dest="revision_command", required=True, metavar="COMMAND")
    p = _cmd(rev, "list", cmd_revision_list, "recent revisions")
    p.add_argument("--limit", type=int, default=20)
    p = _cmd(rev, "show", cmd_revision_show, "a revision's policy document")
    p.add_argument("revision", help="a number or 'latest'")
    p.add_argument("--toml", action="store_true", help="as TOML, as `edgewarden policy apply` reads it")
    p = _cmd(rev, "diff", cmd_revision_diff, "what changed between two revisions")
    p.add_argument("old")
    p.add_argument("new")

    # audit
    aud = sub.add_parser("audit", help="the controller's audit trail (over the API)"
                         ).add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = _cmd(aud, "list", cmd_audit_list, "audit entries, filtered")
    p.add_argument("--tenant", type=int)
    p.add_argument("--operator")
    p.add_argument("--since", metavar="ISO_TIME")
    p.add_argument("--until", metavar="ISO_TIME")
    p.add_argument("--limit", type=int, default=100)
    _cmd(aud, "verify", cmd_audit_verify, "check the hash chain (exit 1 if broken)")

    # token (remote)
    tok = sub.add_parser("token", help="operator tokens (over the API, admin)"
                         ).add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    _cmd(tok, "list", cmd_token_list, "tokens")
    p = _cmd(tok, "create", cmd_token_create, "create a token and print it once")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    p.add_argument("--expires", metavar="WHEN")
    p.add_argument("--reason", required=True)
    p = _cmd(tok, "revoke", cmd_token_revoke, "revoke a token")
    p.add_argument("name")
    p.add_argument("--reason", required=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m controller.cli`: the same commands on a host without the agent."""
    parser = argparse.ArgumentParser(prog="edgewarden", description="edgewarden controller commands")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
