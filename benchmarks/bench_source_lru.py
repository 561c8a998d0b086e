#!/usr/bin/env python3
"""How many distinct IPv4 source prefixes keep their per-source bucket when
they all arrive on one CPU, for the datapath's store (ew_source_ways_v4: a
shared array of 4-way sets, bpf/flood.h source_allows_v4) against the same
object with IPv4 buckets in the LRU hash ew_source_buckets (one LRU list for
all CPUs, as before issue 14's array) and that LRU built with
BPF_F_NO_COMMON_LRU (a list per CPU, which evicts from max_entries / ncpus
nodes). Sources are distinct random addresses (a spoofed flood), /32 each.
BPF_PROG_TEST_RUN on private maps, pinned to CPU 0; nothing is attached.

    .venv/bin/python benchmarks/bench_source_lru.py [PREFIXES,PREFIXES,...]
"""

import os
import random
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
V4_CALL = "        return source_allows_v4(f, slot, policy, now);\n"
DOC = {"revision": 1, "tenants": [{"id": 1, "name": "t", "vips": ["203.0.113.10"], "flood": {
    "amplification": "pass", "source_packets_per_second": 1000, "source_packet_burst": 1000,
    "source_prefix_v4": 32}}]}
SOURCE_OFFSET = 14 + 12     # of the IPv4 source address in an untagged frame


def build(workdir: Path, store: str) -> Path:
    """The datapath as it is ("array"), or with IPv4 buckets in the LRU ("lru", "lru-percpu-lists")."""
    tree = workdir / store
    shutil.copytree(REPO / "bpf", tree)
    if store != "array":
        flood_h = tree / "flood.h"
        text = flood_h.read_text()
        if text.count(V4_CALL) != 1:
            raise RuntimeError("bpf/flood.h changed: cannot find the IPv4 per-source call to vary")
        flood_h.write_text(text.replace(V4_CALL, V4_CALL.replace("source_allows_v4", "source_allows_lru")))
    if store == "lru-percpu-lists":
        maps_h = tree / "maps.h"
        text = maps_h.read_text()
        if text.count(LRU_LINE) != 1:
            raise RuntimeError("bpf/maps.h changed: cannot find the one LRU map to vary")
        maps_h.write_text(text.replace(LRU_LINE, LRU_LINE + "    __uint(map_flags, BPF_F_NO_COMMON_LRU);\n"))
    return compile_bpf(tree / "edgewarden.bpf.c", tree / "edgewarden.bpf.o")


def kept(dp: PrivateDatapath, store: str) -> int:
    if store == "array":
        ways = dp.program.maps["ew_source_ways_v4"]
        values = ways.items_packed()[1]
        size = ways.value_size
        # a used way has a non-zero generation (bytes 8..12 of struct ew_source_way_v4)
        return sum(1 for i in range(0, len(values), size) if values[i + 8:i + 12] != b"\0\0\0\0")
    lru = dp.program.maps["ew_source_buckets"]
    return len(lru.items_packed()[0]) // lru.key_size


def main() -> int:
    counts = [int(n) for n in sys.argv[1].split(",")] if len(sys.argv) > 1 else \
        [10_000, 50_000, 100_000, 140_000, 262_144, 400_000]
    os.sched_setaffinity(0, {0})
    base = tcp_ipv4_frame("10.0.0.1", "203.0.113.10", 40000, 443, "A")
    labels = {"array": "array of 4-way sets (the datapath)", "lru": "LRU hash, one list",
              "lru-percpu-lists": "LRU hash, BPF_F_NO_COMMON_LRU"}
    print("| IPv4 store | prefixes sent | kept | time |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="ewlru-") as workdir:
        objects = {store: build(Path(workdir), store) for store in labels}
        for count in counts:
            sources = random.Random(count).sample(range(1, 2**32), count)
            for store, label in labels.items():
                with PrivateDatapath(policy_from_document(DOC), object_file=objects[store]) as dp:
                    fd, started = dp.program.prog_fd, time.monotonic()
                    for address in sources:
                        test_run(fd, base[:SOURCE_OFFSET] + address.to_bytes(4, "big") + base[SOURCE_OFFSET + 4:])
                    n = kept(dp, store)
                    print(f"| {label} | {count:,} | {n:,} ({n / count:.1%}) | {time.monotonic() - started:.1f} s |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
