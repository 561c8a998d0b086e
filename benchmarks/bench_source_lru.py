#!/usr/bin/env python3
"""How many distinct source prefixes the per-source LRU (ew_source_buckets)
keeps when they all arrive on one CPU: the datapath's map (one LRU list for
all CPUs) against the same object built with BPF_F_NO_COMMON_LRU (a list per
CPU, which evicts from max_entries / ncpus nodes). BPF_PROG_TEST_RUN on
private maps, pinned to CPU 0; nothing is attached.

    .venv/bin/python benchmarks/bench_source_lru.py [PREFIXES]
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from agent.datapath.private import PrivateDatapath  # noqa: E402
from agent.datapath.syscalls import test_run  # noqa: E402
from agent.policy import policy_from_document  # noqa: E402
from frames import tcp_ipv4_frame  # noqa: E402
from native.bpf_build import compile_bpf  # noqa: E402

LRU_LINE = "    __uint(type, BPF_MAP_TYPE_LRU_HASH);\n"
DOC = {"revision": 1, "tenants": [{"id": 1, "name": "t", "vips": ["203.0.113.10"], "flood": {
    "amplification": "pass", "source_packets_per_second": 1000, "source_packet_burst": 1000,
    "source_prefix_v4": 32}}]}
SOURCE_OFFSET = 14 + 12     # of the IPv4 source address in an untagged frame


def build(workdir: Path, per_cpu_lists: bool) -> Path:
    tree = workdir / ("percpu" if per_cpu_lists else "common")
    shutil.copytree(REPO / "bpf", tree)
    if per_cpu_lists:
        maps_h = tree / "maps.h"
        text = maps_h.read_text()
        if text.count(LRU_LINE) != 1:
            raise RuntimeError("bpf/maps.h changed: cannot find the one LRU map to vary")
        maps_h.write_text(text.replace(LRU_LINE, LRU_LINE + "    __uint(map_flags, BPF_F_NO_COMMON_LRU);\n"))
    return compile_bpf(tree / "edgewarden.bpf.c", tree / "edgewarden.bpf.o")


def main() -> int:
    prefixes = int(sys.argv[1]) if len(sys.argv) > 1 else 140_000
    os.sched_setaffinity(0, {0})
    base = tcp_ipv4_frame("10.0.0.1", "203.0.113.10", 40000, 443, "A")
    with tempfile.TemporaryDirectory(prefix="ewlru-") as workdir:
        for label, per_cpu in (("one LRU list (the datapath)", False), ("BPF_F_NO_COMMON_LRU", True)):
            with PrivateDatapath(policy_from_document(DOC), object_file=build(Path(workdir), per_cpu)) as dp:
                fd, started = dp.program.prog_fd, time.monotonic()
                for i in range(prefixes):
                    test_run(fd, base[:SOURCE_OFFSET] + (0x0A000000 + i).to_bytes(4, "big")
                             + base[SOURCE_OFFSET + 4:])
                lru = dp.program.maps["ew_source_buckets"]
                kept = len(lru.items_packed()[0]) // lru.key_size
                print(f"| {label} | {prefixes:,} | {kept:,} ({kept / prefixes:.1%}) | "
                      f"{time.monotonic() - started:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
