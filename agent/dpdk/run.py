"""One run of the DPDK engine in this process: start the EAL and the
worker, apply the policy, poll until stopped (a signal, --seconds,
--packets), serving the control socket meanwhile, then report. SIGHUP
re-reads the config's policy file."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

from agent.dpdk.config import DpdkConfig
from agent.dpdk.engine import DpdkEngine, WorkerStats, set_test_clock
from agent.policy import Policy, load_policy


@dataclass
class RunReport:
    stats: WorkerStats
    seconds: float
    policy_revision: int
    counters: dict       # tenant id -> TenantCounters
    packets_per_lcore: list[int] | None = None
    trace: list | None = None

    def as_dict(self) -> dict:
        doc = {"seconds": round(self.seconds, 6), "policy_revision": self.policy_revision, **self.stats.as_dict(),
               "packets_per_lcore": self.packets_per_lcore,
               "tenants": [self.counters[t].as_dict() for t in sorted(self.counters)]}
        if self.trace is not None:
            doc["trace"] = self.trace
        return doc


def run_engine(config: DpdkConfig, *, policy: Policy | None = None, policy_file: Path | None = None,
               seconds: float | None = None,
               packets: int | None = None, test_clock_ns: int | None = None, trace: int | None = None,
               on_running=None) -> RunReport:
    """`policy_file` (default: the config's) is what SIGHUP re-reads;
    `on_running(engine)` is called once the poll loops run (tests flip
    policies from it)."""
    policy_file = policy_file or config.policy
    stop = {"requested": False, "reload": False}
    previous = {sig: signal.signal(sig, lambda *_: stop.__setitem__("requested", True))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: stop.__setitem__("reload", True))
    server = None
    try:
        with DpdkEngine(config) as engine:
            if test_clock_ns:
                set_test_clock(test_clock_ns)
            if trace:
                engine.enable_trace(trace)
            policy = policy or (load_policy(policy_file) if policy_file else None)
            if policy is not None:
                engine.apply(policy)
            if config.control_socket:
                from agent.dpdk.control import ControlServer
                server = ControlServer(Path(config.control_socket), engine)
            started = time.monotonic()
            engine.start(packets or 0)
            if on_running is not None:
                on_running(engine)
            deadline = started + seconds if seconds else None
            while engine.running() and not stop["requested"]:
                if deadline and time.monotonic() >= deadline:
                    break
                if stop["reload"] and policy_file:
                    stop["reload"] = False
                    engine.apply(load_policy(policy_file))
                if server:
                    server.serve(timeout=0.02)
                else:
                    time.sleep(0.01)
            engine.stop()
            elapsed = time.monotonic() - started
            revision = engine.policy.revision if engine.policy else 0
            return RunReport(engine.stats(), elapsed, revision, engine.counters(), engine.packets_per_lcore(),
                             engine.trace() if trace else None)
    finally:
        if server:
            server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
