"""`edgewarden dpdk ...`: run the DPDK engine in this process, and steer a
running one through its control socket (policy apply, block lists,
suspend/resume, stats) with the same policy edits as the XDP commands."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import replace

from agent.cli_output import emit, print_table


def _config(args):
    from agent.dpdk.config import load_config
    return load_config(args.config)


def cmd_dpdk_run(args) -> int:
    from agent.dpdk.run import run_engine
    from agent.policy import load_policy

    config = _config(args)
    policy = load_policy(args.policy) if args.policy else None
    report = run_engine(config, policy=policy, policy_file=args.policy, seconds=args.seconds, packets=args.packets,
                        test_clock_ns=args.test_clock_ns, trace=args.trace)
    document = report.as_dict()

    def human(doc) -> None:
        print(f"{doc['received']} received, {doc['passed']} passed, {doc['dropped']} dropped in "
              f"{doc['seconds']:.3f} s (policy revision {doc['policy_revision']}, {doc['swaps']} swaps)")
        print_table(["TENANT", "PACKETS", "PASSED", "DROPPED"],
                    [[t["tenant_id"], t["packets"], t["passed_packets"], t["dropped_packets"]] for t in doc["tenants"]
                     if t["packets"]])

    return emit(args, document, human)


def _control(args, op: str, **body):
    from agent.dpdk.control import request
    config = _config(args)
    if config.control_socket is None:
        raise ValueError(f"{config.source}: no control_socket set, so a running engine cannot be reached")
    return request(config.control_socket, op, **body)


def _change(args, change, what: str) -> int:
    from agent.policy import policy_from_document, policy_to_document

    current = policy_from_document(_control(args, "policy")["policy"], "the running engine")
    changed = change(current)
    changed = replace(changed, revision=current.revision + 1)
    reply = _control(args, "apply", policy=policy_to_document(changed), expect_revision=current.revision)
    print(f"{what}; revision {reply['revision']}")
    return 0


def cmd_dpdk_apply(args) -> int:
    from agent.policy import load_policy, policy_to_document
    reply = _control(args, "apply", policy=policy_to_document(load_policy(args.policy)))
    print(f"applied revision {reply['revision']}")
    return 0


def _tenant(policy, tenant_id: int):
    tenant = policy.tenant(tenant_id)
    if tenant is None:
        raise ValueError(f"no tenant {tenant_id} in the running engine's policy")
    return tenant


def cmd_dpdk_state(args, suspended: bool) -> int:
    from agent.policy import TenantState
    state = TenantState.SUSPENDED if suspended else TenantState.ACTIVE
    return _change(args, lambda p: p.replace_tenant(replace(_tenant(p, args.tenant), state=state)),
                   f"tenant {args.tenant} {state.value}")


def cmd_dpdk_block(args, add: bool) -> int:
    net = ipaddress.ip_network(args.cidr, strict=False)

    def edit(sources):
        return (*[s for s in sources if s != net], net) if add else tuple(s for s in sources if s != net)

    def change(policy):
        if args.tenant is None:
            return replace(policy, blocked_sources=edit(policy.blocked_sources))
        tenant = _tenant(policy, args.tenant)
        return policy.replace_tenant(replace(tenant, blocked_sources=edit(tenant.blocked_sources)))

    scope = f"tenant {args.tenant}" if args.tenant is not None else "global"
    return _change(args, change, f"{'blocked' if add else 'unblocked'} {net} ({scope})")


def cmd_dpdk_load_list(args) -> int:
    from agent.blocklist import read_blocklist
    loaded = read_blocklist(args.file, strict=args.strict)
    reply = _control(args, "load_list", name=args.name, tenant=args.tenant,
                     prefixes=loaded.prefixes.serialize().hex())
    print(f"{reply['list']}: {loaded.entries_read:,} entries read, {len(loaded.bad_lines):,} bad lines skipped, "
          f"{len(loaded.prefixes):,} prefixes enforced")
    return 0


def cmd_dpdk_unload_list(args) -> int:
    reply = _control(args, "unload_list", name=args.name, tenant=args.tenant)
    print(f"unloaded {reply['list']}")
    return 0


def cmd_dpdk_stats(args) -> int:
    document = _control(args, "stats")

    def human(doc) -> None:
        print(f"DPDK engine (policy revision {doc['policy_revision']}): {doc['received']} received, "
              f"{doc['passed']} passed, {doc['dropped']} dropped")
        print_table(["TENANT", "PACKETS", "PASSED", "DROPPED"],
                    [[t["tenant_id"], t["packets"], t["passed_packets"], t["dropped_packets"]] for t in doc["tenants"]])

    return emit(args, document, human)


def add_commands(subparsers) -> None:
    dpdk = subparsers.add_parser("dpdk", help="the DPDK engine: run it, or steer a running one"
                                 ).add_subparsers(dest="dpdk_command", required=True)
    p = dpdk.add_parser("run", help="start the EAL and the worker in this process and enforce the policy")
    p.add_argument("--config", required=True, help="engine config (TOML, see configs/dpdk.toml)")
    p.add_argument("--policy", metavar="FILE", help="policy document (default: the config's policy)")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--packets", type=int, help="stop after this many frames received")
    p.add_argument("--json", action="store_true", help="the final report as JSON")
    p.add_argument("--test-clock-ns", type=int, help=argparse.SUPPRESS)
    p.add_argument("--trace", type=int, help=argparse.SUPPRESS)     # tests: per-packet tenant, reason, class
    p.set_defaults(func=cmd_dpdk_run)

    def control_parser(name: str, help_text: str):
        q = dpdk.add_parser(name, help=help_text)
        q.add_argument("--config", required=True, help="the running engine's config (for its control socket)")
        return q

    p = control_parser("apply", "apply a policy document to the running engine (swapped in whole)")
    p.add_argument("policy")
    p.set_defaults(func=cmd_dpdk_apply)
    for verb, suspended in (("suspend", True), ("resume", False)):
        p = control_parser(verb, f"{verb} a tenant on the running engine")
        p.add_argument("tenant", type=int)
        p.set_defaults(func=lambda args, s=suspended: cmd_dpdk_state(args, s))
    for verb, add in (("block", True), ("unblock", False)):
        p = control_parser(verb, f"{'add' if add else 'remove'} a source block (global, or --tenant)")
        p.add_argument("cidr")
        p.add_argument("--tenant", type=int)
        p.set_defaults(func=lambda args, a=add: cmd_dpdk_block(args, a))
    p = control_parser("block-load", "load a block-list file as a named list (swapped in with the policy)")
    p.add_argument("file")
    p.add_argument("--name", default="default")
    p.add_argument("--tenant", type=int)
    p.add_argument("--strict", action="store_true", help="refuse the file if any line is bad")
    p.set_defaults(func=cmd_dpdk_load_list)
    p = control_parser("block-unload", "remove a named list")
    p.add_argument("--name", default="default")
    p.add_argument("--tenant", type=int)
    p.set_defaults(func=cmd_dpdk_unload_list)
    p = control_parser("stats", "per-tenant counters of the running engine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dpdk_stats)
