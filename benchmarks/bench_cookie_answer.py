#!/usr/bin/env python3
"""The SYN-cookie answer's cost in ns, measured with BPF_PROG_TEST_RUN.

What the load test's `syn-cookies` scenario costs per SYN at the edge: a SYN
to a tenant in cookie mode, turned into the SYN-ACK that answers it
(XDP_TX), against a minimal XDP_DROP program and edgewarden's own SYN-rate
drop of the same SYN, in one run.

Unlike bench_datapath.py's rows, each test run here is one packet
(`repeat` 1): the program rewrites its input into the answer, and the
kernel repeats a test run on the rewritten frame, so a repeated run would
time the answer's own verdict instead. The kernel's duration of a run of one
includes reading the clock once, alike for every program; the figures are
the median over rounds of each round's median of `--calls` runs.

    .venv/bin/python benchmarks/bench_cookie_answer.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from results_file import machine_facts  # noqa: E402

from frames import tcp_ipv4_frame, tcp_ipv6_frame  # noqa: E402  (tests/frames.py)

from agent.datapath.private import PrivateDatapath  # noqa: E402
from agent.datapath.syscalls import test_run  # noqa: E402
from agent.policy import policy_from_document  # noqa: E402
from native.bpf_build import compile_bpf  # noqa: E402
from agent.datapath.bpf_object import BpfObject  # noqa: E402

XDP_DROP, XDP_TX = 1, 3
CLIENT = "192.0.2.10"
CLIENT_V6 = "2001:db8:c::2"
VIPS = {"cookies": ("203.0.113.70", "2001:db8:70::1"), "syn-rate": ("203.0.113.71", "2001:db8:71::1")}
DOCUMENT = {"revision": 1, "tenants": [
    {"id": 70, "name": "cookies", "vips": list(VIPS["cookies"]), "flood": {"syn_cookies": True}},
    {"id": 71, "name": "syn-rate", "vips": list(VIPS["syn-rate"]), "flood": {"syns_per_second": 1, "syn_burst": 1}},
]}
MSS = b"\x02\x04\x05\xb4"
# A Linux client's SYN options: MSS, SACK permitted, timestamps, NOP, window scale 7.
LINUX_OPTIONS = MSS + b"\x04\x02\x08\x0a" + bytes.fromhex("0001e2400000000001030307")

SYN_MSS = tcp_ipv4_frame(CLIENT, VIPS["cookies"][0], 40000, 80, "S", tcp_options=MSS, seq=1000)
ROWS = [
    # key, label, frame, expected action
    ("drop", "minimal `xdp_drop`, the flood's SYN", SYN_MSS, XDP_DROP),
    ("syn-rate", "edgewarden, `drop_syn_rate` of the same SYN",
     tcp_ipv4_frame(CLIENT, VIPS["syn-rate"][0], 40000, 80, "S", tcp_options=MSS, seq=1000), XDP_DROP),
    ("cookie", "edgewarden, cookie SYN-ACK for the flood's SYN (IPv4, MSS only)", SYN_MSS, XDP_TX),
    ("cookie-ts", "edgewarden, cookie SYN-ACK for a Linux SYN (IPv4; MSS, SACK, timestamps, WS)",
     tcp_ipv4_frame(CLIENT, VIPS["cookies"][0], 40000, 80, "S", tcp_options=LINUX_OPTIONS, seq=1000), XDP_TX),
    ("cookie-v6", "edgewarden, cookie SYN-ACK for a Linux SYN (IPv6)",
     tcp_ipv6_frame(CLIENT_V6, VIPS["cookies"][1], 40000, 80, "S", tcp_options=LINUX_OPTIONS, seq=1000), XDP_TX),
]


def load_xdp_drop(workdir: Path) -> BpfObject:
    path = workdir / "xdp_drop.bpf.o"
    compile_bpf(REPO / "benchmarks" / "bpf" / "xdp_drop.bpf.c", path)
    return BpfObject(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="one-packet runs per program per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--other-build", type=Path, metavar="BPF_O",
                        help="also time edgewarden's rows on another build of the datapath (e.g. main's), same run")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (BPF programs)")
    started = time.monotonic()
    policy = policy_from_document(DOCUMENT, "cookie bench policy")
    rows = list(ROWS)
    with tempfile.TemporaryDirectory(prefix="ew-cookiebench-") as tmp, PrivateDatapath(policy) as dp, \
            PrivateDatapath(policy, object_file=args.other_build) as other, load_xdp_drop(Path(tmp)) as drop:
        drop_fd = drop.program_fd("xdp_drop")
        fds = {key: (drop_fd if key == "drop" else dp.program.prog_fd) for key, *_ in ROWS}
        if args.other_build:
            for key, label, frame, expect in ROWS[1:]:
                rows.append((f"{key} (other)", f"{label}, {args.other_build.name} (other build)", frame, expect))
                fds[f"{key} (other)"] = other.program.prog_fd
        for key, label, frame, expect in rows:
            if key.startswith("syn-rate"):
                test_run(fds[key], frame)       # spends the one-SYN burst
            got = test_run(fds[key], frame).retval
            if got != expect:
                raise RuntimeError(f"{label}: action {got}, expected {expect}")
        samples: dict[str, list[float]] = {key: [] for key, *_ in rows}
        for key, _label, frame, _expect in rows:       # warm up
            for _ in range(args.calls // 10):
                test_run(fds[key], frame)
        for r in range(args.rounds):
            order = rows[r % len(rows):] + rows[:r % len(rows)]
            for key, label, frame, expect in order:
                runs = []
                for _ in range(args.calls):
                    result = test_run(fds[key], frame)
                    runs.append(result.duration_ns)
                if result.retval != expect:
                    raise RuntimeError(f"{label}: verdict changed during timing")
                samples[key].append(statistics.median(runs))
    median = {key: statistics.median(v) for key, v in samples.items()}
    lines = ["## SYN-cookie answer (BPF_PROG_TEST_RUN, one packet per run)", ""]
    lines += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines += [f"- **Runs:** {args.rounds} rounds x {args.calls:,} one-packet runs per program; "
              f"{time.monotonic() - started:.0f} s", "",
              "| program | ns per packet (median of rounds) | rounds min-max | vs `xdp_drop` | "
              "minus `xdp_drop`, ns |", "|---|---:|---:|---:|---:|"]
    for key, label, *_ in rows:
        lines.append(f"| {label} | {median[key]:.0f} | {min(samples[key]):.0f}-{max(samples[key]):.0f} | "
                     f"{median[key] / median['drop']:.2f}x | {median[key] - median['drop']:.0f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
