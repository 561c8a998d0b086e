"""The agent daemon in controller mode holding a 1,000,000-prefix list, in
a lab: a real controller process in its own namespace, one edge namespace
with the daemon and XDP on its peer-facing veth. Verdicts are read with
BPF_PROG_TEST_RUN on the edge's pinned (attached) program, so nothing is
sent to the list's addresses.

- a 100-entry change at the API reaches the datapath as a delta written in
  place (the daemon's revision_applied event says datapath="delta" and how
  long the tables took), and the new entries are enforced;
- a block-table entry deleted and one added by hand (the library, as
  bpftool would) are found by the next digest exchange, the controller
  resyncs, and the verdicts are back;
- the daemon killed (SIGKILL) while a large delta is being applied: the
  datapath keeps enforcing, the restarted daemon converges to the latest
  revision, and an incident in its spool is stored once."""

from __future__ import annotations

import random
import sqlite3
import time

import pytest

from agent.daemon.spool import IncidentSpool
from edge_lab import (
    HAND_CHANGE, HAS_NODE, LIST_SIZE, SPARE, XDP_DROP, XDP_PASS, EdgeLab, generated_list, import_list, spare_hosts,
    start_agent,
)
from fleet_support import Controller

RECORDED_REVISION = """
import json, sys
from agent.datapath.policy_store import applied_policy
print(json.dumps({"revision": applied_policy(sys.argv[1]).revision}))
"""
DIGEST_SECONDS = 4.0        # the controller's digest exchange (a readback of ~1M entries each time)


class Fleet:
    def __init__(self, lab, controller, files, directory, listed):
        self.lab, self.controller, self.files, self.directory, self.listed = lab, controller, files, directory, listed
        self.daemon: DaemonProcess | None = None

    def start_agent(self) -> DaemonProcess:
        self.daemon = start_agent(self.lab, self.controller, self.directory, self.files)
        return self.daemon


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agentlab")
    listed = generated_list(LIST_SIZE)
    list_file = tmp / "reputation.txt"
    list_file.write_text("\n".join(listed) + "\n")
    with EdgeLab() as lab:
        controller = Controller(tmp / "controller", netns=lab.ns("ctl"), hosts=("192.0.2.1",),
                                digest_interval=DIGEST_SECONDS).setup()
        files = controller.add_node("edge-1")
        controller.start()
        fleet = Fleet(lab, controller, files, tmp / "agent", listed)
        try:
            first = import_list(controller, list_file, "a 1M-prefix reputation list")
            daemon = fleet.start_agent()
            daemon.wait_log("revision_applied", revision=first, timeout=300)
            yield fleet
        finally:
            if fleet.daemon is not None:
                fleet.daemon.stop()
            controller.stop()


def test_a_100_entry_change_to_a_1m_list_is_written_in_place_and_enforced(fleet):
    lab, controller, daemon = fleet.lab, fleet.controller, fleet.daemon
    new = spare_hosts(100, 1)
    sample = [s.split("/")[0] for s in random.Random(3).sample(fleet.listed, 20)]
    before = lab.verdicts(new + sample)
    assert all(before[s] == XDP_PASS for s in new) and all(before[s] == XDP_DROP for s in sample)

    mark = len(daemon.lines)
    revision = controller.block(*new, reason="100 new sources")
    entry = daemon.wait_log("revision_applied", revision=revision, after=mark, timeout=60)
    assert entry["by"] == "delta" and entry["datapath"] == "delta", entry
    assert entry["tables_ms"] > 0 and entry["interfaces"][lab.edge_if].startswith("1 list(s) changed in place")
    print(f"\n100-entry delta on {LIST_SIZE:,} prefixes: tables {entry['tables_ms']} ms, list journal "
          f"{entry['store_ms']} ms, whole apply {entry['apply_ms']} ms, revision file {entry['persist_ms']} ms")
    after = lab.verdicts(new + sample + spare_hosts(5, 3))
    assert all(after[s] == XDP_DROP for s in new)
    assert all(after[s] == XDP_DROP for s in sample)
    assert all(after[s] == XDP_PASS for s in spare_hosts(5, 3))     # next to the new ones, never listed
    # the revision recorded beside the pins follows (it is written after the ack): what `edgewarden stats` shows
    recorded = lambda: lab.run_in_edge(RECORDED_REVISION, lab.edge_if)["revision"]  # noqa: E731
    deadline = time.monotonic() + 10
    while recorded() != revision and time.monotonic() < deadline:
        time.sleep(0.2)
    assert recorded() == revision


def test_entries_changed_by_hand_are_found_by_the_digest_exchange_and_repaired(fleet):
    lab, daemon = fleet.lab, fleet.daemon
    gone = spare_hosts(1, 1)[0]                   # blocked by the delta above: its /24's node is deleted by hand
    added = "198.19.200.1"                        # never listed: a /16 node added by hand
    assert lab.verdicts([gone])[gone] == XDP_DROP
    assert lab.run_in_edge(HAS_NODE, lab.edge_if, added) == [False]
    mark = len(daemon.lines)
    change = lab.run_in_edge(HAND_CHANGE, lab.edge_if, gone, added)
    assert change == {"deleted": True, "existed": False}
    assert lab.verdicts([gone])[gone] == XDP_PASS             # the hand change took effect

    drift = daemon.wait_log("drift_detected", after=mark, timeout=60)
    assert drift["tables"] == {lab.edge_if: ["ew_gblock_v4"]}
    print(f"\nreadback of {drift['entries']:,} table entries for the digest check: {drift['readback_ms']} ms")
    repaired = daemon.wait_log("revision_applied", after=mark, timeout=120, repaired=True)
    assert repaired["by"] == "snapshot"
    assert lab.verdicts([gone])[gone] == XDP_DROP             # the entry's verdict is back
    assert lab.run_in_edge(HAS_NODE, lab.edge_if, added) == [False]
    # and the next exchanges find the tables as the agent wrote them
    settled = len(daemon.lines)
    deadline = time.monotonic() + 4 * DIGEST_SECONDS + 60
    while sum(1 for e in daemon.lines[settled:] if e.get("event") == "digest_checked" and e["decided"]) < 2:
        assert time.monotonic() < deadline, "no two decided digest checks after the repair"
        time.sleep(0.2)
    assert not [e for e in daemon.lines[settled:] if e.get("event") == "drift_detected"]


def test_killed_mid_delta_it_keeps_enforcing_and_converges_after_restart(fleet, tmp_path):
    lab, controller = fleet.lab, fleet.controller
    daemon = fleet.daemon
    spool = IncidentSpool(fleet.directory / "state" / "incidents.sqlite")
    incident = {"id": "edge-1:7:packets_per_second:1", "tenant_id": 7, "check": "packets_per_second",
                "threshold": 100.0, "started_at": time.time(), "peak_value": 900.0, "peak_at": time.time(),
                "ended_at": None, "interfaces": [lab.edge_if]}
    # a large delta: 150,000 new /32s, each in a /24 of its own (one frame; 150,000 table nodes written in place)
    big = [f"{11 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1" for i in range(150_000)]
    big_file = tmp_path / "big.txt"
    big_file.write_text("\n".join(big) + "\n")
    # a small delta first: the stored revision is then the snapshot with this delta appended
    mark = len(daemon.lines)
    small = controller.block("198.19.240.1", reason="appended to the stored revision")
    daemon.wait_log("revision_applied", revision=small, after=mark, datapath="delta", timeout=60)
    mark = len(daemon.lines)
    large = import_list(controller, big_file, "a large delta")
    daemon.wait_log("revision_applying", revision=large, after=mark, timeout=120)
    spool.record(incident, "started")        # (in the spool of the daemon being killed)
    daemon.kill9()
    killed_lines = daemon.lines[mark:]
    assert not [e for e in killed_lines if e.get("event") == "revision_applied" and e.get("revision") == large], \
        "the delta finished before the kill; the test did not kill mid-delta"
    # the datapath keeps enforcing without its daemon
    sample = random.Random(5).sample(fleet.listed, 10)
    held = lab.verdicts([s.split("/")[0] for s in sample] + spare_hosts(3, 1))
    assert all(v == XDP_DROP for v in held.values()), held

    # a revision made while it is down; the restarted daemon converges to it
    latest = controller.block("198.19.250.9", reason="while edge-1 is down")
    restarted = fleet.start_agent()
    restored = restarted.wait_log("revision_restored", timeout=120)
    # the snapshot with the small delta appended (or, killed between writing the file and logging, the large one)
    assert restored["revision"] in (small, large), restored
    entry = restarted.wait_log("revision_applied", revision=latest, timeout=300)
    assert entry["revision"] == latest
    got = lab.verdicts(["198.19.250.9", "198.19.240.1", big[0], big[-1], big[len(big) // 2]]
                       + [s.split("/")[0] for s in sample])
    assert all(v == XDP_DROP for v in got.values()), got

    def fleet_at(revision):
        return all(n["applied_revision"] == revision and n["connected"]
                   for n in controller.api("GET", "/fleet")["nodes"])
    deadline = time.monotonic() + 30
    while not fleet_at(latest):
        assert time.monotonic() < deadline, "the fleet view does not show edge-1 at the latest revision"
        time.sleep(0.2)
    # the incident: stored once, dropped from the spool only after its acknowledgement
    deadline = time.monotonic() + 30
    while spool.pending():
        assert time.monotonic() < deadline, "the incident was not acknowledged"
        time.sleep(0.2)
    db = sqlite3.connect(controller.directory / "controller.db")
    rows = db.execute("SELECT incident_id, node FROM fleet_incidents").fetchall()
    db.close()
    # (the restarted daemon adopts the open incident from its spool and ends it: an "ended" report may follow)
    ids = [incident_id for incident_id, node in rows if node == "edge-1"]
    assert len(ids) == len(set(ids)) == len(rows), rows
    assert "edge-1:7:packets_per_second:1/started" in ids
    assert set(ids) <= {"edge-1:7:packets_per_second:1/started", "edge-1:7:packets_per_second:1/ended"}
    spool.close()
