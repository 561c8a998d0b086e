"""The `edgewarden` command: a thin shell over agent.datapath and
agent.policy that works on the live pinned maps, so no daemon has to run."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

from agent.datapath.abi import DROP_REASONS, TrafficClass, VerdictReason, action_name
from agent.datapath.blocktables import blocked_prefixes, prefixes_of_tables
from agent.datapath.counters import read_counters
from agent.blocklist import BlockListError, LoadedList, read_blocklist
from agent.cli_output import emit, print_table
from agent.daemon import changes
from agent.datapath import (
    AttachMode, InterfaceError, apply_policy, attach, change_policy, current_policy, detach, interface_status,
    list_store, live_maps, managed_interfaces, replace_named_list,
)
from agent.datapath.named_lists import DEFAULT_LIST, ListId, check_list_name
from agent.datapath.policy_store import applied_policy
from agent.datapath.syscalls import BpfError
from agent.pcap import CaptureError
from agent.policy import Policy, PolicyError, TenantState, load_policy


class UsageError(Exception):
    pass


def _target_interfaces(args) -> list[str]:
    if getattr(args, "iface", None):
        return [args.iface]
    interfaces = managed_interfaces()
    if not interfaces:
        raise InterfaceError("no interface is managed by edgewarden; run: edgewarden attach IFACE")
    return interfaces


# --- attach / detach / status ------------------------------------------------

def cmd_attach(args) -> int:
    policy = load_policy(args.policy) if args.policy else None
    status, report = attach(args.iface, AttachMode(args.mode), policy)
    print(f"attached to {status.ifname} in {status.mode} mode, program id {status.prog_id}, "
          f"policy revision {status.revision}")
    if report:
        print(f"policy {report.summary()}")
    return 0


def cmd_detach(args) -> int:
    detach(args.iface, keep_maps=args.keep_maps)
    print(f"detached from {args.iface}" + (" (maps kept pinned)" if args.keep_maps else ""))
    return 0


def cmd_status(args) -> int:
    from agent.daemon.cli import daemon_engine_interfaces

    pinned = managed_interfaces()
    rows = [interface_status(i).as_dict() for i in pinned]
    rows += daemon_engine_interfaces(pinned)      # a running DPDK engine has no pins to read

    def human(_) -> None:
        if not rows:
            print("no interface is managed by edgewarden")
            return
        print_table(["INTERFACE", "MODE", "PROGRAM", "EDGEWARDEN", "REVISION"],
                    [[r["interface"] if r["ifindex"] or r.get("engine") else f"{r['interface']} (gone)", r["mode"],
                      r["program_id"] or (f"{r['engine']} engine of the agent" if r.get("engine") else "-"),
                      "yes" if r["edgewarden"] else "NO",
                      r["policy_revision"] if r["policy_revision"] is not None else "-"] for r in rows])

    return emit(args, {"interfaces": rows}, human)


# --- policy ------------------------------------------------------------------

def cmd_policy_apply(args) -> int:
    policy = load_policy(args.file)
    report = apply_policy(args.iface, policy)
    print(f"{args.iface}: applied {report.summary()}")
    return 0


def cmd_policy_check(args) -> int:
    policy = load_policy(args.file)
    print(f"{args.file}: valid, revision {policy.revision}, {len(policy.tenants)} tenant(s), "
          f"{len(policy.blocked_sources)} global block(s)")
    return 0


def _change_policy(args, change: Callable[[Policy], Policy], what: str) -> int:
    """Edit each target interface's live policy document and apply the diff,
    as a new revision: read, change and apply are one step under the
    interface lock, so concurrent changes never lose one another."""
    for ifname in _target_interfaces(args):
        _, report = change_policy(ifname, change)
        print(f"{ifname}: {what}; {report.summary()}")
    return 0


def cmd_block_add(args) -> int:
    net = _network(args.cidr)
    scope = f"tenant {args.tenant}" if args.tenant is not None else "global"
    return _change_policy(args, lambda policy: changes.block_add(policy, args.cidr, args.tenant),
                          f"blocked {net} ({scope})")


def cmd_block_del(args) -> int:
    net = _network(args.cidr)
    scope = f"tenant {args.tenant}" if args.tenant is not None else "global"
    return _change_policy(args, lambda policy: changes.block_del(policy, args.cidr, args.tenant),
                          f"unblocked {net} ({scope})")


def _network(text: str):
    try:
        return changes.network(text)
    except changes.ChangeError as err:
        raise UsageError(str(err)) from None


def _engine_blocked(ifname: str) -> list:
    """For an engine without pins (DPDK): the block tables compiled from what
    it was given, the policy recorded beside its lists and the lists stored
    under its name; the engine swaps these in whole, so they are what it holds."""
    from agent.datapath.compile import compile_policy
    from agent.datapath.named_lists import scope_unions
    policy = applied_policy(ifname)
    lists = {lid: p for lid, p in list_store(ifname).load_all().items()
             if lid.tenant_id is None or policy.tenant(lid.tenant_id) is not None}
    tables = compile_policy(policy, named_lists=scope_unions(lists)).tables
    return prefixes_of_tables({name: table.items() for name, table in tables.items()})


def cmd_block_list(args) -> int:
    """Reads the live maps (what the datapath enforces), not the document;
    for the DPDK engine, what it was given (_engine_blocked)."""
    result = {}
    pinned = managed_interfaces()
    for ifname in _list_interfaces(args):
        if ifname in pinned or applied_policy(ifname) is None:
            with live_maps(ifname) as maps:         # says why, if it is not managed
                blocked = blocked_prefixes(maps)
        else:
            blocked = _engine_blocked(ifname)
        entries = [{"tenant_id": tenant_id, "prefix": str(net)} for tenant_id, net in blocked]
        if args.tenant is not None:
            entries = [e for e in entries if e["tenant_id"] == args.tenant]
        result[ifname] = sorted(entries, key=lambda e: (e["tenant_id"] or 0, e["prefix"]))

    def human(_) -> None:
        for ifname, entries in result.items():
            print(f"{ifname}: {len(entries)} prefix(es)")
            print_table(["SCOPE", "PREFIX"], [["global" if e["tenant_id"] is None else f"tenant {e['tenant_id']}",
                                                e["prefix"]] for e in entries])

    return emit(args, {"interfaces": result}, human)


class PhaseProgress:
    """A progress bar over the phases of a long command, on a terminal only
    (stderr, so --json output stays clean)."""

    def __init__(self, phases: list[str]):
        self.phases = phases
        self.done = 0
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def step(self, what: str) -> None:
        if self.enabled:
            width = 24
            filled = width * self.done // len(self.phases)
            print(f"\r[{'#' * filled}{'-' * (width - filled)}] {self.done}/{len(self.phases)} {what:<40}",
                  end="", file=sys.stderr, flush=True)
        self.done += 1

    def finish(self) -> float:
        if self.enabled:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr, flush=True)
        return time.monotonic() - self.started


def _list_id(args) -> ListId:
    return ListId(check_list_name(args.list), args.tenant)


def _read_list_file(path: str, args) -> "LoadedList":
    loaded = read_blocklist(path, strict=args.strict, allow_empty=getattr(args, "allow_empty", False))
    for bad in loaded.bad_lines[:20]:
        print(f"edgewarden: skipped {bad}", file=sys.stderr)
    if len(loaded.bad_lines) > 20:
        print(f"edgewarden: ... and {len(loaded.bad_lines) - 20} more bad lines skipped", file=sys.stderr)
    return loaded


def cmd_block_load(args) -> int:
    from agent.datapath.list_delta import load_named_list

    list_id = _list_id(args)
    progress = PhaseProgress(["parse and compile", "apply", "done"])
    progress.step(f"parsing {args.file}")
    loaded = _read_list_file(args.file, args)
    summaries = []
    for ifname in _target_interfaces(args):
        progress.step(f"applying to {ifname}")
        # A small change to a loaded list goes as a delta: only the table nodes
        # it touches are derived and written, the live table is not read back.
        done = load_named_list(ifname, list_id, loaded.prefixes)
        summaries.append({"interface": ifname, "added": done.added, "removed": done.removed,
                          "swapped": done.report.swapped, "delta": done.as_delta,
                          "tables": done.report.summary()})
    progress.step("done")
    seconds = progress.finish()
    result = {"list": str(list_id), "file": args.file, "entries_read": loaded.entries_read,
              "bad_lines": len(loaded.bad_lines), "prefixes": len(loaded.prefixes),
              "prefixes_v4": loaded.prefixes.count_v4(), "prefixes_v6": loaded.prefixes.count_v6(),
              "seconds": round(seconds, 3), "interfaces": summaries}

    def human(_) -> None:
        print(f"{list_id}: {loaded.entries_read:,} entries read, {len(loaded.bad_lines):,} bad lines skipped, "
              f"{len(loaded.prefixes):,} prefixes after merging ({loaded.prefixes.count_v4():,} IPv4, "
              f"{loaded.prefixes.count_v6():,} IPv6), {seconds:.2f} s")
        for summary in summaries:
            how = "swapped in whole" if summary["swapped"] else "applied in place"
            how += " (as a delta)" if summary["delta"] else ""
            print(f"  {summary['interface']}: +{summary['added']:,} -{summary['removed']:,} prefixes; tables {how}")

    return emit(args, result, human)


def cmd_block_unload(args) -> int:
    list_id = _list_id(args)
    for ifname in _target_interfaces(args):
        replace_named_list(ifname, list_id, None)
        print(f"{ifname}: unloaded {list_id}")
    return 0


def cmd_block_diff(args) -> int:
    old = _read_list_file(args.old, args).prefixes
    new = _read_list_file(args.new, args).prefixes
    added, removed = old.diff(new)
    as_text = lambda ps: [str(ipaddress.ip_network((raw, length))) for raw, length in ps.to_list()]
    document = {"old": args.old, "new": args.new, "added": as_text(added), "removed": as_text(removed)}

    def human(_) -> None:
        print(f"{args.old} -> {args.new}: +{len(added):,} -{len(removed):,} prefixes")
        for net in document["added"][: args.limit]:
            print(f"+ {net}")
        for net in document["removed"][: args.limit]:
            print(f"- {net}")
        if max(len(added), len(removed)) > args.limit:
            print(f"(first {args.limit} of each shown; --limit N or --json for all)")

    return emit(args, document, human)


def cmd_block_lists(args) -> int:
    result = {}
    for ifname in _list_interfaces(args):
        policy = current_policy(ifname)
        result[ifname] = [
            {"list": list_id.name, "tenant_id": list_id.tenant_id, "prefixes": len(prefixes),
             "prefixes_v4": prefixes.count_v4(), "prefixes_v6": prefixes.count_v6(),
             "enforced": list_id.tenant_id is None or policy.tenant(list_id.tenant_id) is not None}
            for list_id, prefixes in sorted(list_store(ifname).load_all().items())]

    def human(_) -> None:
        for ifname, lists in result.items():
            print(f"{ifname}: {len(lists)} named list(s) (plus the policy's own blocked_sources)")
            print_table(["SCOPE", "LIST", "PREFIXES", "IPV4", "IPV6", "ENFORCED"],
                         [["global" if l["tenant_id"] is None else f"tenant {l['tenant_id']}", l["list"], l["prefixes"],
                           l["prefixes_v4"], l["prefixes_v6"], "yes" if l["enforced"] else "no (tenant not in policy)"]
                          for l in lists])

    return emit(args, {"interfaces": result}, human)


def _list_interfaces(args) -> list[str]:
    """The managed interfaces, and a running agent's DPDK engine: its lists
    are kept in the same list store under the engine's name."""
    if getattr(args, "iface", None):
        return [args.iface]
    from agent.daemon.cli import daemon_engine_interfaces
    pinned = managed_interfaces()
    interfaces = pinned + [row["interface"] for row in daemon_engine_interfaces(pinned)]
    if not interfaces:
        return _target_interfaces(args)          # says what to do
    return interfaces


def _set_state(args, state: TenantState) -> int:
    return _change_policy(args, lambda policy: changes.set_state(policy, args.tenant, state),
                          f"tenant {args.tenant} {state.value}")


# --- stats -------------------------------------------------------------------

@dataclass
class _CounterSource:
    """One interface's counters for `stats`: an XDP interface's pinned maps,
    or the engine of a running daemon that keeps them in its memory (DPDK),
    as a snapshot of the same maps (agent.daemon.counter_snapshot). Both go
    through the same aggregation."""
    ifname: str
    revision: int
    labels: dict[int, tuple[str, str]]          # tenant id -> (name, state)
    open: Callable[[], ContextManager[dict]]
    refresh: Callable[[], dict] | None = None   # a new snapshot of the maps (--watch on a daemon's engine)

    def label(self, tenant_id: int) -> tuple[str, str]:
        return self.labels.get(tenant_id) or ("unassigned" if tenant_id == 0 else "?", "-")


def _counter_sources(args) -> list[_CounterSource]:
    from agent.daemon.cli import daemon_counter_snapshots
    from agent.daemon.counter_snapshot import snapshot_maps, tenant_labels

    pinned = managed_interfaces()
    local = [i for i in ([args.iface] if args.iface else pinned) if i in pinned]
    remote = {} if args.iface in pinned else daemon_counter_snapshots(pinned, args.iface)
    if args.iface and not local and not remote:
        local = [args.iface]                    # live_maps says why it is not managed
    if not local and not remote:
        raise InterfaceError("no interface is managed by edgewarden (no pinned maps, and no running agent with the "
                             "DPDK engine answers); run: edgewarden attach IFACE, or start the agent")
    sources = []
    for ifname in local:
        policy = current_policy(ifname)
        sources.append(_CounterSource(ifname, policy.revision, {t.id: (t.name, t.state.value) for t in policy.tenants},
                                      lambda ifname=ifname: live_maps(ifname)))
    for ifname, snapshot in remote.items():
        sources.append(_CounterSource(
            ifname, snapshot["policy"]["revision"], tenant_labels(snapshot),
            lambda snapshot=snapshot: contextlib.nullcontext(snapshot_maps(snapshot)),
            lambda ifname=ifname: snapshot_maps(daemon_counter_snapshots(pinned, ifname)[ifname])))
    return sources


def cmd_stats(args) -> int:
    if args.watch:
        return _watch_stats(args)
    document = {"interfaces": {}}
    for source in _counter_sources(args):
        with source.open() as maps:
            counters = read_counters(maps)
        tenants = []
        for tenant_id in sorted(counters):
            if args.tenant is not None and tenant_id != args.tenant:
                continue
            name, state = source.label(tenant_id)
            tenants.append({"name": name, "state": state, **counters[tenant_id].as_dict()})
        document["interfaces"][source.ifname] = {"policy_revision": source.revision, "tenants": tenants}

    def human(_) -> None:
        for ifname, body in document["interfaces"].items():
            print(f"{ifname} (policy revision {body['policy_revision']})")
            if args.wide:
                reasons = [r.name for r in VerdictReason]
                print_table(["TENANT", "NAME", "STATE", "PACKETS", "BYTES", "PASSED", "DROPPED",
                             *[r.upper() for r in reasons]],
                            [[t["tenant_id"], t["name"], t["state"], t["packets"], t["bytes"], t["passed_packets"],
                              t["dropped_packets"], *[t["reason_packets"][r] for r in reasons]] for t in body["tenants"]])
            else:
                print_table(["TENANT", "NAME", "STATE", "PACKETS", "PASSED", "DROPPED", "TOP DROP REASONS"],
                            [[t["tenant_id"], t["name"], t["state"], t["packets"], t["passed_packets"],
                              t["dropped_packets"], _top_drop_reasons(t["reason_packets"])] for t in body["tenants"]])

    return emit(args, document, human)


def _top_drop_reasons(reason_packets: dict[str, int], top: int = 3) -> str:
    """The tenant's largest drop reasons, 'reason=count', largest first."""
    drops = sorted(((n, r) for r, n in reason_packets.items() if n and VerdictReason[r] in DROP_REASONS), reverse=True)
    return " ".join(f"{r.removeprefix('drop_')}={n:,}" for n, r in drops[:top]) or "-"


def _watch_stats(args) -> int:
    """Live per-tenant rates, redrawn in place every --interval seconds."""

    from agent.datapath.abi import COUNTER_LAYOUT
    from agent.datapath.counters import CounterMonitor

    source = _counter_sources(args)[0]
    ifname = source.ifname
    packets = COUNTER_LAYOUT["reason_packets"]
    nbytes = COUNTER_LAYOUT["reason_bytes"]
    drop_indexes = [packets.start + r.value for r in DROP_REASONS]
    redraw = sys.stdout.isatty()
    with source.open() as maps:
        monitor = CounterMonitor(maps)
        monitor.scan()
        shown = 0
        while args.count is None or shown < args.count:
            time.sleep(args.interval)
            if source.refresh is not None:
                maps.update(source.refresh())       # the monitor reads the maps it holds: give it the new ones
            scan = monitor.scan()
            shown += 1
            rows = []
            for tenant_id, _ in scan.top(args.top, by="packets"):
                if args.tenant is not None and tenant_id != args.tenant:
                    continue
                totals, rates = scan.row(scan.tenant_ids.index(tenant_id))
                drops_by_reason = {r.name: rates[packets.start + r.value] for r in DROP_REASONS
                                   if rates[packets.start + r.value] >= 0.5}
                rows.append([tenant_id, source.label(tenant_id)[0],
                             f"{sum(rates[packets]):,.0f}", f"{8 * sum(rates[nbytes]) / 1e6:,.2f}",
                             f"{sum(rates[i] for i in drop_indexes):,.0f}",
                             " ".join(f"{k}={v:,.0f}" for k, v in sorted(drops_by_reason.items())) or "-",
                             f"{sum(totals[packets]):,}"])
            if redraw:
                print("\x1b[H\x1b[2J", end="")
            print(f"{ifname}: per-tenant rates over {scan.interval_seconds:.1f} s "
                  f"(top {args.top} by packets/s; Ctrl-C to stop)")
            print_table(["TENANT", "NAME", "PKT/S", "MBIT/S", "DROP/S", "DROPS BY REASON", "PACKETS"], rows)
            sys.stdout.flush()
    return 0


# --- lab and floods ------------------------------------------------------------

def _lab_state_dir():
    from pathlib import Path

    from agent.datapath.scope import state_root

    return Path(state_root()) / "labs"


def cmd_lab_up(args) -> int:
    from agent.lab import FloodLab

    lab = FloodLab(tag=args.tag) if args.tag else FloodLab()
    lab.up()
    try:
        if args.policy:
            lab.attach(args.policy)
        state = _lab_state_dir()
        state.mkdir(parents=True, exist_ok=True)
        (state / f"{lab.tag}.json").write_text(json.dumps({"tag": lab.tag, "namespaces": lab.ns,
                                                           "edge_ingress": lab.edge_ingress}))
    except Exception:
        lab.detach()
        lab.down()
        raise
    edge_mac = lab.mac_of("edge", lab.links["attacker"][0])
    print(f"lab {lab.tag} is up: " + ", ".join(f"{role} {ns}" for role, ns in lab.ns.items()))
    print(f"victim VIP {lab.vip} on the server; edgewarden on {', '.join(lab.edge_ingress)}"
          + ("" if args.policy else " (not attached: pass --policy)"))
    print(f"flood from the attacker: nsenter --net=/var/run/netns/{lab.ns['attacker']} edgewarden flood syn "
          f"--iface {lab.links['attacker'][1]} --target {lab.vip} --dst-mac {edge_mac}")
    print(f"remove it: edgewarden lab down {lab.tag}")
    return 0


def cmd_lab_down(args) -> int:
    from agent.lab import FloodLab

    path = _lab_state_dir() / f"{args.tag}.json"
    lab = FloodLab(tag=args.tag)
    lab.detach()
    lab.down()
    path.unlink(missing_ok=True)
    print(f"lab {args.tag} removed")
    return 0


def cmd_flood(args) -> int:
    from agent.lab.flood import flood

    if args.packets <= 0 or not 0 < args.seconds <= 600:
        raise UsageError("--packets must be positive and --seconds in (0, 600]: floods are always bounded")
    try:
        result = flood(args.type, args.iface, args.target, args.dst_mac, dport=args.dport, source=args.source,
                       packets=args.packets, seconds=args.seconds, threads=args.threads)
    except ValueError as err:      # a bad address or prefix, mixed families, an IPv6 fragment flood
        raise UsageError(str(err)) from None
    doc = {"type": result.kind, "packets": result.packets, "seconds": round(result.seconds, 3),
           "offered_pps": round(result.pps), "threads": result.threads}
    return emit(args, doc, lambda _: print(
        f"{result.kind}: {result.packets:,} packets in {result.seconds:.2f} s = {result.pps:,.0f} packets/s "
        f"offered ({result.threads} threads)"))


def cmd_replay(args) -> int:
    from agent.lab.replay import replay

    result = replay(args.pcap, args.iface, args.target, args.dst_mac, pps=args.pps, victim=args.victim)

    def human(_) -> None:
        print(f"{result.capture}: {result.sent:,} of {result.frames:,} frames sent in {result.seconds:.2f} s "
              f"({result.pps:,.0f} packets/s); {result.rewritten:,} pointed at {args.target}; "
              f"{result.skipped:,} skipped as larger than the link's MTU")

    return emit(args, result.as_dict(), human)


# --- classify ----------------------------------------------------------------

def cmd_classify(args) -> int:
    from agent.classify import classify_capture

    policy = load_policy(args.policy)
    result = classify_capture(args.pcap, policy)

    def human(_) -> None:
        print(f"{result['capture']}: {result['packets']} packets, {result['bytes']} bytes, "
              f"policy revision {result['policy_revision']}")
        print("actions: " + ", ".join(f"{k} {v}" for k, v in result["actions"].items() if v))
        print_table(["REASON", "VERDICT", "PACKETS", "BYTES"],
                     [[r, action_name(VerdictReason[r]), v["packets"], v["bytes"]]
                      for r, v in result["reasons"].items() if v["packets"]])
        print()
        classes = [c.name for c in TrafficClass]
        print_table(["TENANT", "NAME", "PACKETS", "PASSED", "DROPPED", *[c.upper() for c in classes]],
                     [[t["tenant_id"], t["name"] or "?", t["packets"], t["passed_packets"], t["dropped_packets"],
                       *[t["class_packets"][c] for c in classes]] for t in result["tenants"]])

    return emit(args, result, human)


# --- argument parsing --------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewarden", description="XDP per-tenant accounting and enforcement for CDN edges.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("attach", help="load and attach the datapath to an interface (adopts pinned maps)")
    p.add_argument("iface")
    p.add_argument("--mode", choices=[m.value for m in AttachMode], default=AttachMode.NATIVE.value,
                   help="native (default), generic, or auto (native, else generic)")
    p.add_argument("--policy", metavar="FILE", help="policy document (TOML) to apply before attaching")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("detach", help="detach the datapath and remove its pinned maps")
    p.add_argument("iface")
    p.add_argument("--keep-maps", action="store_true", help="keep maps pinned so a later attach adopts them")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("status", help="interfaces, attach mode, program id, policy revision")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    policy = sub.add_parser("policy", help="apply or check a policy document").add_subparsers(dest="policy_command", required=True)
    p = policy.add_parser("apply", help="apply a policy document to an attached interface (writes only the diff)")
    p.add_argument("file")
    p.add_argument("--iface", required=True)
    p.set_defaults(func=cmd_policy_apply)
    p = policy.add_parser("check", help="validate a policy document without applying it")
    p.add_argument("file")
    p.set_defaults(func=cmd_policy_check)

    block = sub.add_parser("block", help="source block lists (global or per tenant)").add_subparsers(dest="block_command", required=True)
    for verb, func, help_text in (("add", cmd_block_add, "block a source prefix"),
                                  ("del", cmd_block_del, "unblock a source prefix")):
        p = block.add_parser(verb, help=help_text)
        p.add_argument("cidr")
        p.add_argument("--tenant", type=int, help="per-tenant list (default: global)")
        p.add_argument("--iface", help="one interface (default: all managed)")
        p.set_defaults(func=func)
    p = block.add_parser("load", help="load a block-list file as a named list (swapped in atomically)")
    p.add_argument("file")
    p.add_argument("--list", default=DEFAULT_LIST, help=f"list name (default {DEFAULT_LIST!r})")
    p.add_argument("--tenant", type=int, help="per-tenant list (default: global)")
    p.add_argument("--strict", action="store_true", help="any bad line aborts and nothing is loaded")
    p.add_argument("--allow-empty", action="store_true", help="accept a list with no entry (clears it)")
    p.add_argument("--iface", help="one interface (default: all managed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_block_load)
    p = block.add_parser("unload", help="remove a named list")
    p.add_argument("--list", default=DEFAULT_LIST)
    p.add_argument("--tenant", type=int)
    p.add_argument("--iface")
    p.set_defaults(func=cmd_block_unload)
    from controller.distribution.cli import add_emergency_command
    add_emergency_command(block)   # through the controller, never this node's maps
    p = block.add_parser("diff", help="prefixes added and removed between two block-list files")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--limit", type=int, default=50, help="prefixes shown per side (text output)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_block_diff)
    p = block.add_parser("lists", help="named lists loaded on each interface")
    p.add_argument("--iface")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_block_lists)
    p = block.add_parser("list", help="list blocked prefixes in the live maps")
    p.add_argument("--tenant", type=int)
    p.add_argument("--iface")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_block_list)

    for verb, state in (("suspend", TenantState.SUSPENDED), ("resume", TenantState.ACTIVE)):
        p = sub.add_parser(verb, help=f"{verb} a tenant: {'drop' if state is TenantState.SUSPENDED else 'pass again'} all its traffic")
        p.add_argument("tenant", type=int)
        p.add_argument("--iface")
        p.set_defaults(func=lambda args, state=state: _set_state(args, state))

    p = sub.add_parser("stats", help="per-tenant packet and byte counters by class and verdict reason")
    p.add_argument("--tenant", type=int)
    p.add_argument("--iface")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wide", action="store_true", help="a column for every verdict reason, and bytes")
    p.add_argument("--watch", action="store_true", help="live per-tenant rates, refreshed in place")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (--watch)")
    p.add_argument("--top", type=int, default=20, help="tenants shown, busiest first (--watch)")
    p.add_argument("--count", type=int, help="stop after this many refreshes (--watch)")
    p.set_defaults(func=cmd_stats)

    lab = sub.add_parser("lab", help="a throwaway attacker/client/edge/server topology in namespaces"
                         ).add_subparsers(dest="lab_command", required=True)
    p = lab.add_parser("up", help="create the lab (and attach edgewarden with --policy)")
    p.add_argument("--policy", metavar="FILE")
    p.add_argument("--tag", help="name suffix (default: random)")
    p.set_defaults(func=cmd_lab_up)
    p = lab.add_parser("down", help="remove a lab and everything it created")
    p.add_argument("tag")
    p.set_defaults(func=cmd_lab_down)

    from agent.lab.flood import FLOOD_TYPES
    p = sub.add_parser("flood", help="send a bounded attack flood with XDP live frames (from the lab's attacker)")
    p.add_argument("type", choices=sorted(FLOOD_TYPES),
                   help="; ".join(f"{name}: {kind.description}" for name, kind in sorted(FLOOD_TYPES.items())))
    p.add_argument("--iface", required=True, help="the attacker's interface (run inside its namespace)")
    p.add_argument("--target", required=True, help="victim IPv4 address")
    p.add_argument("--dst-mac", required=True, help="MAC of the next hop (the edge's interface)")
    p.add_argument("--dport", type=int, default=80)
    p.add_argument("--source", default=None,
                   help="prefix of the spoofed sources (default 203.0.113.128/25, or 2001:db8:f00d::/48 for an IPv6 target)")
    p.add_argument("--packets", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flood)

    p = sub.add_parser("replay", help="replay a capture into the lab (run inside the attacker namespace)")
    p.add_argument("pcap")
    p.add_argument("--iface", required=True, help="the attacker's interface")
    p.add_argument("--target", required=True, help="the lab's victim address; the capture's victim is rewritten to it")
    p.add_argument("--dst-mac", required=True, help="MAC of the next hop (the edge's interface)")
    p.add_argument("--victim", help="the capture's victim address (default: its most common IPv4 destination)")
    p.add_argument("--pps", type=int, help="packets per second (default: top speed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("classify", help="run a pcap/pcapng through the real XDP program under a policy (nothing sent)")
    p.add_argument("pcap")
    p.add_argument("--policy", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)
    from controller.cli import add_commands as add_controller_commands   # controller, tenant, lists, revision, audit, token
    add_controller_commands(sub)
    from agent.daemon.cli import add_commands as add_daemon_commands   # agent, evidence
    add_daemon_commands(sub)
    from agent.dpdk.cli import add_commands as add_dpdk_commands
    add_dpdk_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from agent.daemon.cli import route_through_daemon
        routed = route_through_daemon(args)     # while the agent runs, it is the one writer of the maps
        if routed is not None:
            return routed
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (PolicyError, UsageError, BlockListError, changes.ChangeError) as err:
        print(f"edgewarden: {err}", file=sys.stderr)
        return 2
    except (InterfaceError, BpfError, CaptureError, OSError, ValueError) as err:
        print(f"edgewarden: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
