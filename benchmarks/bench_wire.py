#!/usr/bin/env python3
"""The wire protocol's snapshot of a 1,000,000-prefix policy, in one run:

  shared        the snapshot encoded ONCE (SnapshotCache) and queued on 100
                simulated agent connections (hello, welcome, snapshot frames
                in each connection's outbox, all queued at once, as when 100
                agents connect together), then drained to a byte counter;
  per-connection  the baseline: the same, but every connection encodes its
                own snapshot, as a control plane that builds per agent does.

Each mode runs in its own child process; the figure is the child's peak RSS
(ru_maxrss) and its growth over the RSS with the policy loaded. Also: the
encode and decode (agent side: frames in, verified bundle out) throughput,
and a 100-entry delta made and applied on top of the 1M list.
--write-results replaces the "Wire protocol" section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_wire.py [--prefixes N] [--connections N] [--write-results]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from results_file import machine_facts, publish  # noqa: E402

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from agent.wire import (  # noqa: E402
    PROTOCOL_VERSION, AgentConnection, BundleSigner, BundleVerifier, ControllerConnection, EncodedRevision, Hello,
    Outbox, PolicyBundle, PrefixList, SnapshotCache, SnapshotProgress, SnapshotReceived, Welcome, apply_delta,
)

SECTION_TITLE = "## Wire protocol"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    """VmHWM: the peak RSS since the last reset_peak_rss()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS (Linux: clear_refs 5), so the
    policy's own construction is not what the peak measures."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def reputation_list(count: int, seed: int = 1) -> PrefixList:
    """`count` distinct IPv4 prefixes, mostly /32 and /24 as reputation lists are, 2% IPv6."""
    rng = random.Random(seed)
    v4, v6 = set(), set()
    while len(v4) + len(v6) < count:
        if rng.random() < 0.02:
            v6.add(((0x20010db8 << 96) | (rng.getrandbits(32) << 64)).to_bytes(16, "big") + b"\x40")
        else:
            length = 32 if rng.random() < 0.8 else 24
            v4.add(((rng.getrandbits(32) >> (32 - length)) << (32 - length)).to_bytes(4, "big") + bytes([length]))
    return PrefixList(b"".join(sorted(v4)), b"".join(sorted(v6)))


def policy(prefixes: int) -> PolicyBundle:
    document = {
        "revision": 1,
        "global": {"blocked_sources": ["192.0.2.0/24"]},
        "tenants": [{"id": i, "name": f"tenant-{i}", "state": "active", "vips": [f"203.0.113.{i % 250}"] if i < 250
                     else [f"2001:db8::{i:x}"], "blocked_ports": ["tcp/25"], "blocked_sources": []}
                    for i in range(1, 1001)],
    }
    return PolicyBundle.from_document(document, {"global/reputation": reputation_list(prefixes)})


def connections(count: int) -> list[ControllerConnection]:
    conns = []
    verifier = BundleVerifier([Ed25519PrivateKey.generate().public_key()])
    for i in range(count):
        agent, conn = AgentConnection(verifier), ControllerConnection("controller-1", expected_node=f"edge-{i}")
        conn.receive_data(agent.send(Hello(PROTOCOL_VERSION, f"edge-{i}", 0, b"")))
        conn.next_event()
        conn.send(Welcome(PROTOCOL_VERSION, "controller-1", 1))
        conns.append(conn)
    return conns


def child(mode: str, prefixes: int, count: int) -> dict:
    signer = BundleSigner(Ed25519PrivateKey.generate())
    bundle = policy(prefixes)
    bundle.digest   # computed once with the policy, in both modes
    reset_peak_rss()
    loaded = rss_mib()
    conns = connections(count)
    cache = SnapshotCache(signer)
    outboxes = []
    start = time.perf_counter()
    for conn in conns:
        encoded = cache.get(bundle) if mode == "shared" else EncodedRevision(bundle, signer)
        outbox = Outbox()
        outbox.put(conn.snapshot_frames(encoded))
        outboxes.append(outbox)
    queued = time.perf_counter() - start
    queued_rss = rss_mib()
    distinct = {id(f): len(f) for outbox in outboxes for _, _, f in outbox._heap}
    held = sum(distinct.values())
    sent = 0
    for outbox in outboxes:          # the network: every frame written, none copied
        while (frame := outbox.pop()) is not None:
            sent += len(frame)
    return {"mode": mode, "loaded_rss": loaded, "queued_rss": queued_rss, "peak_rss": peak_rss_mib(),
            "queue_seconds": queued, "bytes_sent": sent, "held": held, "encodings": cache.encodings if mode == "shared" else count}


def _median_time(repeat: int, work) -> tuple[float, object]:
    """The median wall time of `repeat` runs of work() (the machine is shared), and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def _received(encoded: EncodedRevision, signer: BundleSigner) -> SnapshotReceived:
    """The agent's side of a snapshot: frames in, verified bundle out."""
    agent = AgentConnection(BundleVerifier([signer.private_key.public_key()]))
    conn = ControllerConnection("controller-1")
    conn.receive_data(agent.send(Hello(PROTOCOL_VERSION, "edge-0", 0, b"")))
    conn.next_event()
    agent.receive_data(conn.send(Welcome(PROTOCOL_VERSION, "controller-1", 1)))
    agent.next_event()
    for frame in encoded.frames:
        agent.receive_data(frame)
    while isinstance(event := agent.next_event(), SnapshotProgress):
        pass
    return event


def throughput(prefixes: int, repeat: int) -> dict:
    signer = BundleSigner(Ed25519PrivateKey.generate())
    bundle = policy(prefixes)
    digest_seconds, digest = _median_time(repeat, lambda: PolicyBundle(1, bundle.document, bundle.lists).digest)
    bundle.digest   # a revision's digest is computed once, with the revision; encoding reuses it
    encode, encoded = _median_time(repeat, lambda: EncodedRevision(bundle, signer))
    decode, event = _median_time(repeat, lambda: _received(encoded, signer))
    assert isinstance(event, SnapshotReceived) and event.bundle.digest == digest
    # a 100-entry delta (50 added, 50 removed) on top of the list
    reputation = bundle.lists["global/reputation"]
    rng = random.Random(3)
    present = set(reputation.records(4))
    removed = PrefixList(b"".join(sorted(rng.sample(sorted(present), 50))))
    added_records = set()
    while len(added_records) < 50:
        record = rng.getrandbits(32).to_bytes(4, "big") + b"\x20"
        if record not in present:
            added_records.add(record)
    added = PrefixList(b"".join(sorted(added_records)))
    newer = PolicyBundle(2, bundle.document, {**bundle.lists, "global/reputation": reputation.apply(added, removed)})
    newer.digest
    make, delta = _median_time(repeat, lambda: signer.make_delta(bundle, newer))
    apply, result = _median_time(repeat, lambda: apply_delta(event.bundle, delta))
    assert result.digest == newer.digest
    return {"digest": digest_seconds, "encode": encode, "decode": decode, "bytes": encoded.size,
            "frames": len(encoded.frames), "largest_frame": max(len(f) for f in encoded.frames),
            "delta_make": make, "delta_apply": apply, "prefixes": bundle.prefix_count}


def emergency_agent(directory: str, port: int, rounds: int, key_text: str) -> list[dict]:
    """The agent side of emergency_latency, in its own process: connect
    `rounds` times, and report when the emergency block and the snapshot
    arrived (CLOCK_MONOTONIC, which the parent shares)."""
    import asyncio

    from agent.wire import EmergencyAck, EmergencyReceived, load_public_key
    from agent.wire.asyncio_client import connect
    from agent.wire.tls import client_context

    ca = Path(directory)
    ctx = client_context(ca / "edge-0.pem", ca / "edge-0.key", ca / "ca.pem")
    out = []

    async def run() -> None:
        urgent = AgentConnection._urgent_body
        for i in range(rounds):
            # odd rounds are the FIFO baseline: no lookahead on the agent either
            AgentConnection._urgent_body = (lambda self: None) if i % 2 else urgent
            verifier = BundleVerifier([load_public_key(key_text)])
            link = await connect("127.0.0.1", port, hello=Hello(PROTOCOL_VERSION, "edge-0", 0, b""), ssl_context=ctx,
                                 verifier=verifier)
            seen = {}
            while len(seen) < 2:
                event = await link.next_event()
                if isinstance(event, EmergencyReceived):
                    seen["emergency"] = time.perf_counter()
                    await link.send(EmergencyAck("em-1"))
                elif isinstance(event, SnapshotReceived):
                    seen["snapshot"] = time.perf_counter()
            out.append(seen)
            await link.close()

    asyncio.run(run())
    return out


def emergency_latency(prefixes: int, rounds: int) -> dict:
    """Over real mutual TLS on 127.0.0.1, the agent in another process: a
    snapshot of the whole list is queued to it, then (5 ms later,
    mid-transfer) an emergency block; the latency is from queueing the block
    to the agent's EmergencyReceived. Baseline: the same block queued behind
    the snapshot and the agent reading in order, as on a FIFO connection.
    Rounds alternate the two."""
    import asyncio
    import tempfile

    from agent.wire import ConnectionClosed, EmergencyBlock, public_key_text
    from agent.wire.asyncio_server import serve
    from agent.wire.outbox import PRIORITY_POLICY
    from agent.wire.tls import NodeAuthority, server_context

    signer = BundleSigner(Ed25519PrivateKey.generate())
    encoded = EncodedRevision(policy(prefixes), signer)
    block = signer.sign_emergency(EmergencyBlock("em-1", ["198.51.100.7/32"], "bench", 5, "", b""))
    queued: list[dict] = []

    async def handler(link):
        fifo = len(queued) % 2 == 1
        times = {"fifo": fifo}
        queued.append(times)
        link.send(Welcome(PROTOCOL_VERSION, "controller-1", 1))
        times["snapshot"] = time.perf_counter()
        link.send_snapshot(encoded)
        await asyncio.sleep(0.005)
        times["emergency"] = time.perf_counter()
        if fifo:
            link._peer.put_frames(link.connection.send(block), PRIORITY_POLICY)
        else:
            link.send(block)
        while not isinstance(await link.next_event(), ConnectionClosed):
            pass

    async def run(tmp: str) -> list[dict]:
        ca = NodeAuthority.create(tmp)
        server_cert = ca.issue_controller("controller-1", ["127.0.0.1"])
        ca.issue_node("edge-0")
        server = await serve(handler, "127.0.0.1", 0, controller="controller-1",
                             ssl_context=server_context(server_cert.cert_path, server_cert.key_path, ca.cert_path))
        port = server.sockets[0].getsockname()[1]
        async with server:
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child", "emergency-agent", "--ca-dir", tmp, "--port", str(port),
                "--rounds", str(2 * rounds), "--key", public_key_text(signer.private_key.public_key()),
                stdout=asyncio.subprocess.PIPE)
            stdout, _ = await asyncio.wait_for(child.communicate(), 300)
            return json.loads(stdout)

    with tempfile.TemporaryDirectory() as tmp:
        arrived = asyncio.run(run(tmp))
    results = {"priority": [], "fifo": [], "snapshot": []}
    for sent, got in zip(queued, arrived):
        results["fifo" if sent["fifo"] else "priority"].append(got["emergency"] - sent["emergency"])
        results["snapshot"].append(got["snapshot"] - sent["snapshot"])
    return {k: sorted(v) for k, v in results.items()}


def run_child(mode: str, prefixes: int, count: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--prefixes", str(prefixes),
                          "--connections", str(count)], check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--child", choices=("shared", "per-connection", "emergency-agent"))
    parser.add_argument("--ca-dir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5, help="emergency-latency rounds per mode")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each throughput step (median)")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    if args.child == "emergency-agent":
        print(json.dumps(emergency_agent(args.ca_dir, args.port, args.rounds, args.key)))
        return
    if args.child:
        print(json.dumps(child(args.child, args.prefixes, args.connections)))
        return
    shared = run_child("shared", args.prefixes, args.connections)
    baseline = run_child("per-connection", args.prefixes, args.connections)
    t = throughput(args.prefixes, args.repeat)
    em = emergency_latency(args.prefixes, args.rounds)
    median = lambda values: values[len(values) // 2]  # noqa: E731
    mib = t["bytes"] / 2**20
    grow_s, grow_b = shared["peak_rss"] - shared["loaded_rss"], baseline["peak_rss"] - baseline["loaded_rss"]
    lines = [SECTION_TITLE, ""]
    lines += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines += [
        f"- **Policy:** {t['prefixes']:,} prefixes (a {args.prefixes:,}-prefix reputation list, 80% /32, 18% /24, "
        f"2% IPv6 /64, plus the document's own) and 1,000 tenants; snapshot {mib:.1f} MiB in {t['frames']} frames, "
        f"largest {t['largest_frame'] / 1024:.0f} KiB (the frame limit is 1 MiB).",
        f"- **Method:** each mode in its own process: the policy built, then {args.connections} controller "
        f"connections past hello and welcome, each with the whole snapshot queued in its outbox at once, then "
        f"drained; peak RSS is the child's VmHWM, reset after the policy was built (so it measures what the connections add).",
        "",
        "| mode | encodings | distinct frame bytes queued | RSS with policy | peak RSS | growth | time to queue |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| encoded once, shared (SnapshotCache) | {shared['encodings']} | {shared['held'] / 2**20:.1f} MiB | "
        f"{shared['loaded_rss']:.0f} MiB | {shared['peak_rss']:.0f} MiB | {grow_s:.0f} MiB | "
        f"{shared['queue_seconds'] * 1000:.0f} ms |",
        f"| baseline: encoded per connection | {baseline['encodings']} | {baseline['held'] / 2**20:.1f} MiB | "
        f"{baseline['loaded_rss']:.0f} MiB | {baseline['peak_rss']:.0f} MiB | {grow_b:.0f} MiB | "
        f"{baseline['queue_seconds'] * 1000:.0f} ms |",
        "",
        f"Peak RSS ratio baseline / shared: **{baseline['peak_rss'] / shared['peak_rss']:.1f}x**; growth for "
        f"{args.connections} connections: {grow_b:.0f} MiB vs {grow_s:.1f} MiB "
        f"(the one shared encoding fits in memory the policy's construction had freed). Both modes sent "
        f"{shared['bytes_sent'] / 2**20:.0f} MiB.",
        "",
        f"Throughput steps: median of {args.repeat} runs; load average during the run "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min) on this shared machine.",
        "",
        "| step (pure Python) | time | throughput |",
        "|---|---:|---:|",
        f"| policy digest (SHA-256 over the canonical document and records) | {t['digest'] * 1000:.1f} ms | "
        f"{mib / t['digest']:.0f} MiB/s |",
        f"| encode the snapshot once (chunks, frames, signature) | {t['encode'] * 1000:.0f} ms | "
        f"{mib / t['encode']:.0f} MiB/s, {t['prefixes'] / t['encode'] / 1e6:.1f}M prefixes/s |",
        f"| decode on the agent (frames in, every record checked, digest verified) | {t['decode'] * 1000:.0f} ms | "
        f"{mib / t['decode']:.0f} MiB/s, {t['prefixes'] / t['decode'] / 1e6:.2f}M prefixes/s |",
        f"| make a signed 100-entry delta on the {args.prefixes:,}-prefix list (controller: diff of two revisions) | {t['delta_make'] * 1000:.0f} ms | - |",
        f"| apply it to the received bundle, digest checked (agent bookkeeping, not the datapath) | "
        f"{t['delta_apply'] * 1000:.1f} ms | - |",
    ]
    lines += [
        "",
        f"Emergency block during that snapshot, over mutual TLS on 127.0.0.1 (the agent in its own process; "
        f"{args.rounds} rounds each, interleaved; the block is queued 5 ms after "
        f"the snapshot, mid-transfer):",
        "",
        "| emergency block | median | max |",
        "|---|---:|---:|",
        f"| edgewarden: overtakes the queued chunks (outbox priority) | {median(em['priority']) * 1000:.0f} ms | "
        f"{max(em['priority']) * 1000:.0f} ms |",
        f"| baseline: queued behind the snapshot (FIFO) | {median(em['fifo']) * 1000:.0f} ms | "
        f"{max(em['fifo']) * 1000:.0f} ms |",
        f"| (the whole snapshot, queued to verified bundle on the agent) | {median(em['snapshot']) * 1000:.0f} ms | "
        f"{max(em['snapshot']) * 1000:.0f} ms |",
        "",
        f"Ratio FIFO / priority (median): **{median(em['fifo']) / median(em['priority']):.1f}x**.",
    ]
    publish(SECTION_TITLE, "\n".join(lines) + "\n", args.write_results)


if __name__ == "__main__":
    main()
