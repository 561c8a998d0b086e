#!/usr/bin/env python3
"""Loading 1,000,000 IPv4 prefixes, in one run:

  edgewarden   parse + compile (C++) + build the block table + swap it into
               the datapath atomically (map-in-map), through the same code
               `edgewarden block load` runs, into a private datapath;
  nftables     the same prefixes (already merged, which only helps it) as an
               interval set, loaded with `nft -f` in a throwaway namespace.

Also: a 100-entry delta (50 added, 50 removed) on top of the 1M list, and
the resident memory of this process and the kernel memory of the maps with
the list loaded. The list mixes generated prefixes (mostly /32 and /24, as
reputation lists are) with real ones: the source addresses of the attack
captures in tests/data/captures. --write-results replaces the "Block lists"
section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_blocklist.py [--prefixes N] [--write-results]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import machine_facts, publish  # noqa: E402

from agent.blocklist import read_blocklist  # noqa: E402
from agent.datapath.apply import apply_policy_to_maps  # noqa: E402
from agent.datapath.private import PrivateDatapath  # noqa: E402
from agent.pcap import read_frames  # noqa: E402
from agent.policy import Policy  # noqa: E402
from agent.datapath.compile import GLOBAL_TABLES  # noqa: E402

SECTION_TITLE = "## Block lists"
CAPTURES = REPO / "tests" / "data" / "captures"


def capture_sources() -> set[int]:
    """Real attack sources: IPv4 source addresses of every capture."""
    sources = set()
    for capture in sorted(CAPTURES.glob("*.pcap*")):
        for frame in read_frames(capture):
            data = frame.data
            if len(data) >= 34 and data[12:14] == b"\x08\x00":
                sources.add(int.from_bytes(data[26:30], "big"))
    return sources


def generate_list(total: int, rng: random.Random) -> list[str]:
    real = capture_sources()
    lines = [f"{ipaddress.IPv4Address(a)}  # capture source" for a in sorted(real)]
    seen = set(real)
    generated = total - len(lines)
    plan = [(32, int(generated * 0.78)), (24, int(generated * 0.19)), (20, int(generated * 0.01))]
    plan.append((28, generated - sum(n for _, n in plan)))
    for length, count in plan:
        made = 0
        while made < count:
            addr = rng.getrandbits(32) & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
            if (addr, length) not in seen:
                seen.add((addr, length))
                lines.append(f"{ipaddress.IPv4Address(addr)}/{length}")
                made += 1
    rng.shuffle(lines)
    return lines


# Run in a fresh process so the figure is the agent's, not this generator's.
AGENT_MEMORY_PROBE = """
import os, sys
from pathlib import Path
from agent.blocklist import read_blocklist
from agent.datapath import abi
from agent.datapath.apply import apply_policy_to_maps
from agent.datapath.blocktables import SwappableTable
from agent.datapath.private import PrivateDatapath
from agent.policy import Policy
from agent.datapath.compile import GLOBAL_TABLES, BLOCK_TABLES

def memlock(fd):
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0

with PrivateDatapath() as datapath:
    loaded = read_blocklist(sys.argv[1])
    apply_policy_to_maps(datapath.program.maps, Policy(revision=1), {None: loaded.prefixes}, frozenset(GLOBAL_TABLES))
    del loaded
    # VmHWM, not ru_maxrss: the latter survives execve, so a child forked
    # from a big parent would report the parent's peak.
    status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
    rss, peak = (int(status[k].split()[0]) for k in ("VmRSS", "VmHWM"))
    kernel = 0
    for name, m in datapath.program.maps.items():
        table = m._table if name in abi.POLICY_ARRAYS else SwappableTable(m) if name in BLOCK_TABLES else None
        kernel += memlock((m.outer if name in abi.POLICY_ARRAYS else m).fd)
        if table is not None:               # a map-in-map: its one inner table too
            inner = table.inner()
            kernel += memlock(inner.fd)
            inner.close()
    print(rss * 1024, peak * 1024, kernel)
"""


def agent_memory(path: Path) -> tuple[int, int, int]:
    """(RSS after the load, peak RSS, kernel memory of every map incl. inner tables) in bytes."""
    out = subprocess.run([sys.executable, "-c", AGENT_MEMORY_PROBE, str(path)], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def time_nft(prefixes, workdir: Path) -> float:
    ruleset = workdir / "ruleset.nft"
    with open(ruleset, "w") as out:
        out.write("table inet ewbench {\n  set blocked { type ipv4_addr; flags interval; elements = {\n")
        out.write(",\n".join(str(ipaddress.ip_network((raw, length))) for raw, length in prefixes.to_list()))
        out.write("\n  } }\n  chain input { type filter hook input priority 0; ip saddr @blocked drop; }\n}\n")
    netns = f"ewbench-nft-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(ruleset)], check=True, timeout=300)
        return time.perf_counter() - start
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def load_into(datapath: PrivateDatapath, path: Path) -> tuple[float, object, object]:
    start = time.perf_counter()
    loaded = read_blocklist(path)
    report = apply_policy_to_maps(datapath.program.maps, Policy(revision=1), {None: loaded.prefixes},
                                  frozenset(GLOBAL_TABLES))
    return time.perf_counter() - start, loaded, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)

    rng = random.Random(2026)
    with tempfile.TemporaryDirectory(prefix="ewbench-") as tmp:
        workdir = Path(tmp)
        lines = generate_list(args.prefixes, rng)
        v1 = workdir / "v1.txt"
        v1.write_text("# generated block list (FireHOL netset style)\n" + "\n".join(lines) + "\n")
        removed = set(rng.sample(range(len(lines)), 50))
        added = [f"{ipaddress.IPv4Address(rng.getrandbits(32))}" for _ in range(50)]
        v2 = workdir / "v2.txt"
        v2.write_text("\n".join([l for i, l in enumerate(lines) if i not in removed] + added) + "\n")

        loads, nft_times = [], []
        for _ in range(args.rounds):
            with PrivateDatapath() as datapath:
                seconds, loaded, report = load_into(datapath, v1)
                loads.append(seconds)
            nft_times.append(time_nft(loaded.prefixes, workdir))
        with PrivateDatapath() as datapath:
            load_into(datapath, v1)
            delta_s, _, delta_report = load_into(datapath, v2)

        rss, peak_rss, kernel = agent_memory(v1)

    load_s, nft_s = statistics.median(loads), statistics.median(nft_times)
    lines_out = [SECTION_TITLE, ""]
    lines_out += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines_out += [
        f"- **List:** {args.prefixes:,} IPv4 entries ({len(capture_sources()):,} real attack sources from the "
        f"captures, the rest generated: 78% /32, 19% /24, 1% /20, rest /28), {len(loaded.prefixes):,} prefixes "
        f"after merging; median of {args.rounds} rounds.",
        "",
        "| what | time |",
        "|---|---:|",
        f"| edgewarden: parse + compile + build table + atomic swap into the datapath | {load_s:.2f} s |",
        f"| nftables: `nft -f` of the merged prefixes into an interval set | {nft_s:.2f} s |",
        f"| edgewarden: 100-entry delta (50 added, 50 removed) on top of the 1M list | {delta_s:.2f} s |",
        "",
        f"- **nftables / edgewarden:** {nft_s / load_s:.1f}x (goal: at least 5x)",
        f"- **Delta path:** {delta_report.summary()}",
        f"- **Memory with the list loaded:** the agent process (a fresh one that loaded the list into a datapath) "
        f"holds {rss / 2**20:.0f} MiB resident after the load, {peak_rss / 2**20:.0f} MiB at its peak; the kernel "
        f"charges {kernel / 2**20:.0f} MiB for all the datapath's maps including the block tables (memlock).",
        "",
        "_Generated by `benchmarks/bench_blocklist.py`._",
    ]
    section = "\n".join(lines_out)
    publish(SECTION_TITLE, section, args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
