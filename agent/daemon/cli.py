"""The daemon's part of the `edgewarden` command: `agent` (run or check the
daemon), `evidence` (list, show, verify sealed evidence), and the routing
of the CLI's changing commands through a running daemon's control socket,
so the daemon stays the one writer of the maps."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from agent.daemon.config import DEFAULT_CONFIG, ConfigError, load_config


def add_commands(sub) -> None:
    p = sub.add_parser("agent", help="run the edge agent daemon (systemd Type=notify), or check its config")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"agent config (TOML, default {DEFAULT_CONFIG})")
    p.add_argument("--check", action="store_true", help="validate the config and the policy file, then exit")
    p.set_defaults(func=cmd_agent)

    evidence = sub.add_parser("evidence", help="sealed packet evidence: list, show, verify"
                              ).add_subparsers(dest="evidence_command", required=True)
    for verb, help_text in (("list", "sealed evidence files in a directory"),
                            ("show", "the manifest entry and pcapng comments of one file"),
                            ("verify", "check the manifest's hash chain and every file; names what is wrong")):
        q = evidence.add_parser(verb, help=help_text)
        q.add_argument("dir")
        if verb == "show":
            q.add_argument("file", help="file name (as listed)")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=cmd_evidence)


def cmd_agent(args) -> int:
    if args.check:
        from agent.policy import PolicyError, load_policy
        try:
            config = load_config(args.config)
            policy = load_policy(config.policy_file)
            if config.engine == "dpdk":
                from agent.daemon.dpdk_enforcer import refuse_unsupported
                refuse_unsupported(policy, str(config.policy_file))
        except (ConfigError, PolicyError) as err:
            print(f"edgewarden agent: {err}", file=sys.stderr)
            return 1
        if config.engine == "dpdk":
            ports = ", ".join(p.name + ("" if p.judge else " (unjudged)") for p in config.dpdk.ports)
            print(f"{args.config}: valid; DPDK engine on {ports} (lcores {config.dpdk.lcores}); policy "
                  f"{config.policy_file} revision {policy.revision}, {len(policy.tenants)} tenant(s)")
            return 0
        print(f"{args.config}: valid; {len(config.interfaces)} interface(s) "
              f"({', '.join(i.name + ' ' + i.attach_mode for i in config.interfaces)}); policy {config.policy_file} "
              f"revision {policy.revision}, {len(policy.tenants)} tenant(s)")
        return 0
    from agent.daemon.service import run_agent
    return run_agent(Path(args.config))


def cmd_evidence(args) -> int:
    from agent.evidence import inspect
    return inspect.main(args)


# --- routing the CLI's changes through a running daemon ------------------------

def _request_for(args) -> dict | None:
    command = getattr(args, "command", None)
    sub = getattr(args, "policy_command", None) or getattr(args, "block_command", None)
    if command == "policy" and sub == "apply":
        return {"command": "policy_apply", "document": Path(args.file).read_text(), "source": args.file}
    if command == "block" and sub in ("add", "del"):
        return {"command": f"block_{sub}", "cidr": args.cidr, "tenant": args.tenant}
    if command in ("suspend", "resume"):
        return {"command": command, "tenant": args.tenant}
    if command == "block" and sub == "unload":
        return {"command": "block_unload", "list": args.list, "tenant": args.tenant}
    if command == "block" and sub == "load":
        from agent.blocklist import read_blocklist
        loaded = read_blocklist(args.file, strict=args.strict, allow_empty=args.allow_empty)
        for bad in loaded.bad_lines[:20]:
            print(f"edgewarden: skipped {bad}", file=sys.stderr)
        return {"command": "block_load", "list": args.list, "tenant": args.tenant,
                "prefixes": base64.b64encode(loaded.prefixes.serialize()).decode()}
    return None


ROUTED = {("policy", "apply"), ("block", "add"), ("block", "del"), ("block", "load"), ("block", "unload"),
          ("suspend", None), ("resume", None)}


def route_through_daemon(args) -> int | None:
    """If a daemon is listening, send a changing command to it and return
    the exit code; None when no daemon runs (the CLI acts on the maps itself)."""
    from agent.daemon.control import ControlError, daemon_listening, default_socket_path, request
    key = (getattr(args, "command", None), getattr(args, "policy_command", None) or getattr(args, "block_command", None))
    if key not in ROUTED:
        return None
    path = default_socket_path()
    if not daemon_listening(path):
        return None
    message = _request_for(args)
    try:
        result = request(path, message)
    except ControlError as err:
        print(f"edgewarden: the agent refused: {err}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
        return 0
    if getattr(args, "iface", None):
        print(f"edgewarden: the agent applies changes on all its interfaces ({args.iface} included)", file=sys.stderr)
    if "revision" in result:
        state = "applied" if result.get("changed", True) else "no change"
        print(f"through the agent ({path}): revision {result['revision']}, {state}")
    else:
        print(f"through the agent ({path}): {result.get('list', message['command'])}")
    for ifname, summary in result.get("interfaces", {}).items():
        print(f"  {ifname}: {summary}")
    return 0


# --- reading what only a running daemon holds ------------------------------------

def daemon_engine_interfaces(pinned: list[str]) -> list[dict]:
    """For `edgewarden status`: the interfaces of a running daemon whose engine
    keeps no pins (engine = "dpdk"), as rows shaped like InterfaceStatus.as_dict();
    [] when no such daemon runs."""
    from agent.daemon.control import ControlError, daemon_listening, default_socket_path, request
    path = default_socket_path()
    if not daemon_listening(path):
        return []
    try:
        status = request(path, {"command": "status"}, timeout=30)
    except ControlError as err:
        print(f"edgewarden: the agent on {path} did not answer: {err}", file=sys.stderr)
        return []
    if status.get("engine", "xdp") == "xdp":
        return []           # its interfaces are pinned: the CLI reads them itself
    return [
        {"interface": name, "ifindex": None, "mode": state["mode"], "program_id": 0,
         "edgewarden": state["attached"], "policy_revision": status["revision"] if state["attached"] else None,
         "pin_dir": None, "engine": status["engine"], "agent": str(path), "error": state.get("error")}
        for name, state in status["interfaces"].items() if name not in pinned]


def daemon_counter_snapshots(pinned: list[str], interface: str | None = None) -> dict[str, dict]:
    """For `edgewarden stats`: agent.daemon.counter_snapshot documents of the
    running daemon's interfaces that have no pins here (the DPDK engine's
    counters live in the daemon's memory); {} when no daemon runs."""
    from agent.daemon.control import ControlError, daemon_listening, default_socket_path, request
    path = default_socket_path()
    if not daemon_listening(path):
        return {}
    try:
        return request(path, {"command": "counters", "skip": pinned, "interface": interface},
                       timeout=60)["interfaces"]
    except ControlError as err:
        print(f"edgewarden: the agent on {path} did not give its counters: {err}", file=sys.stderr)
        return {}
