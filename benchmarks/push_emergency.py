"""The push benchmark's emergency phase (clause 十一): a real controller
holding a 1M-prefix list, agents already at its revision ("synced") and
agents connecting fresh, so that the 1M snapshot is being sent to them; at
that moment an admin's emergency block (`POST /fleet/emergency`, what
`edgewarden block emergency PREFIX --reason ...` calls) or, in alternate
rounds of the same run, a plain block (`POST /lists/entries`). Measured from
the API call: when every synced and every snapshotting agent enforces the
block (an emergency block's EmergencyAck, a plain block's revision Ack), and
when each acknowledged the revision that carries it."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import time
import urllib.request
from pathlib import Path


def emergency_worker(controller_dir: str, agent_port: int, synced: list[str], fresh_rounds: list[list[str]],
                     commands, results) -> None:
    """Simulated agents of one process: `synced` connect at once and stay; on ("connect", k) the
    names of fresh_rounds[k] connect (a snapshot each), on ("wait", ...) they are timed and closed."""
    from bench_push import run_loop
    from fleet_support import Controller, SimAgent

    controller = Controller(Path(controller_dir), agent_port=agent_port)

    async def connect(name: str) -> SimAgent:
        agent = SimAgent(controller, name, controller.node_files(name))
        for attempt in range(20):
            try:
                await agent.connect()
                return agent
            except Exception:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.2)

    async def until(predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            await asyncio.sleep(0.005)

    def at(agent, revision: int) -> bool:
        return bool(agent.applied) and agent.applied[-1][0] >= revision

    def times(agent, emergency_id: str | None, revision: int) -> tuple:
        """(emergency block acked, revision acked, first snapshot acked), seconds since the epoch or None."""
        em = next((t for e, t in agent.emergencies if e == emergency_id), None)
        rev = next((t for r, _, t in agent.applied if r >= revision), None)
        snap = next((t for _, how, t in agent.applied if how == "snapshot"), None)
        return em, rev, snap

    async def main():
        steady = [await connect(name) for name in synced]
        tasks = [asyncio.create_task(a.run()) for a in steady]
        fresh: list[SimAgent] = []
        while True:
            command = await asyncio.to_thread(commands.get)
            if command[0] == "stop":
                break
            if command[0] == "synced":
                _, revision, timeout = command
                await until(lambda: all(at(a, revision) for a in steady), timeout)
                results.put(sum(at(a, revision) for a in steady))
            elif command[0] == "connect":   # all at once: their snapshots are in flight together
                fresh = list(await asyncio.gather(*(connect(name) for name in fresh_rounds[command[1]])))
                tasks += [asyncio.create_task(a.run()) for a in fresh]
                results.put(len(fresh))
            elif command[0] == "wait":
                _, emergency_id, revision, timeout = command

                def done(a) -> bool:
                    return at(a, revision) and (emergency_id is None or any(e == emergency_id
                                                                            for e, _ in a.emergencies))
                await until(lambda: all(done(a) for a in steady + fresh), timeout)
                results.put(([times(a, emergency_id, revision) for a in steady],
                             [times(a, emergency_id, revision) for a in fresh]))
                for a in fresh:
                    await a.close()
                fresh = []
        for a in steady:
            await a.close()
        for t in tasks:
            t.cancel()

    run_loop(main())


def _ms(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"p50_ms": round(statistics.median(values) * 1000, 1), "max_ms": round(max(values) * 1000, 1),
            "count": len(values)}


def import_list(controller, text: str, timeout: float = 600) -> int:
    request = urllib.request.Request(controller.url + "/lists/import?reason=bench", data=text.encode(),
                                     method="POST", headers={"Authorization": f"Bearer {controller.token}",
                                                             "Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["revision"]


def run_emergency(args, directory: Path, register_nodes) -> dict:
    """The phase on a controller of its own (host loopback); `register_nodes(controller, names)` as bench_push's."""
    from bench_import import make_list
    from bench_push import proc_stats
    from fleet_support import Controller

    controller = Controller(directory / "emergency-controller", digest_interval=600).setup()
    synced = [f"synced-{i:03d}" for i in range(args.emergency_synced)]
    plan = [kind for _ in range(args.emergency_rounds) for kind in ("emergency", "plain")]
    rounds = [[f"fresh-{k}-{i:03d}" for i in range(args.emergency_fresh)] for k in range(len(plan))]
    register_nodes(controller, synced + [n for names in rounds for n in names])
    controller.start()
    ctx = multiprocessing.get_context("spawn")
    procs, commands = [], []
    try:
        addresses = make_list(directory / "emergency-list.txt", args.emergency_prefixes)
        t0 = time.time()
        list_revision = import_list(controller, "\n".join(addresses))
        imported_s = time.time() - t0
        print(f"emergency phase: {len(addresses):,} prefixes imported (revision {list_revision}) in {imported_s:.1f} s",
              file=sys.stderr, flush=True)
        results = ctx.Queue()
        fresh_processes = max(1, args.emergency_processes - 1)
        shares = [([], [names[i::fresh_processes] for names in rounds]) for i in range(fresh_processes)]
        shares.insert(0, (synced, [[] for _ in rounds]))   # the synced agents' process decodes no snapshot meanwhile
        for steady, fresh in shares:
            q = ctx.Queue()
            commands.append(q)
            proc = ctx.Process(target=emergency_worker, args=(str(controller.directory), controller.agent_port,
                                                              steady, fresh, q, results))
            proc.start()
            procs.append(proc)

        def ask(command, timeout):
            for q in commands:
                q.put(command)
            return [results.get(timeout=timeout) for _ in procs]
        t0 = time.time()
        at_list = sum(ask(("synced", list_revision, 300), 360))
        print(f"emergency phase: {at_list} synced agents hold the list's revision after {time.time() - t0:.1f} s",
              file=sys.stderr, flush=True)
        measured = []
        for k, kind in enumerate(plan):
            connected = sum(ask(("connect", k), 120))
            prefix = f"203.0.113.{100 + k}/32"
            load = __import__("os").getloadavg()[0]
            cpu0, _ = proc_stats(controller.process.pid)
            start = time.time()
            if kind == "emergency":
                out = controller.api("POST", "/fleet/emergency", {"prefixes": [prefix],
                                                                  "reason": f"bench emergency round {k}"})
                emergency_id, revision = out["emergency_id"], out["batch"]["revision"]
            else:
                emergency_id, revision = None, controller.block(prefix, reason=f"bench plain round {k}")
            api_s = time.time() - start
            replies = ask(("wait", emergency_id, revision, 180), 240)
            cpu1, _ = proc_stats(controller.process.pid)
            steady = [t for r in replies for t in r[0]]
            fresh = [t for r in replies for t in r[1]]

            def enforced(ts):   # the block in force: the emergency block's ack, else the revision's
                return [(em if kind == "emergency" else rev) - start for em, rev, _ in ts
                        if (em if kind == "emergency" else rev) is not None]
            result = {
                "kind": kind, "prefix": prefix, "revision": revision, "api_call_ms": round(api_s * 1000, 1),
                "synced_block": _ms(enforced(steady)), "synced_revision": _ms([rev - start for _, rev, _ in steady
                                                                               if rev is not None]),
                "fresh_connected": connected, "fresh_block": _ms(enforced(fresh)),
                "fresh_revision": _ms([rev - start for _, rev, _ in fresh if rev is not None]),
                "fresh_snapshot": _ms([snap - start for _, _, snap in fresh if snap is not None]),
                # honesty: were they still receiving the snapshot when the block was issued, and did the
                # block reach them before the snapshot was through?
                "fresh_receiving_at_call": sum(1 for _, _, snap in fresh if snap is None or snap > start),
                "fresh_block_before_snapshot": sum(1 for em, rev, snap in fresh
                                                   if (em if kind == "emergency" else rev) is not None
                                                   and snap is not None
                                                   and (em if kind == "emergency" else rev) < snap),
                "missing": sum(1 for em, rev, _ in steady + fresh
                               if rev is None or (kind == "emergency" and em is None)),
                "controller_cpu_s": round(cpu1 - cpu0, 2), "load_average": round(load, 2)}
            measured.append(result)
            print(f"emergency phase, round {k + 1} ({kind}): {result}", file=sys.stderr, flush=True)
        _, peak = proc_stats(controller.process.pid)
        for q in commands:
            q.put(("stop",))
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        controller.stop()
    return {"prefixes": len(addresses), "import_s": round(imported_s, 1), "synced": len(synced),
            "fresh": args.emergency_fresh, "processes": len(procs), "rounds": measured,
            "controller_peak_rss_mib": round(peak / 2**20, 1)}


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"


def section_lines(em: dict) -> list[str]:
    """The emergency phase's part of the RESULTS section."""
    rounds = em["rounds"]
    lines = [
        "### Emergency block during a large snapshot", "",
        f"`--emergency-prefixes {em['prefixes']} --emergency-synced {em['synced']} --emergency-fresh {em['fresh']} "
        f"--emergency-rounds {len(rounds) // 2}`. Emergency block while a {em['prefixes']:,}-prefix snapshot is being sent (clause 十一), the same run: a "
        f"controller of its own holding that list (imported in {em['import_s']:.0f} s), {em['synced']} "
        f"simulated agents already at its revision (one process of their own) and, in each round, "
        f"{em['fresh']} more connecting fresh at once ({em['processes'] - 1} processes), so that the list's "
        "snapshot is being sent to them; the moment all of them are past their hello the block is issued through the real "
        "controller: `POST /fleet/emergency` (what `edgewarden block emergency PREFIX --reason ...` calls) or, "
        "in alternate rounds, a plain `POST /lists/entries`. \"enforced\" is an emergency block's EmergencyAck "
        "(a simulated agent acknowledges it on receipt, a real one once it enforces it on top of its revision), a plain block's revision Ack; \"revision\" is the Ack of "
        "the revision that carries the block (for a snapshotting agent, its snapshot then that delta). All times "
        "from the API call.", "",
        "| round | block | synced: enforced p50 / max ms | synced: revision acked max ms | snapshotting: enforced "
        "p50 / max ms | snapshotting: still receiving at the call / enforced before their snapshot was through | "
        "snapshotting: snapshot through max ms | snapshotting: revision acked max ms | API call ms | controller "
        "CPU s | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in enumerate(rounds, 1):
        def pm(m):
            return f"{m['p50_ms']:.0f} / {m['max_ms']:.0f}" if m.get("count") else "-"

        def mx(m):
            return f"{m['max_ms']:.0f}" if m.get("count") else "-"
        lines.append(f"| {k} | {r['kind']} | {pm(r['synced_block'])} | {mx(r['synced_revision'])} | "
                     f"{pm(r['fresh_block'])} | {r['fresh_receiving_at_call']} / {r['fresh_block_before_snapshot']} "
                     f"of {r['fresh_connected']} | {mx(r['fresh_snapshot'])} | {mx(r['fresh_revision'])} | "
                     f"{r['api_call_ms']:.0f} | {r['controller_cpu_s']:.1f} | {r['load_average']:.1f} |"
                     + (f" ({r['missing']} missing)" if r["missing"] else ""))
    emergency = [r for r in rounds if r["kind"] == "emergency" and r["synced_block"].get("count")]
    plain = [r for r in rounds if r["kind"] == "plain" and r["synced_block"].get("count")]
    if emergency and plain:
        def med(rs, key):
            return statistics.median(r[key]["max_ms"] for r in rs if r[key].get("count"))
        e_syn, p_syn = med(emergency, "synced_block"), med(plain, "synced_block")
        e_fr, p_fr = med(emergency, "fresh_block"), med(plain, "fresh_block")
        lines += ["", f"- All synced agents enforcing it: emergency {e_syn:.0f} ms, plain {p_syn:.0f} ms (median over "
                  f"rounds of the last agent): **{p_syn / e_syn:.1f}x**. All snapshotting agents: emergency "
                  f"{e_fr:.0f} ms, plain {p_fr:.0f} ms: **{p_fr / e_fr:.1f}x**. A plain block waits for its "
                  "revision (the whole policy with its list compiled, stored and loaded again) and, on a snapshotting "
                  "agent, for the snapshot before it; the emergency block is sent before its revision is made and "
                  "overtakes the queued snapshot chunks.",
                  f"- The plain block's API call alone took {_span([r['api_call_ms'] for r in plain])} ms (the "
                  "controller makes the revision from the whole list), and the distributor then loads and encodes "
                  "that revision before it sends the delta; the emergency call returned after as long, but its block "
                  "had gone out first.",
                  f"- Controller peak RSS in this phase: {em['controller_peak_rss_mib']:.0f} MiB. The simulated agents "
                  "share the machine's 2 cores with the controller: a snapshotting agent decodes and verifies the "
                  "list in Python (0.3 s on a quiet core, \"Wire protocol\" above), here "
                  f"{em['fresh'] // max(1, em['processes'] - 1)} per process at once, which is why their snapshots "
                  f"took {_span([r['fresh_snapshot']['max_ms'] for r in rounds if r['fresh_snapshot'].get('count')])} "
                  "ms and why the emergency block reached them later than the synced ones (their processes read it "
                  "between chunks they were decoding); a real fleet does that work on its own machines."]
    return lines + [""]
