"""The agent config's choice of engine: `engine = "xdp"` (default, the
[[interfaces]]) or `engine = "dpdk"` with a [dpdk] table, either inline
(the [eal], [engine] and [[ports]] tables of a dpdk.toml, as [dpdk.eal],
[dpdk.engine], [[dpdk.ports]]) or `config = "dpdk.toml"`. Kept apart from
config.py so the daemon's own keys and the engine's evolve separately."""

from __future__ import annotations

from pathlib import Path

ENGINES = ("xdp", "dpdk")


def engine_section(doc: dict, base: Path, errs) -> tuple[str, object | None]:
    """(engine name, DpdkConfig or None); problems go into `errs` (config._Errors)."""
    engine = doc.get("engine", "xdp")
    if engine not in ENGINES:
        errs.add("engine", f"must be one of {', '.join(ENGINES)}, not {engine!r}")
        return "xdp", None
    table = doc.get("dpdk")
    if engine == "xdp":
        if table is not None:
            errs.add("dpdk", 'is only used with engine = "dpdk" (the XDP engine runs on [[interfaces]])')
        return engine, None
    if doc.get("interfaces"):
        errs.add("interfaces", 'with engine = "dpdk" the ports are in [dpdk] ([[dpdk.ports]] or its config file); '
                 "remove [[interfaces]] (one engine per agent)")
    if not isinstance(table, dict):
        errs.add("dpdk", 'engine = "dpdk" needs a [dpdk] table: config = "dpdk.toml", or [dpdk.eal] and [[dpdk.ports]]')
        return engine, None
    from agent.dpdk.config import DpdkConfigError, config_from_document, load_config
    try:
        if "config" in table:
            if set(table) != {"config"}:
                raise DpdkConfigError("[dpdk]: config = FILE names the whole engine config; "
                                      f"drop the other keys ({', '.join(sorted(set(table) - {'config'}))}) or the file")
            path = Path(table["config"]) if isinstance(table["config"], str) else None
            if path is None:
                raise DpdkConfigError("[dpdk]: config must be a path to a dpdk.toml")
            # The file's own policy and control_socket are not used: the daemon's policy_file and socket are.
            dpdk = load_config(path if path.is_absolute() else base / path)
        else:
            for key in ("policy", "control_socket"):
                if key in table:
                    raise DpdkConfigError(f"[dpdk]: {key} is the daemon's (policy_file, control_socket), not the engine's")
            dpdk = config_from_document(table, "[dpdk]", base)
    except DpdkConfigError as err:
        errs.add("dpdk", str(err))
        return engine, None
    if not any(port.judge for port in dpdk.ports):
        errs.add("dpdk", "needs at least one [[dpdk.ports]] with judge = true (the port whose traffic is enforced)")
    return engine, dpdk
