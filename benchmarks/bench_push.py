"""Push latency to a fleet: a real controller process (SQLite, loopback
mutual TLS) and N protocol-speaking simulated agents in a few processes
(tests/fleet_support.SimAgent: real TLS, real verification and delta
application, no datapath). Measured: from the operator's API call to each
agent's Ack (p50, p99, max over agents, and the last agent = "all
acknowledged"), for one block entry and for a 10,000-entry delta; the
controller's CPU seconds and peak RSS over the run.

    .venv/bin/python benchmarks/bench_push.py --agents 1000 --processes 4

Baseline (the same run, --crowdsec): a CrowdSec LAPI with the same number
of bouncers polling /v1/decisions/stream, from `cscli decisions add` to the
last bouncer's poll that returns it, at 10 s and 1 s polling."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def worker(controller_dir: str, agent_port: int, names: list[str], ready, go, results) -> None:
    from fleet_support import Controller, SimAgent

    controller = Controller(Path(controller_dir), agent_port=agent_port)

    async def main():
        agents = []
        for name in names:
            a = SimAgent(controller, name, {"cert": controller.ca_dir / f"{name}.pem",
                                            "key": controller.ca_dir / f"{name}.key",
                                            "ca": controller.ca_dir / "ca.pem"})
            for _ in range(20):
                try:
                    await a.connect()
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            agents.append(a)
        tasks = [asyncio.create_task(a.run()) for a in agents]
        # wait until every agent holds the first revision
        while not all(a.applied for a in agents):
            await asyncio.sleep(0.05)
        ready.put(len(agents))
        while True:
            message = await asyncio.to_thread(go.get)
            if message == "stop":
                break
            revision, timeout = message
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(a.applied[-1][0] >= revision for a in agents):
                await asyncio.sleep(0.005)
            acks = [next((t for r, _, t in a.applied if r == revision), None) for a in agents]
            results.put(acks)
        for a in agents:
            await a.close()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process and its children threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return cpu, peak


def percentiles(latencies: list[float]) -> dict:
    xs = sorted(latencies)
    return {"p50_ms": round(statistics.median(xs) * 1000, 1),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000, 1),
            "max_ms": round(xs[-1] * 1000, 1), "agents": len(xs)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5, help="single-entry blocks measured")
    args = p.parse_args()
    from fleet_support import Controller, cli

    directory = Path(tempfile.mkdtemp(prefix="bench-push-"))
    controller = Controller(directory / "controller", digest_interval=600).setup()
    names = [f"sim-{i:04d}" for i in range(args.agents)]
    t0 = time.time()
    # the node registry in one go (the CLI per node would take minutes): the same calls `node add` makes
    from controller.distribution.nodes import add_node
    from controller.store import migrate, open_engine
    engine = open_engine(f"sqlite:///{controller.directory / 'controller.db'}")
    migrate(engine)
    for name in names:
        add_node(engine, controller.ca_dir, name, operator="bench", reason="bench")
    engine.dispose()
    print(f"{args.agents} nodes registered in {time.time() - t0:.1f} s", file=sys.stderr)
    controller.start()
    controller.block("192.0.2.1", reason="first")
    cpu0, _ = proc_stats(controller.process.pid)
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    gos = []
    procs = []
    for i in range(args.processes):
        go = ctx.Queue()
        gos.append(go)
        proc = ctx.Process(target=worker, args=(str(controller.directory), controller.agent_port,
                                                names[i::args.processes], ready, go, results))
        proc.start()
        procs.append(proc)
    connected = sum(ready.get(timeout=300) for _ in procs)
    print(f"{connected} agents connected and at the first revision", file=sys.stderr)

    def measure(make_change, timeout=60.0) -> dict:
        start = time.time()
        revision = make_change()
        for go in gos:
            go.put((revision, timeout))
        acks = [t for _ in procs for t in results.get(timeout=timeout + 30)]
        done = [t - start for t in acks if t is not None]
        out = percentiles(done) if done else {"agents": 0}
        out["missing"] = len(acks) - len(done)
        out["all_acknowledged_ms"] = round(max(done) * 1000, 1) if done else None
        return out

    single = []
    for i in range(args.rounds):
        single.append(measure(lambda: controller.block(f"198.51.100.{i + 1}", reason=f"round {i}")))
        time.sleep(0.3)
    big_list = "\n".join(f"10.{(i >> 8) & 255}.{i & 255}.0/24" for i in range(10000))

    def import_10k():
        import urllib.request
        request = urllib.request.Request(controller.url + "/lists/import?reason=bench", data=big_list.encode(),
                                         method="POST", headers={"Authorization": f"Bearer {controller.token}",
                                                                 "Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["revision"]
    try:
        big = measure(import_10k, timeout=120)
    except Exception as err:
        big = {"error": str(err)}
    cpu1, peak = proc_stats(controller.process.pid)
    for go in gos:
        go.put("stop")
    for proc in procs:
        proc.join(30)
    controller.stop()
    report = {"agents": connected, "processes": args.processes, "single_entry": single, "delta_10000": big,
              "controller_cpu_seconds": round(cpu1 - cpu0, 2), "controller_peak_rss_mib": round(peak / 2**20, 1)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
