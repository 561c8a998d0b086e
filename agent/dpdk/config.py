"""The DPDK engine's config file (TOML, see configs/dpdk.toml): EAL
arguments, lcores and memory, the ports and where each passes its frames,
the worker's sizes, and the policy document to enforce. Errors name the
file and the key."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# DPDK 22.11 refuses --in-memory with --no-huge (which implies legacy memory);
# --no-shconf gives the same "no runtime files" with anonymous memory, and
# without the telemetry socket the runtime directory is left empty, so the
# engine removes it when it ends.
DEFAULT_EAL_ARGS = ("--no-huge", "--no-shconf", "--no-pci", "--no-telemetry")


class DpdkConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PortConfig:
    name: str                   # DPDK device name: "net_pcap0", "net_af_packet0", a PCI address
    vdev: str | None = None     # virtual device arguments, given to the EAL as --vdev
    pass_to: str | None = None  # device that frames passed here are sent out of (default: this one)
    judge: bool = True          # False: forwarded as they are (e.g. the servers' replies), not counted


@dataclass(frozen=True)
class DpdkConfig:
    source: str
    lcores: str = "0,1"                     # the first is the main lcore (control); the others poll
    memory_mb: int | None = 256             # -m; None on a server with hugepages
    eal_args: tuple[str, ...] = DEFAULT_EAL_ARGS
    ports: tuple[PortConfig, ...] = ()
    policy: Path | None = None
    tenant_capacity: int = 1024             # counter slots, as the XDP path's ew_counters entries
    mbufs: int = 8191
    burst: int = 32
    source_buckets: int = 65536             # per-source bucket cache entries per lcore
    control_socket: Path | None = None
    extra: dict = field(default_factory=dict)

    def eal_argv(self) -> list[str]:
        # A file prefix per process, so engines in parallel never share EAL runtime state.
        # "0,1" is an lcore list (-l); "0@0,1@1,2@1" maps lcores to CPUs (--lcores).
        lcores = ["--lcores", self.lcores] if "@" in self.lcores else ["-l", self.lcores]
        argv = ["edgewarden-dpdk", *lcores, f"--file-prefix=edgewarden{os.getpid()}", *self.eal_args]
        if self.memory_mb is not None:
            argv += ["-m", str(self.memory_mb)]
        for port in self.ports:
            if port.vdev:
                argv += ["--vdev", port.vdev]
        return argv


_TOP_KEYS = {"eal", "engine", "ports", "policy", "control_socket"}
_EAL_KEYS = {"lcores", "memory_mb", "args"}
_ENGINE_KEYS = {"tenant_capacity", "mbufs", "burst", "source_buckets"}
_PORT_KEYS = {"name", "vdev", "pass_to", "judge"}


def _check(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DpdkConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")


def _positive(table: dict, key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise DpdkConfigError(f"{where}: {key} must be a positive integer, not {value!r}")
    return value


def config_from_document(doc: dict, source: str, base: Path | None = None) -> DpdkConfig:
    _check(doc, _TOP_KEYS, source)
    eal = doc.get("eal", {})
    engine = doc.get("engine", {})
    _check(eal, _EAL_KEYS, f"{source} [eal]")
    _check(engine, _ENGINE_KEYS, f"{source} [engine]")
    args = eal.get("args", list(DEFAULT_EAL_ARGS))
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DpdkConfigError(f"{source} [eal]: args must be a list of strings")
    memory = eal.get("memory_mb", 256)
    if memory is not None and (not isinstance(memory, int) or memory <= 0):
        raise DpdkConfigError(f"{source} [eal]: memory_mb must be a positive integer (megabytes)")
    ports = []
    for i, table in enumerate(doc.get("ports", [])):
        where = f"{source} [[ports]] #{i + 1}"
        _check(table, _PORT_KEYS, where)
        if not isinstance(table.get("name"), str) or not table["name"]:
            raise DpdkConfigError(f"{where}: name (the DPDK device name) is required")
        ports.append(PortConfig(table["name"], table.get("vdev"), table.get("pass_to"), bool(table.get("judge", True))))
    names = {p.name for p in ports}
    for port in ports:
        if port.pass_to is not None and port.pass_to not in names:
            raise DpdkConfigError(f"{source}: port {port.name} passes to {port.pass_to}, which is not a [[ports]] name")

    def path(key: str) -> Path | None:
        if doc.get(key) is None:
            return None
        p = Path(doc[key])
        return p if p.is_absolute() or base is None else base / p

    return DpdkConfig(
        source=source, lcores=str(eal.get("lcores", "0,1")), memory_mb=memory, eal_args=tuple(args),
        ports=tuple(ports), policy=path("policy"),
        tenant_capacity=_positive(engine, "tenant_capacity", 1024, f"{source} [engine]"),
        mbufs=_positive(engine, "mbufs", 8191, f"{source} [engine]"),
        burst=_positive(engine, "burst", 32, f"{source} [engine]"),
        source_buckets=_positive(engine, "source_buckets", 65536, f"{source} [engine]"),
        control_socket=path("control_socket"),
    )


def load_config(path: str | Path) -> DpdkConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DpdkConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise DpdkConfigError(f"{path}: not valid TOML: {error}") from None
    return config_from_document(doc, str(path), path.parent)
