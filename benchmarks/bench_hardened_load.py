#!/usr/bin/env python3
"""The pass path as the agent's service loads it: without CAP_PERFMON.

bench_datapath.py loads every program as root. The agent's systemd unit
(configs/edgewarden-agent.service) holds CAP_BPF CAP_NET_ADMIN
CAP_SYS_RESOURCE only, and then the verifier hardens the program against
Spectre: a speculation barrier (`nospec`, an lfence on x86) after every
stack store into a slot it does not know to hold plain data, and after some
branches. This benchmark loads the same objects both ways, the hardened
load by a child under setpriv with the service's capabilities (as
tests/test_capabilities.py does), takes an fd to each program and times
them in one run on the row-4 packet of bench_datapath.py (tenant pass with
accounting, source /24 in no list), beside `parse_lookup_pass` loaded both
ways. It also counts the barriers in each program (`bpftool prog dump
xlated`).

    .venv/bin/python benchmarks/bench_hardened_load.py [--object OTHER.bpf.o ...]

Needs root, setpriv and bpftool. Nothing is attached; the pins it makes are
removed on exit. Performance is never asserted: it prints a table.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
import bench_datapath as bd  # noqa: E402
from agent.datapath.private import PrivateDatapath  # noqa: E402
from agent.datapath.program import object_path  # noqa: E402
from agent.datapath.syscalls import obj_get, prog_fd_by_id, prog_info, test_run  # noqa: E402
from agent.policy import policy_from_document  # noqa: E402
from native.bpf_build import compile_bpf  # noqa: E402

# The service's bounding set (capability numbers from linux/capability.h).
SERVICE_CAPS = {"net_admin": 12, "sys_resource": 24, "bpf": 39}
CHILD = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}, {benchmarks!r}]
import bench_datapath as bd
from agent.datapath.private import PrivateDatapath
from agent.datapath.syscalls import prog_info
from agent.policy import policy_from_document
dp = PrivateDatapath(policy_from_document(bd.POLICY_DOCUMENT, "bench policy"), object_file={obj!r})
print(prog_info(dp.program.prog_fd).id, flush=True)
sys.stdin.read()     # until the parent holds its own fd
"""


def granted() -> list[str]:
    """The service's capabilities this process can give (a container may lack CAP_SYS_RESOURCE)."""
    with open("/proc/self/status") as status:
        bounding = int(next(line for line in status if line.startswith("CapBnd:")).split()[1], 16)
    return [name for name, bit in SERVICE_CAPS.items() if bounding >> bit & 1]


def hardened(argv: list[str]) -> list[str]:
    caps = ",".join(f"+{name}" for name in granted())
    return ["setpriv", f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            "--", *argv]


def hardened_edgewarden(obj: Path) -> int:
    """An fd to the datapath loaded by a child with the service's capabilities."""
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), benchmarks=str(REPO / "benchmarks"), obj=str(obj))
    child = subprocess.Popen(hardened([sys.executable, "-c", code]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        line = child.stdout.readline()
        if not line:
            raise SystemExit(f"the hardened load of {obj} failed (see above)")
        return prog_fd_by_id(int(line))
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def hardened_plp(stack: ExitStack, workdir: Path, token: str) -> int:
    obj = compile_bpf(bd.BASELINE_SOURCES / "parse_lookup_pass.bpf.c", workdir / "plp.bpf.o")
    pin, maps = bd.BPFFS / f"ewbench-{token}-plp-hardened", bd.BPFFS / f"ewbench-{token}-plp-hardened-maps"
    stack.callback(shutil.rmtree, maps, True)
    stack.callback(bd._unlink_quietly, pin)
    subprocess.run(hardened(["bpftool", "prog", "load", str(obj), str(pin), "pinmaps", str(maps)]), check=True)
    fd = obj_get(str(pin))
    stack.callback(os.close, fd)
    # Same destinations as the root-loaded copy (bench_datapath.fill_destinations).
    vips = [v if isinstance(v, str) else v["address"] for t in bd.POLICY_DOCUMENT["tenants"] for v in t["vips"]]
    for slot, vip in enumerate(dict.fromkeys(v for v in vips if ":" not in v), start=1):
        key = [str(b) for b in ipaddress.IPv4Address(vip).packed]
        subprocess.run(["bpftool", "map", "update", "pinned", str(maps / "plp_destinations"), "key", *key,
                        "value", *[str(b) for b in slot.to_bytes(4, "little")]], check=True)
    return fd


def barriers(fd: int) -> int:
    out = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_info(fd).id)], capture_output=True,
                         text=True, check=True).stdout
    return out.count(") nospec")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", type=Path, action="append", default=[],
                        help="another build of the datapath (default: the installed one)")
    parser.add_argument("--repeat", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    objects = args.object or [object_path(conntrack=True)]
    bd.ensure_bpffs()
    token = secrets.token_hex(4)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ewbench-")))
        subjects = [("parse_lookup_pass", "root", bd.load_baseline(stack, "parse_lookup_pass", workdir, token),
                     bd.TENANT_FRAME)]
        bd.fill_destinations(token)
        subjects.append(("parse_lookup_pass", "hardened", hardened_plp(stack, workdir, token), bd.TENANT_FRAME))
        policy = policy_from_document(bd.POLICY_DOCUMENT, "bench policy")
        for obj in objects:
            dp = stack.enter_context(PrivateDatapath(policy, object_file=obj))
            subjects.append((str(obj), "root", dp.program.prog_fd, bd.UNLISTED_FRAME))
            fd = hardened_edgewarden(obj)
            stack.callback(os.close, fd)
            subjects.append((str(obj), "hardened", fd, bd.UNLISTED_FRAME))
        for name, form, fd, frame in subjects:
            if test_run(fd, frame).retval != bd.XDP_PASS:
                raise SystemExit(f"{name} ({form}) does not pass the packet")
        samples: list[list[int]] = [[] for _ in subjects]
        for _ in range(args.rounds):
            for i, (_, _, fd, frame) in enumerate(subjects):
                samples[i].append(test_run(fd, frame, args.repeat).duration_ns)
        medians = [statistics.median(s) for s in samples]
        base = {form: medians[i] for i, (name, form, _, _) in enumerate(subjects) if name == "parse_lookup_pass"}
        print(f"Row-4 packet, BPF_PROG_TEST_RUN repeat {args.repeat:,}, {args.rounds} interleaved rounds; "
              f"hardened = loaded with {' '.join('CAP_' + c.upper() for c in granted())} only.\n")
        print("| Program | load | ns/packet (median) | min | x parse_lookup_pass (same load) | nospec in program |")
        print("|---|---|---:|---:|---:|---:|")
        for (name, form, fd, _), median, s in zip(subjects, medians, samples):
            print(f"| {name} | {form} | {median:.0f} | {min(s)} | {median / base[form]:.2f} | {barriers(fd)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
