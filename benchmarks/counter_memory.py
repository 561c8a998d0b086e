#!/usr/bin/env python3
"""Kernel memory of the counter-slot maps for a 10-tenant, a 1,000-tenant
and a maximal policy, from the sizes the loader chooses: each policy is
attached (generic XDP, on a veth in a namespace of this script's own, no
traffic) and its per-CPU slot maps' max_entries read back; the memory for
128 possible CPUs follows from them by the kernel's formula (checked here
against the kernel's memlock figure for this machine's possible CPUs).
Also times a growth (the 10-tenant interface given the 1,000-tenant
policy: a reload that carries the counts over). --write-results replaces
the "Counter memory" section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/counter_memory.py [--write-results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from agent.datapath import abi  # noqa: E402
from agent.datapath.scope import forget_namespace  # noqa: E402
from agent.datapath.slot_maps import SLOT_MAPS, bytes_per_slot  # noqa: E402
from agent.datapath.syscalls import possible_cpus  # noqa: E402
from results_file import machine_facts, publish  # noqa: E402

SECTION_TITLE = "## Counter memory (issue 14)"
SERVER_CPUS = 128
POLICIES = {"10 tenants": 10, "1,000 tenants": 1000, f"maximum ({abi.MAX_TENANTS - 1:,} tenants)": abi.MAX_TENANTS - 1}

# Runs inside the namespace: attach each policy fresh, report the slot maps' sizes.
INSIDE = """
import json, sys, time
from agent.datapath import apply_policy, attachment
from agent.datapath.program import open_pinned_maps, close_maps
from agent.datapath.scope import pin_dir_for
from agent.datapath.slot_maps import SLOT_MAPS
from agent.policy import policy_from_document

ifname, sizes = sys.argv[1], json.loads(sys.argv[2])

def policy(revision, tenants):
    return policy_from_document({"revision": revision, "tenants": [
        {"id": i, "name": f"t{i}", "vips": [f"2001:db8::{i:x}"]} for i in range(1, tenants + 1)]}, "bench")

def sizes_now():
    maps = open_pinned_maps(pin_dir_for(ifname), tuple(SLOT_MAPS))
    try:
        return {name: m.max_entries for name, m in maps.items()}, {name: memlock(m.fd) for name, m in maps.items()}
    finally:
        close_maps(maps)

def memlock(fd):
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("memlock:"):
            return int(line.split()[1])

out = {}
for tenants in sizes:
    attachment.attach(ifname, attachment.AttachMode.GENERIC, policy(1, tenants))
    out[tenants] = sizes_now()
    attachment.detach(ifname)
attachment.attach(ifname, attachment.AttachMode.GENERIC, policy(1, 10))
t0 = time.perf_counter()
apply_policy(ifname, policy(2, 1000))
grow_seconds = time.perf_counter() - t0
grown = sizes_now()[0]
attachment.detach(ifname)
attachment.attach(ifname, attachment.AttachMode.GENERIC, policy(1, 1000))
t0 = time.perf_counter()
apply_policy(ifname, policy(2, 1000))
same_seconds = time.perf_counter() - t0
attachment.detach(ifname)
print(json.dumps({"sizes": out, "grow_seconds": grow_seconds, "grown": grown, "reapply_seconds": same_seconds}))
"""


def measure() -> dict:
    tag = uuid.uuid4().hex[:6]
    ns, ifname = f"ewmem-{tag}", f"ewm{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", f"ewp{tag}"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)
        done = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-c", INSIDE, ifname,
                               json.dumps(list(POLICIES.values()))], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"measuring inside {ns} failed:\n{done.stderr}")
        return json.loads(done.stdout)
    finally:
        forget_namespace(ns)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def scan_bytes(slots: int) -> int:
    """What reading `slots` counter slots copies from the kernel at SERVER_CPUS possible CPUs."""
    return slots * SERVER_CPUS * abi.COUNTER_FIELDS * 8


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    result = measure()
    here = possible_cpus()
    per_slot_server, per_slot_here = bytes_per_slot(SERVER_CPUS), bytes_per_slot(here)
    rows = []
    for label, tenants in POLICIES.items():
        entries, memlock = result["sizes"][str(tenants)]
        slots = entries["ew_counters"]
        assert all(entries[name] == slots * per for name, per in SLOT_MAPS.items()), entries
        # The formula against the kernel's own charge on this machine (a fixed header per map aside).
        header = sum(memlock.values()) - slots * per_slot_here
        assert 0 <= header < 4096 * len(SLOT_MAPS), (memlock, slots, per_slot_here)
        scan = scan_bytes(tenants + 1)
        rows.append(f"| {label} | {slots:,} | {mb(slots * per_slot_server)} | "
                    f"{mb(abi.MAX_TENANTS * per_slot_server)} | {mb(scan)} |")
    lines = [SECTION_TITLE, ""]
    lines += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines += [
        f"- **Formula:** slots x (8 + 128 x 352) for `ew_counters` + slots x 4 x (8 + 128 x 32) for "
        f"`ew_bucket_shares` + slots x (8 + 128 x 16) for `ew_sample_budget` = slots x {per_slot_server:,} B at "
        f"{SERVER_CPUS} possible CPUs (a value per possible CPU, rounded to 8 B, and a pointer per entry, as the "
        f"kernel charges a per-CPU array; checked against the kernel's memlock of the loaded maps on this "
        f"machine's {here} possible CPUs). Slots: the policy's highest slot + 1, plus a quarter, rounded up to "
        f"64, at most {abi.MAX_TENANTS:,} (`agent/datapath/slot_maps.py`); the sizes below are read back from "
        f"the pinned maps after attaching each policy.",
        "",
        "| policy | slots the loader chose | per-CPU slot maps at 128 CPUs | before (16,384 slots always) | "
        "one counter scan copies (slots in use) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"- **Growth:** the 10-tenant interface ({result['sizes']['10'][0]['ew_counters']} slots) given the "
        f"1,000-tenant policy grew to {result['grown']['ew_counters']:,} slots and applied it in "
        f"{result['grow_seconds'] * 1000:.0f} ms (a reload: program loaded with bigger maps, counts copied, "
        f"attached, pins renamed); the same policy applied again without growth, "
        f"{result['reapply_seconds'] * 1000:.0f} ms.",
        f"- **Scans:** a scan copies the slots in use, 0 up to the highest held, in one batched read (a lookup "
        f"per slot when under one in 8 of those is held). Before, it copied all 16,384 slots once more than "
        f"2,047 tenants were held (fewer: a lookup per slot): at 5,000 tenants {mb(scan_bytes(abi.MAX_TENANTS))} "
        f"then, {mb(scan_bytes(5001))} now, at {SERVER_CPUS} CPUs.",
        "- Not per CPU, so not in the table: `ew_tenants`, `ew_flood_policies` and `ew_buckets` keep the tenant "
        "maximum (16,384 slots, a few MB in all, the same on any server).",
        "",
        "_Generated by `benchmarks/counter_memory.py`._",
    ]
    publish(SECTION_TITLE, "\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
