"""Runs frames through the DPDK engine, as `edgewarden dpdk run` in a
subprocess (the EAL starts once per process, and a crash must not take
pytest with it): net_pcap reads them from a pcap and writes the passed ones
to another. The result holds the engine's JSON report and the passed frames,
and can be compared with the reference model packet by packet."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.datapath.abi import VerdictReason
from agent.dpdk.capture import write_pcap
from agent.pcap import read_frames
from agent.policy import Policy, policy_to_toml
from agent.reference import ReferenceCounters, judge

REPO = Path(__file__).resolve().parent.parent
EAL_ARGS = ["--no-huge", "--no-shconf", "--no-pci", "--no-telemetry", "--log-level=*:error"]
FIELDS = ("class_packets", "class_bytes", "reason_packets", "reason_bytes")


def engine_config(tmp: Path, ports: list[dict], *, eal_args=EAL_ARGS, memory_mb: int | None = 256,
                  engine: dict | None = None, control_socket: Path | None = None) -> Path:
    lines = ["[eal]", 'lcores = "0,1"', f"args = {json.dumps(eal_args)}"]
    if memory_mb is not None:
        lines.append(f"memory_mb = {memory_mb}")
    if engine:
        lines += ["[engine]", *[f"{k} = {v}" for k, v in engine.items()]]
    for port in ports:
        lines += ["[[ports]]", *[f"{k} = {json.dumps(v)}" for k, v in port.items()]]
    text = "\n".join(lines) + "\n"
    if control_socket:
        text = f'control_socket = "{control_socket}"\n' + text
    path = tmp / "dpdk.toml"
    path.write_text(text)
    return path


@dataclass
class EngineRun:
    returncode: int
    report: dict | None
    stderr: str
    passed_frames: list[bytes]


def run_cli(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "dpdk", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def run_frames(tmp: Path, policy: Policy, frames: list[bytes], *, test_clock_ns: int | None = None,
               trace: bool = False) -> EngineRun:
    """`trace`: the report's "trace" says, per packet in order, the tenant, reason
    and class its counters moved (one worker lcore: net_pcap has one queue)."""
    inp, out = tmp / "in.pcap", tmp / "out.pcap"
    write_pcap(inp, frames)
    config = engine_config(tmp, [{"name": "net_pcap0", "vdev": f"net_pcap0,rx_pcap={inp},tx_pcap={out}"}])
    policy_file = tmp / "policy.toml"
    policy_file.write_text(policy_to_toml(policy))
    args = ["run", "--config", str(config), "--policy", str(policy_file), "--packets", str(len(frames)),
            "--seconds", "60", "--json"]
    if test_clock_ns:
        args += ["--test-clock-ns", str(test_clock_ns)]
    if trace:
        args += ["--trace", str(max(len(frames), 1))]
    done = run_cli(args)
    report = json.loads(done.stdout) if done.returncode == 0 else None
    passed = [f.data for f in read_frames(out)] if done.returncode == 0 and out.exists() else []
    return EngineRun(done.returncode, report, done.stderr, passed)


def assert_matches_reference(run: EngineRun, policy: Policy, frames: list[bytes], buckets=None,
                             now_ns: int = 1) -> ReferenceCounters:
    assert run.returncode == 0, f"the engine failed: {run.stderr[-2000:]}"
    reference = ReferenceCounters()
    expected_passed = []
    for frame in frames:
        verdict = judge(policy, frame, buckets, now_ns)
        reference.count(verdict)
        if verdict.reason in (VerdictReason.pass_allowed, VerdictReason.pass_non_ip):
            expected_passed.append(frame)
    report = run.report
    assert report["received"] == len(frames), report
    assert report["passed"] == len(expected_passed) and report["tx_failed"] == 0, report
    assert report["dropped"] == len(frames) - len(expected_passed), report
    # Packet by packet: the passed frames, in order, byte for byte.
    assert len(run.passed_frames) == len(expected_passed)
    for i, (got, want) in enumerate(zip(run.passed_frames, expected_passed)):
        assert got == want, f"passed frame {i} differs: engine {got.hex()}, reference {want.hex()}"
    engine = {t["tenant_id"]: t for t in report["tenants"]}
    for tenant_id, fields in reference.by_tenant.items():
        for field in FIELDS:
            got = {k: v for k, v in engine[tenant_id][field].items() if v}
            assert got == dict(fields[field]), f"tenant {tenant_id} {field}"
    for tenant_id, counters in engine.items():
        if tenant_id not in reference.by_tenant:
            assert counters["packets"] == 0, f"tenant {tenant_id} counted packets the reference gives no one"
    return reference
