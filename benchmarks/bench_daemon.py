#!/usr/bin/env python3
"""The agent daemon's figures, in one run:

  scan       one accounting scan of N tenants as the daemon does it (counter
             read and rates in Cython, every tenant's thresholds in one pass,
             the metrics' top N) against the bare counter scan
             (CounterMonitor.scan) of the same maps, and against the interval;
  sampling   the datapath's cost per packet (BPF_PROG_TEST_RUN) for a tenant
             that is not sampled, with the program as built and with the
             sampling call compiled out (the baseline), and for a sampled
             tenant (sample written, or budget spent);
  memory     the daemon's RSS (now and peak) after a 1,000,000-prefix list is
             loaded through its control socket, in a lab namespace.

    .venv/bin/python benchmarks/bench_daemon.py [--tenants N] [--skip-memory] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from results_file import machine_facts, publish  # noqa: E402

from agent._libbpf import ffi  # noqa: E402
from agent.daemon.accounting import Accounting  # noqa: E402
from agent.daemon.config import config_from_document  # noqa: E402
from agent.daemon.incidents import IncidentTracker  # noqa: E402
from agent.daemon.metrics import TenantTotals  # noqa: E402
from agent.datapath import abi  # noqa: E402
from agent.datapath.apply import apply_policy_to_maps  # noqa: E402
from agent.datapath.counters import CounterMonitor  # noqa: E402
from agent.datapath.private import PrivateDatapath  # noqa: E402
from agent.datapath.program import LoadedProgram  # noqa: E402
from agent.datapath.syscalls import test_run  # noqa: E402
from agent.policy import Policy, Tenant, policy_from_document  # noqa: E402
from agent.lab import in_namespace  # noqa: E402  (the benchmark drives a lab; the daemon never imports it)
from native.bpf_build import compile_bpf  # noqa: E402

SECTION_TITLE = "## Agent daemon"
INTERVAL_S = 1.0


class _Traffic:
    """Counters that move as a second of traffic would: every tenant a few
    hundred packets, the attacked ones millions (so they cross thresholds)."""

    def __init__(self, maps, attacked: set[int], rng: random.Random):
        import struct
        self.maps, self.struct = maps, struct
        counters = maps["ew_counters"]
        self.ncpus, self.fields = counters.ncpus, abi.COUNTER_FIELDS
        self.pass_packets = abi.COUNTER_LAYOUT["reason_packets"].start + abi.VerdictReason.pass_allowed
        self.pass_bytes = abi.COUNTER_LAYOUT["reason_bytes"].start + abi.VerdictReason.pass_allowed
        self.syn = abi.COUNTER_LAYOUT["class_packets"].start + abi.TrafficClass.tcp_syn
        self.rates = {slot: (5_000_000 if slot in attacked else rng.randint(1, 500))
                      for slot in range(counters.max_entries)}
        self.seconds = 0

    def step(self) -> None:
        self.seconds += 1
        entries = {}
        for slot, rate in self.rates.items():
            row = [0] * self.fields
            row[self.pass_packets] = row[self.syn] = rate * self.seconds // self.ncpus
            row[self.pass_bytes] = 100 * rate * self.seconds // self.ncpus
            entries[self.struct.pack("=I", slot)] = self.struct.pack(f"={self.fields}Q", *row) * self.ncpus
        self.maps["ew_counters"].update_many(entries)


def scan_figures(tenants: int, rounds: int) -> dict:
    config = config_from_document({"policy_file": "p", "interfaces": [{"name": "x"}], "thresholds": {
        "packets_per_second": 1e6, "bits_per_second": 1e9, "syns_per_second": 1e5,
        "drops_by_reason": {"drop_global_block": 1e5, "drop_syn_rate": 1e5}}}, "bench")
    policy = Policy(revision=1, tenants=tuple(Tenant(i, f"t{i}") for i in range(1, tenants + 1)))
    with LoadedProgram(tenant_capacity=tenants + 1) as program:
        apply_policy_to_maps(program.maps, policy)
        rng = random.Random(1)
        attacked = set(rng.sample(range(1, tenants + 1), max(1, tenants // 1000)))   # 0.1% under attack
        traffic = _Traffic(program.maps, attacked, rng)
        traffic.step()
        accounting = Accounting(config)
        accounting.watch("x", program.maps)
        totals = TenantTotals(20)
        tracker = IncidentTracker("bench", 5.0)
        accounting.scan()
        bare = CounterMonitor(program.maps)
        bare.scan()
        samples_daemon, samples_bare, over = [], [], 0
        for _ in range(rounds):
            traffic.step()                            # a second of traffic: most tenants quiet, a few attacked
            start = time.perf_counter()
            result = accounting.scan()
            totals.update(result.scans)
            tracker.observe(time.time(), result.over)
            samples_daemon.append(time.perf_counter() - start)
            over = len(result.over)
            start = time.perf_counter()
            bare.scan()
            samples_bare.append(time.perf_counter() - start)
        ncpus = program.maps["ew_counters"].ncpus
    return {"daemon": statistics.median(samples_daemon), "bare": statistics.median(samples_bare), "over": over,
            "ncpus": ncpus, "checks": len(accounting.checks)}


def _frames():
    from frames import tcp_ipv4_frame
    return {t: tcp_ipv4_frame("192.0.2.10", f"203.0.113.{10 + t}", 40000, 443, "S") for t in (1, 2, 3)}


POLICY = {"revision": 1, "tenants": [{"id": t, "name": f"t{t}", "vips": [f"203.0.113.{10 + t}"]} for t in (1, 2, 3)]}


def _datapath(obj_path: Path, sampled: set[int], rate: int) -> PrivateDatapath:
    """A build of the datapath on private maps, loaded the way the agent loads it
    (policy arrays and block tables behind their map-in-maps), tenants `sampled`."""
    from dataclasses import replace
    policy = policy_from_document(POLICY)
    policy = replace(policy, tenants=tuple(replace(t, sampled=t.id in sampled) for t in policy.tenants))
    dp = PrivateDatapath(policy, object_file=obj_path)
    config = ffi.new("struct ew_sample_config *", {"samples_per_second": rate, "burst": rate})
    dp.program.maps["ew_sample_config"].update(b"\0\0\0\0", bytes(ffi.buffer(config)))
    return dp


def sampling_figures(repeat: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ew-bench-") as tmp:
        plain = compile_bpf(REPO / "bpf" / "edgewarden.bpf.c", Path(tmp) / "no_sampling.bpf.o",
                            {"EW_SAMPLING_COMPILED_OUT": 1})
        built = Path(str(REPO / "agent" / "datapath" / "edgewarden.bpf.o"))
        frames = _frames()
        # tenant 1: not sampled; 2: sampled with a huge budget (ring fills, then losses); 3: sampled, budget 0
        subjects = {}
        dp_plain, dp_built = _datapath(plain, set(), 0), _datapath(built, {2, 3}, 0)
        maps_built = dp_built.program.maps
        fd_plain, fd_built = dp_plain.program.prog_fd, dp_built.program.prog_fd
        subjects["baseline: not sampled, sampling compiled out"] = (fd_plain, frames[1])
        subjects["not sampled (one flag test)"] = (fd_built, frames[1])
        subjects["sampled, budget spent"] = (fd_built, frames[3])
        results = {k: [] for k in subjects}
        for _ in range(rounds):
            for name, (fd, frame) in subjects.items():
                results[name].append(test_run(fd, frame, repeat).duration_ns)
        # A sample written each time: budget large, the ring drained between runs.
        from agent.evidence.ring import SampleRing
        config = ffi.new("struct ew_sample_config *", {"samples_per_second": 10**9, "burst": 10**9})
        maps_built["ew_sample_config"].update(b"\0\0\0\0", bytes(ffi.buffer(config)))
        pin = Path("/sys/fs/bpf") / f"ew-bench-ring-{random.getrandbits(32):08x}"
        from agent.datapath.syscalls import check
        from agent._libbpf import lib
        check(lib.bpf_obj_pin(lib.bpf_map__fd(dp_built.program._object._find_map("ew_samples")), str(pin).encode()), "pin ring")
        ring = SampleRing(pin)
        written, per_run = [], 2000
        try:
            for _ in range(rounds):
                written.append(test_run(fd_built, frames[2], per_run).duration_ns)
                got = 0
                while True:
                    batch = ring.poll(0)
                    if not batch:
                        break
                    got += len(batch)
        finally:
            ring.close()
            pin.unlink()
        results["sampled, sample written (256 bytes)"] = written
        lost = ffi.from_buffer("struct ew_sample_config *", maps_built["ew_sample_config"].lookup(b"\0\0\0\0")).lost
        dp_plain.close()
        dp_built.close()
    return {k: statistics.median(v) for k, v in results.items()} | {"lost": lost}


MEMORY_PROBE_POLICY = 'revision = 1\n[[tenants]]\nid = 1\nname = "shop"\nvips = ["203.0.113.10"]\n'


def memory_figures(prefixes: int) -> dict:
    from agent.lab import EdgeLab
    from daemon_harness import DaemonProcess, NotifySocket, write_config
    from bench_blocklist import generate_list
    with tempfile.TemporaryDirectory(prefix="ew-bench-mem-") as tmp, EdgeLab() as lab:
        tmp = Path(tmp)
        listing = tmp / "list.txt"
        listing.write_text("\n".join(generate_list(prefixes, random.Random(7))) + "\n")
        config = write_config(tmp, [lab.edge_if], MEMORY_PROBE_POLICY)
        notify = NotifySocket(tmp / "notify.sock")
        daemon = DaemonProcess(lab.edge_ns, config, notify)
        try:
            notify.wait_for("READY", "1", daemon=daemon)
            before = _rss(daemon.proc.pid)
            start = time.perf_counter()
            out = lab.edgewarden("block", "load", str(listing), "--list", "bench")
            seconds = time.perf_counter() - start
            assert "through the agent" in out.stdout, out.stdout
            after = _rss(daemon.proc.pid)
        finally:
            daemon.stop()
            notify.close()
    return {"idle": before[0], "rss": after[0], "peak": after[1], "seconds": seconds}


def flood_figures(seconds: float, pps: int) -> dict:
    """The daemon's RSS and CPU while a capture is replayed at it for
    `seconds` with its tenant under incident (so sampled, evidence written)."""
    from agent.lab import FloodLab
    from daemon_harness import DaemonProcess, NotifySocket, write_config
    capture = REPO / "tests" / "data" / "captures" / "pkt.TCP.synflood.spoofed.pcap"
    with tempfile.TemporaryDirectory(prefix="ew-bench-flood-") as tmp, FloodLab() as lab:
        tmp = Path(tmp)
        edge_if, attacker_if = lab.links["attacker"]
        policy = f'revision = 1\n[[tenants]]\nid = 1\nname = "victim"\nvips = ["{lab.vip}"]\n'
        config = write_config(tmp, [edge_if], policy, mode="native",
                              extra="[thresholds]\npackets_per_second = 1000\n",
                              evidence="samples_per_second = 500\nmax_file_bytes = 1048576\n")
        notify = NotifySocket(tmp / "notify.sock")
        daemon = DaemonProcess(lab.ns["edge"], config, notify)
        try:
            notify.wait_for("READY", "1", daemon=daemon)
            idle = _rss(daemon.proc.pid)[0]
            cpu0, t0 = _cpu(daemon.proc.pid), time.time()
            rss_samples, sent = [], 0
            mac = lab.mac_of("edge", edge_if)
            while time.time() - t0 < seconds:
                replay = subprocess.Popen(in_namespace(lab.ns["attacker"], [
                    sys.executable, "-m", "agent.cli", "replay", str(capture), "--iface", attacker_if, "--target",
                    lab.vip, "--dst-mac", mac, "--pps", str(pps), "--json"]), stdout=subprocess.PIPE, text=True)
                while replay.poll() is None:
                    rss_samples.append(_rss(daemon.proc.pid)[0])
                    time.sleep(1)
                sent += json.loads(replay.stdout.read())["sent"]
            elapsed = time.time() - t0
            cpu = _cpu(daemon.proc.pid) - cpu0
            peak = _rss(daemon.proc.pid)[1]
            samples = sum(1 for _ in (tmp / "evidence").glob("*.pcapng*"))
        finally:
            daemon.stop()
            notify.close()
    return {"idle": idle, "max": max(rss_samples), "last": rss_samples[-1], "peak": peak, "cpu": cpu,
            "seconds": elapsed, "sent": sent, "files": samples}


def _cpu(pid: int) -> float:
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> tuple[int, int]:
    status = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines())
    return tuple(int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--flood-seconds", type=float, default=60.0, help="0: skip the flood RSS run")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)

    scan = scan_figures(args.tenants, args.rounds)
    sampling = sampling_figures(repeat=100_000, rounds=7)
    memory = None if args.skip_memory else memory_figures(args.prefixes)
    flood = flood_figures(args.flood_seconds, 8000) if args.flood_seconds > 0 else None

    base = sampling["baseline: not sampled, sampling compiled out"]
    lines = [SECTION_TITLE, ""]
    lines += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines += [
        "",
        f"### Accounting scan ({args.tenants:,} tenants, {scan['ncpus']} CPUs, {scan['checks']} threshold checks)",
        "",
        "| what | median time per scan | share of the 1 s interval |",
        "|---|---:|---:|",
        f"| daemon scan: counters, rates, every tenant's thresholds (Cython `rates_over`), top-20 metrics, "
        f"incident tracker | {scan['daemon'] * 1e3:.1f} ms | {scan['daemon'] / INTERVAL_S * 100:.1f}% |",
        f"| baseline: bare counter scan (`CounterMonitor.scan`) | {scan['bare'] * 1e3:.1f} ms | "
        f"{scan['bare'] / INTERVAL_S * 100:.1f}% |",
        "",
        f"- **Daemon scan / bare scan:** {scan['daemon'] / scan['bare']:.2f}x; tenants over a threshold in the "
        f"last scan: {scan['over']:,} (0.1% of the tenants attacked, each over several checks).",
        "",
        "### Datapath cost of evidence sampling (BPF_PROG_TEST_RUN, same TCP SYN frame)",
        "",
        "| program / tenant | ns per packet | vs baseline |",
        "|---|---:|---:|",
    ]
    for name, ns in sampling.items():
        if name != "lost":
            lines.append(f"| {name} | {ns:.1f} | {ns / base:.2f}x |")
    lines += ["", f"- Samples the ring had no room for during the timed runs: {sampling['lost']:,} "
                  "(counted in `ew_sample_config.lost`, exported as `edgewarden_sample_ring_lost_samples_total`)."]
    if memory:
        lines += ["", f"### Agent memory with a {args.prefixes:,}-prefix list", "",
                  "| daemon | RSS |", "|---|---:|",
                  f"| idle, after READY | {memory['idle'] / 2**20:.0f} MiB |",
                  f"| after `block load` of the list through the control socket | {memory['rss'] / 2**20:.0f} MiB |",
                  f"| peak (VmHWM) | {memory['peak'] / 2**20:.0f} MiB |", "",
                  f"- Goal: at most 150 MB ({'met' if memory['peak'] <= 150e6 else 'NOT met'}); load took "
                  f"{memory['seconds']:.1f} s end to end (CLI parse and compile, socket, daemon apply)."]
    else:
        lines += ["", "- Memory: not measured in this run (--skip-memory)."]
    if flood:
        lines += ["", f"### Agent under a {flood['seconds']:.0f} s replayed flood with sampling on", "",
                  f"- `pkt.TCP.synflood.spoofed.pcap` replayed again and again at 8,000 packets/s ({flood['sent']:,} "
                  f"packets); the tenant is under incident the whole time, so sampled (500 samples/s per CPU) and "
                  f"its evidence written ({flood['files']} files, rotated at 1 MiB).",
                  f"- RSS: {flood['idle'] / 2**20:.0f} MiB idle, at most {flood['max'] / 2**20:.0f} MiB during the "
                  f"flood (sampled every second), {flood['last'] / 2**20:.0f} MiB at the end; peak (VmHWM) "
                  f"{flood['peak'] / 2**20:.0f} MiB.",
                  f"- CPU: {flood['cpu']:.1f} s over {flood['seconds']:.0f} s "
                  f"({flood['cpu'] / flood['seconds'] * 100:.0f}% of one core)."]
    lines += ["", "_Generated by `benchmarks/bench_daemon.py`._"]
    publish(SECTION_TITLE, "\n".join(lines), args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
