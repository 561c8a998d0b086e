#!/usr/bin/env python3
"""Counter aggregation for 100,000 tenants on every CPU, in one run:

  edgewarden   CounterMonitor.scan(): one batched read of the per-CPU
               counter array, sums and rates in Cython;
  baseline     a plain Python loop that looks each tenant's slot up one by
               one (bpf_map_lookup_elem) and sums its per-CPU copies.

Both read the same live maps of a private datapath (nothing attached) and
must produce the same totals. Prints the median of several scans and the
ratio; --write-results replaces the "Counter aggregation" section of
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_counters.py [--tenants N] [--write-results]
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import machine_facts, publish  # noqa: E402

from agent.datapath import abi  # noqa: E402
from agent.datapath.apply import apply_policy_to_maps  # noqa: E402
from agent.datapath.counters import CounterMonitor, tenant_slots  # noqa: E402
from agent.datapath.program import LoadedProgram  # noqa: E402
from agent.policy import Policy, Tenant  # noqa: E402

SECTION_TITLE = "## Counter aggregation"
AGENT_SCAN_INTERVAL_S = 1.0   # the agent's scan interval the goal refers to


def plain_python_scan(maps) -> dict[int, list[int]]:
    """The baseline: one lookup per tenant, per-CPU copies summed in Python."""
    counters = maps["ew_counters"]
    fields, ncpus = abi.COUNTER_FIELDS, counters.ncpus
    totals = {}
    for tenant_id, slot in tenant_slots(maps).items():
        raw = counters.lookup(struct.pack("=I", slot))
        values = struct.unpack(f"={fields * ncpus}Q", raw)
        totals[tenant_id] = [sum(values[c * fields + f] for c in range(ncpus)) % 2**64 for f in range(fields)]
    return totals


def fill_counters(maps, rng: random.Random) -> None:
    counters = maps["ew_counters"]
    per_cpu = abi.COUNTER_FIELDS * counters.ncpus
    entries = {struct.pack("=I", slot): struct.pack(f"={per_cpu}Q", *(rng.getrandbits(40) for _ in range(per_cpu)))
               for slot in range(counters.max_entries)}
    counters.update_many(entries)


def timed(fn, rounds: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)

    capacity = args.tenants + 1
    policy = Policy(revision=1, tenants=tuple(Tenant(i, f"t{i}") for i in range(1, args.tenants + 1)))
    with LoadedProgram(tenant_capacity=capacity) as program:
        setup = time.perf_counter()
        apply_policy_to_maps(program.maps, policy)
        fill_counters(program.maps, random.Random(1))
        setup = time.perf_counter() - setup
        monitor = CounterMonitor(program.maps)
        native_s, scan = timed(monitor.scan, args.rounds)
        baseline_s, baseline = timed(lambda: plain_python_scan(program.maps), max(1, args.rounds // 2))
        native_totals = {t: scan.row(i)[0] for i, t in enumerate(scan.tenant_ids) if t is not None}
        if native_totals != baseline:
            print("edgewarden and the baseline disagree on the totals", file=sys.stderr)
            return 1
        top_s, top = timed(lambda: scan.top(10, by="drops", use_rates=False), args.rounds)
        ncpus = program.maps["ew_counters"].ncpus

    lines = [SECTION_TITLE, ""]
    lines += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines += [
        f"- **Setup:** {args.tenants:,} tenants in a private datapath, per-CPU counters on {ncpus} CPUs "
        f"({abi.COUNTER_FIELDS} u64 each) filled with random values ({setup:.1f} s); median of {args.rounds} scans.",
        "",
        "| what | time per full scan | tenants/s |",
        "|---|---:|---:|",
        f"| edgewarden: batched read + Cython sums and rates | {native_s * 1e3:.1f} ms | {args.tenants / native_s:,.0f} |",
        f"| baseline: plain Python loop, one lookup per tenant | {baseline_s * 1e3:.1f} ms | {args.tenants / baseline_s:,.0f} |",
        f"| top 10 tenants by drops, from a scan | {top_s * 1e3:.1f} ms | |",
        "",
        f"- **Speed-up over the baseline:** {baseline_s / native_s:.1f}x (goal: at least 20x)",
        f"- **One scan vs the agent's {AGENT_SCAN_INTERVAL_S:.0f} s scan interval:** "
        f"{native_s / AGENT_SCAN_INTERVAL_S * 100:.1f}% of it (goal: well under)",
        f"- Totals of both paths compared for all {args.tenants:,} tenants: identical.",
        "",
        f"_Generated by `benchmarks/bench_counters.py`._",
    ]
    section = "\n".join(lines)
    publish(SECTION_TITLE, section, args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
