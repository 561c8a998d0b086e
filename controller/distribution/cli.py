"""The fleet's commands: `edgewarden controller keygen` and `controller node
add|revoke|list` (on the controller host, directly in the store and CA),
`edgewarden fleet status`, `edgewarden tenant stats ID` and `edgewarden
block emergency PREFIX --reason ...` (over the API)."""

from __future__ import annotations

import getpass
import sys


def _settings(args):
    from controller.config import load_settings
    return load_settings(args.config, database=args.db)


def _engine(args):
    from controller.store import check_migrated, migrate, open_engine
    engine = open_engine(_settings(args).database)
    migrate(engine)
    check_migrated(engine)
    return engine


def cmd_keygen(args) -> int:
    from controller.config import split_listen
    from controller.distribution.nodes import setup
    settings = _settings(args)
    hosts = list(args.host or [])
    if not hosts and settings.distribution_listen:
        hosts = [split_listen(settings.distribution_listen)[0]]
    if not hosts:
        print("edgewarden: give --host NAME (the address agents dial), or set [distribution] listen", file=sys.stderr)
        return 2
    made = setup(settings.distribution_ca_dir, settings.distribution_signing_key, settings.distribution_name, hosts)
    for line in made or ["everything exists already; nothing was made"]:
        print(line)
    return 0


def cmd_node_add(args) -> int:
    from controller.distribution.nodes import add_node
    settings = _settings(args)
    out = add_node(_engine(args), settings.distribution_ca_dir, args.name, operator="local:" + getpass.getuser(),
                   reason=args.reason)
    print(f"node {out['node']} registered; give it (and only it) these files:\n"
          f"  cert = \"{out['cert']}\"\n  key  = \"{out['key']}\"\n  ca   = \"{out['ca']}\"")
    return 0


def cmd_node_revoke(args) -> int:
    from controller.distribution.nodes import revoke_node
    revoke_node(_engine(args), args.name, operator="local:" + getpass.getuser(), reason=args.reason)
    print(f"node {args.name} revoked: the controller refuses its connections from now on")
    return 0


def cmd_node_list(args) -> int:
    from agent.cli_output import emit, print_table
    from controller.distribution.nodes import list_nodes
    rows = list_nodes(_engine(args))
    return emit(args, rows and [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                                for r in rows],
                lambda _: print_table(["node", "created", "revoked", "applied"],
                                      [[r["name"], f"{r['created_at']:%Y-%m-%d %H:%M}",
                                        f"{r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "-",
                                        r["applied_revision"] if r["applied_revision"] is not None else "-"]
                                       for r in rows]))


def _fleet_table(data) -> None:
    from agent.cli_output import print_table
    print(f"latest revision {data['latest_revision']}: {data['up_to_date']} of {len(data['nodes'])} node(s) "
          f"up to date, {data['connected']} connected")
    rows = []
    for n in data["nodes"]:
        rejection = n["last_rejection"]
        rows.append([n["node"], "revoked" if n["revoked"] else "connected" if n["connected"] else "offline",
                     n["applied_revision"] if n["applied_revision"] is not None else "-", n["lag"],
                     (n["last_seen"] or "-")[:19].replace("T", " "),
                     ",".join(f"{k}:{v}" for k, v in sorted(n["attach_modes"].items())) or "-",
                     n["agent_version"] or "-",
                     f"{rejection['revision']} {rejection['reason']}: {rejection['message']}"[:80] if rejection else "-"])
    print_table(["node", "state", "applied", "lag", "last seen (UTC)", "attach", "version", "last rejection"], rows)


def cmd_fleet_status(args) -> int:
    from controller.cli import _api, _emit
    return _emit(args, _api(args).json("GET", "/fleet"), _fleet_table)


def cmd_fleet_node(args) -> int:
    from controller.cli import _api, _emit
    return _emit(args, _api(args).json("GET", f"/fleet/{args.node}"))


def cmd_tenant_stats(args) -> int:
    from controller.cli import _api, _emit

    def table(data):
        print(f"tenant {data['tenant_id']}: {data['nodes']} node(s) reporting")
        for key, value in sorted(data["per_second"].items()):
            print(f"  {key}/s: {value:,.1f}")
    return _emit(args, _api(args).json("GET", f"/tenants/{args.id}/stats"), table)


def cmd_block_emergency(args) -> int:
    from controller.cli import _api, _emit
    body = {"prefixes": args.prefix, "reason": args.reason, "tenant_id": args.tenant}
    out = _api(args).json("POST", "/fleet/emergency", json=body)
    return _emit(args, out, lambda o: print(f"emergency block {o['emergency_id']} of {', '.join(o['prefixes'])} "
                                            f"sent to {o['sent_to']} connected agent(s); revision "
                                            f"{o['batch'].get('revision')}"))


def add_controller_commands(csub, store_args, guarded) -> None:
    """Under `edgewarden controller`: keygen, node add|revoke|list."""
    k = csub.add_parser("keygen", help="create the fleet CA, the controller's certificate and the signing key "
                                       "(what is missing; never overwrites)")
    store_args(k)
    k.add_argument("--host", action="append", help="a name or address agents dial (repeat; default the "
                                                   "[distribution] listen host)")
    k.set_defaults(func=guarded(cmd_keygen))
    node = csub.add_parser("node", help="edge nodes: one client certificate each, revocable"
                           ).add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    p = node.add_parser("add", help="register a node and issue its client certificate")
    store_args(p)
    p.add_argument("name")
    p.add_argument("--reason", default="node added on the controller host")
    p.set_defaults(func=guarded(cmd_node_add))
    p = node.add_parser("revoke", help="revoke a node: its connections are refused")
    store_args(p)
    p.add_argument("name")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=guarded(cmd_node_revoke))
    p = node.add_parser("list", help="registered nodes")
    store_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=guarded(cmd_node_list))


def add_fleet_commands(sub, tenant_sub, cmd) -> None:
    """`edgewarden fleet status|node`, `edgewarden tenant stats ID`."""
    fleet = sub.add_parser("fleet", help="the edge fleet as the controller sees it (over the API)"
                           ).add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    cmd(fleet, "status", cmd_fleet_status, "every node: applied revision, lag, last seen, last rejection, "
                                           "attach modes, version")
    p = cmd(fleet, "node", cmd_fleet_node, "one node's status")
    p.add_argument("node")
    p = cmd(tenant_sub, "stats", cmd_tenant_stats, "a tenant's fleet-wide rates from the agents' counter summaries")
    p.add_argument("id", type=int)


def add_emergency_command(block_sub) -> None:
    """`edgewarden block emergency PREFIX... --reason ...` (admin, over the controller's API)."""
    from controller.cli import _guarded, _remote
    p = block_sub.add_parser("emergency", help="admin: block at every edge node now, ahead of queued changes "
                                               "(through the controller; also made a revision)")
    _remote(p)
    p.add_argument("prefix", nargs="+")
    p.add_argument("--reason", required=True)
    p.add_argument("--tenant", type=int, help="a tenant's list (default: the global list)")
    p.set_defaults(func=_guarded(cmd_block_emergency))
