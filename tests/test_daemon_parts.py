"""The daemon's parts on their own: config validation, the incident tracker
(start, peak, end, de-duplication), the SQLite spool (exactly-once
collection, durability across reopen), the threshold scan of the Cython
core against a plain-Python statement, and evidence sealing and
verification against real pcapng files (tshark reads them)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent import _counters
from agent.daemon.config import ConfigError, config_from_document
from agent.daemon.incidents import IncidentTracker
from agent.daemon.spool import IncidentSpool
from agent.datapath import abi
from agent.datapath.counters import new_aggregator
from agent.evidence.manifest import Manifest, file_sha256, verify
from agent.evidence.pcapng_file import EvidenceFile
from daemon_harness import tshark_frames


def _doc(**extra):
    return {"policy_file": "p.toml", "interfaces": [{"name": "eth1"}], **extra}


def test_config_defaults_and_generic_fallback():
    config = config_from_document(_doc(interfaces=[{"name": "eth1", "allow_generic": True}, {"name": "eth2"}]),
                                  "t.toml", Path("/etc/edgewarden"))
    assert config.policy_file == Path("/etc/edgewarden/p.toml")
    assert [i.attach_mode for i in config.interfaces] == ["auto", "native"]
    assert config.metrics_host_port == ("127.0.0.1", 9101)
    assert config.detach_on_stop is False


def test_config_errors_name_every_key():
    with pytest.raises(ConfigError) as err:
        config_from_document({"interfaces": [{"name": "eth1", "mode": "fast"}], "metrics": {"address": "nowhere"},
                              "thresholds": {"drops_by_reason": {"drop_nonsense": 5}}, "colour": 1}, "bad.toml")
    text = str(err.value)
    for where in ("bad.toml", "interfaces[0].mode", "metrics.address", "drops_by_reason.drop_nonsense", "colour",
                  "policy_file"):
        assert where in text


def test_tenant_thresholds_override_defaults_key_by_key():
    config = config_from_document(_doc(thresholds={"packets_per_second": 100, "syns_per_second": 10,
                                                   "tenant": [{"id": 7, "packets_per_second": 1000}]}), "t")
    assert config.thresholds_for(7).checks() == {"packets_per_second": 1000, "syns_per_second": 10}
    assert config.thresholds_for(8).checks() == {"packets_per_second": 100, "syns_per_second": 10}


def test_incident_start_peak_end_and_deduplication():
    tracker = IncidentTracker("node", end_after=2.0)
    key = (5, "packets_per_second")
    events = tracker.observe(10.0, {key: (500.0, 100.0, ["eth1"])})
    assert [e.kind for e in events] == ["started"]
    for t, rate in ((11.0, 900.0), (12.0, 700.0)):
        assert tracker.observe(t, {key: (rate, 100.0, ["eth1", "eth2"])}) == []   # one incident while it lasts
    assert tracker.observe(13.0, {}) == []          # quiet for 1 s: not over yet
    events = tracker.observe(14.0, {})
    assert [e.kind for e in events] == ["ended"]
    incident = events[0].incident
    assert (incident.started_at, incident.peak_value, incident.peak_at, incident.ended_at) == (10.0, 900.0, 11.0, 12.0)
    assert incident.interfaces == ["eth1", "eth2"]
    assert tracker.observe(15.0, {key: (500.0, 100.0, ["eth1"])})[0].kind == "started"   # a new attack


def test_spool_collects_exactly_once_and_survives_reopen(tmp_path):
    spool = IncidentSpool(tmp_path / "incidents.sqlite")
    record = {"id": "n:1:pps:1", "tenant_id": 1, "check": "pps", "threshold": 1.0, "started_at": 1.0,
              "peak_value": 5.0, "peak_at": 1.0, "ended_at": None, "interfaces": ["eth1"]}
    first = spool.record(record, "started")
    second = spool.record({**record, "ended_at": 3.0, "peak_value": 9.0}, "ended")
    assert spool.db_mode() == ("wal", 2)       # WAL, synchronous=FULL
    spool.close()
    spool = IncidentSpool(tmp_path / "incidents.sqlite")       # as after a crash
    pending = spool.pending()
    assert [rid for rid, _ in pending] == [first, second]
    assert pending[1][1]["peak_value"] == 9.0 and pending[1][1]["report"] == "ended"
    assert spool.acknowledge([first]) == 1
    assert spool.acknowledge([first]) == 0                     # a repeated ack changes nothing
    assert [rid for rid, _ in spool.pending()] == [second]     # unacknowledged: handed out again
    assert spool.acknowledge([second, 999]) == 1
    assert spool.pending() == []
    assert spool.incidents(open_only=True) == []
    assert oct(os.stat(tmp_path / "incidents.sqlite").st_mode & 0o777) == "0o600"
    spool.close()


def _reference_over(totals_rows, rates_rows, groups, scales, limits, overrides, ids):
    out = []
    for e, (tenant, rates) in enumerate(zip(ids, rates_rows)):
        if tenant is None:
            continue
        own = overrides.get(tenant, limits)
        for g, fields in enumerate(groups):
            value = sum(rates[f] for f in fields) * scales[g]
            if own[g] > 0 and value > own[g]:
                out.append((e, g, value))
    return out


def test_threshold_scan_matches_plain_python():
    aggregator = new_aggregator()
    fields, ncpus, ids = abi.COUNTER_FIELDS, 2, [0, 1, None, 3, 4]
    def raw(scale):
        return b"".join(struct.pack(f"={fields}Q", *[(e + 1) * (f + 1) * scale for f in range(fields)])
                        for e in range(len(ids)) for _ in range(ncpus))
    aggregator.scan(raw(1), ids, ncpus, 0)
    scan = aggregator.scan(raw(3), ids, ncpus, 2_000_000_000)
    groups = [[30, 31], [12], [40, 41, 42]]
    scales, limits, overrides = [1.0, 8.0, 1.0], [100.0, 0.0, 300.0], {3: [1e9, 50.0, 0.0]}
    got = _counters.rates_over(scan, groups, scales, limits, overrides)
    rows = [scan.row(i) for i in range(len(ids))]
    want = _reference_over([r[0] for r in rows], [r[1] for r in rows], groups, scales, limits, overrides, ids)
    assert [(e, g) for e, g, _ in got] == [(e, g) for e, g, _ in want] and got
    assert [v for _, _, v in got] == pytest.approx([v for _, _, v in want])
    sums = _counters.column_totals(scan)
    assert sums == [sum(rows[i][0][f] for i in range(len(ids))) for f in range(fields)]


# --- evidence --------------------------------------------------------------

FRAME = bytes.fromhex("020000000002020000000001080045000054000040004001f4b8c6336401cb00710a0800f7ff00010000")[:34] \
    + bytes(range(200))


def _seal_files(directory: Path, count: int = 3) -> list[Path]:
    manifest = Manifest(directory)
    paths = []
    for i in range(count):
        path = directory / f"inc-{i}.pcapng"
        f = EvidenceFile(path, node="n1", incident=f"n1:1:pps:{i}", tenant_id=1, reason="incident pps",
                         snaplen=256, opened_at=0)
        f.add(ifname="eth1", timestamp_ns=1_700_000_000_000_000_000 + i, data=FRAME, packet_length=1500,
              comment="tenant=1; verdict=drop_global_block")
        f.close()
        manifest.append(action="sealed", file=path.name, sha256=file_sha256(path), bytes=path.stat().st_size,
                        node="n1", sealed_at="2026-12-01T00:00:00+00:00", reason="incident pps", tenant=1)
        paths.append(path)
    return paths


def test_sealed_files_verify_and_open_in_tshark(tmp_path):
    paths = _seal_files(tmp_path)
    assert verify(tmp_path).ok
    out = subprocess.run(["tshark", "-r", str(paths[0]), "-T", "fields", "-e", "frame.comment", "-e", "frame.len",
                          "-e", "frame.interface_name"], capture_output=True, text=True, check=True).stdout
    assert out.split("\t") == ["tenant=1; verdict=drop_global_block", "1500", "eth1\n"]
    assert tshark_frames(paths[0]) == [FRAME]          # the sampled bytes, unchanged
    cli = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "verify", str(tmp_path)],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "OK, 3 manifest entries" in cli.stdout


def _verify_problems(directory: Path) -> str:
    cli = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "verify", str(directory)],
                         capture_output=True, text=True)
    assert cli.returncode == 1, cli.stdout
    return cli.stdout


def test_verify_names_a_changed_byte(tmp_path):
    paths = _seal_files(tmp_path)
    data = bytearray(paths[1].read_bytes())
    data[-20] ^= 0x01
    paths[1].write_bytes(data)
    out = _verify_problems(tmp_path)
    assert "file inc-1.pcapng was changed" in out and "inc-0" not in out


def test_verify_names_a_removed_file(tmp_path):
    paths = _seal_files(tmp_path)
    paths[2].unlink()
    assert "file inc-2.pcapng was removed" in _verify_problems(tmp_path)


def test_verify_names_a_reordered_entry(tmp_path):
    _seal_files(tmp_path)
    lines = (tmp_path / "MANIFEST.jsonl").read_text().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    (tmp_path / "MANIFEST.jsonl").write_text("".join(lines))
    out = _verify_problems(tmp_path)
    assert "entry 1 (inc-1.pcapng) is out of order" in out and "does not chain" in out


def test_verify_names_a_truncated_manifest(tmp_path):
    _seal_files(tmp_path)
    manifest = tmp_path / "MANIFEST.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:2]))          # cut at a line boundary
    out = _verify_problems(tmp_path)
    assert "manifest truncated" in out and "file inc-2.pcapng is not in the manifest" in out
    manifest.write_text("".join(lines)[:-30])        # cut inside the last entry
    assert "manifest truncated: line 3 is incomplete" in _verify_problems(tmp_path)


# --- evidence recorder: rotation, retention, a full disk ---------------------------

def _recorder(directory: Path, **evidence):
    from agent.daemon.metrics import AgentMetrics
    from agent.evidence.recorder import EvidenceRecorder
    config = config_from_document({"policy_file": "p", "node": "n1", "interfaces": [{"name": "eth1"}],
                                   "evidence": {"directory": str(directory), "min_free_bytes": 1, **evidence}}, "t")
    metrics = AgentMetrics(5)
    return EvidenceRecorder(config, metrics), metrics


def _samples(tenant: int, n: int):
    from agent.evidence.ring import Sample
    return [Sample(10**9 + i, tenant, 0, 0, len(FRAME), FRAME) for i in range(n)]


def _incident(tenant: int, name: str):
    from agent.daemon.incidents import Incident
    return Incident(f"n1:{tenant}:{name}", tenant, "packets_per_second", 1.0, 0, 1, 0, 0)


def test_recorder_rotates_by_size_and_retention_removes_the_oldest(tmp_path):
    recorder, metrics = _recorder(tmp_path, max_file_bytes=4096, retention_bytes=12000)
    recorder.set_incidents({1: _incident(1, "a")})
    recorder.record("eth1", _samples(1, 60), 0)
    recorder.close()
    from agent.evidence.manifest import read_entries
    entries, problems = read_entries(tmp_path)
    sealed = [e for e in entries if e["action"] == "sealed"]
    removed = [e for e in entries if e["action"] == "removed"]
    assert not problems and len(sealed) >= 4 and removed            # rotated at 4 KiB; oldest expired
    assert all(e["reason"].startswith("retention") for e in removed)
    live = sorted(p.name for p in tmp_path.glob("*.pcapng"))
    assert sum((tmp_path / n).stat().st_size for n in live) <= 12000
    assert removed[0]["file"] == sealed[0]["file"] and removed[0]["file"] not in live
    assert verify(tmp_path).ok                                    # a removal by retention is not tampering
    for name in live:
        assert all(frame == FRAME for frame in tshark_frames(tmp_path / name))
    assert metrics.evidence_bytes._value.get() > 0


def test_full_disk_stops_evidence_with_a_log_line_and_a_metric(tmp_path, caplog):
    import logging
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        recorder, metrics = _recorder(mount)
        recorder.set_incidents({1: _incident(1, "b")})
        with caplog.at_level(logging.ERROR, logger="edgewarden.agent"):
            recorder.record("eth1", _samples(1, 2000), 0)        # far more than 64 KiB
        assert recorder.stopped_for_disk
        assert metrics.evidence_stopped._value.get() == 1
        assert any("evidence writing stopped, disk full" in r.getMessage() and "enforcement continues" in
                   r.getMessage() for r in caplog.records)
        recorder.record("eth1", _samples(1, 5), 0)                 # still full: no exception, nothing new
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_recorder_rotates_by_age(tmp_path):
    clock = [1000.0]
    recorder, _ = _recorder(tmp_path, max_file_seconds=10)
    recorder.clock = lambda: clock[0]
    recorder.set_incidents({1: _incident(1, "c")})
    recorder.record("eth1", _samples(1, 3), 0)
    recorder.tick()
    assert not list(tmp_path.glob("*.pcapng"))          # young: still open
    clock[0] += 11
    recorder.tick()
    assert len(list(tmp_path.glob("*.pcapng"))) == 1    # sealed at 10 s
    recorder.record("eth1", _samples(1, 3), 0)
    recorder.close()
    assert len(list(tmp_path.glob("*.pcapng"))) == 2 and verify(tmp_path).ok


def test_counter_summary_from_the_metrics_totals_is_flat_and_counts_the_interval(tmp_path):
    """What the agent sends the controller each report interval: from the
    per-tenant totals the metrics keep (packets, bytes, a drops dict by
    reason), flat numeric counters since the previous summary, which the
    controller's store keeps whole and turns into the tenant's rates."""
    from agent.daemon.controller_link import flat_totals, interval_counts
    from agent.daemon.metrics import TenantTotals
    from controller.distribution import reports
    from controller.store import migrate, open_engine
    aggregator, fields, ncpus, ids = new_aggregator(), abi.COUNTER_FIELDS, 2, [0, 7]
    rp = abi.COUNTER_LAYOUT["reason_packets"]

    def scan(scale):
        values = [0] * fields
        values[rp.start + abi.VerdictReason.pass_allowed] = 10 * scale
        values[rp.start + abi.VerdictReason.drop_global_block] = 3 * scale
        return aggregator.scan(b"".join(struct.pack(f"={fields}Q", *values) for _ in ids for _ in range(ncpus)),
                               ids, ncpus, scale * 1_000_000_000)

    totals = TenantTotals(top=10)
    totals.update({"eth0": scan(1)})
    before = {t: flat_totals(r) for t, r in totals._rows.items()}
    totals.update({"eth0": scan(4)})
    summary = {e["tenant_id"]: e for e in interval_counts({t: flat_totals(r) for t, r in totals._rows.items()}, before)}
    # per tenant, two CPUs each: 3 x (10 + 3) more packets per CPU since the first scan, 3 x 3 of them dropped
    assert sorted(summary) == [0, 7]
    assert summary[7]["packets"] == 2 * 3 * 13
    assert summary[7]["dropped_packets"] == summary[7]["drop_global_block"] == 2 * 3 * 3
    assert all(type(v) is int for v in summary[7].values())

    engine = open_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    migrate(engine)
    reports.store_counters(engine, "edge-1", 1_000_000, 6, list(summary.values()))
    rates = reports.tenant_stats(engine, 7)["per_second"]
    assert rates == {k: v / 6 for k, v in summary[7].items() if k != "tenant_id"}
    engine.dispose()
