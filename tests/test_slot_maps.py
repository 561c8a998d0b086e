"""Counter slots sized to the policy: an attached interface with a small
policy has small per-CPU slot maps (read back with bpftool); a policy with
more tenants than their headroom grows them, by a reload that carries every
count over, and a counter monitor opened before the growth follows it.
Traffic is BPF_PROG_TEST_RUN on the pinned program, in a namespace of the
test's own; the sizing arithmetic is checked against the kernel's own
figures."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.datapath import abi
from agent.datapath.scope import bpffs_base, forget_namespace, namespace_scope_of
from agent.datapath.slot_maps import SLOT_MAPS, SLOT_STEP, bytes_per_slot, capacity_for, slots_needed
from agent.datapath.syscalls import possible_cpus
from agent.policy import policy_from_document

REPO = Path(__file__).resolve().parent.parent

# In the namespace: attach with a few tenants, count traffic, hold a monitor,
# apply a policy with more tenants than the slots, count more, report.
GROW = """
import json, sys
sys.path.insert(0, "tests")
from agent.datapath import attachment, apply_policy
from agent.datapath.counters import CounterMonitor, read_counters
from agent.datapath.program import live_maps, open_pinned_maps
from agent.datapath.scope import pin_dir_for
from agent.datapath.syscalls import obj_get, prog_info, test_run
from agent.policy import policy_from_document
from frames import icmp_ipv4_frame

ifname, small, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def doc(revision, tenants):
    return {"revision": revision, "tenants": [
        {"id": i, "name": f"t{i}", "vips": [f"198.51.{100 + i // 250}.{i % 250 + 1}"]} for i in range(1, tenants + 1)]}

def send(tenant, count):
    fd = obj_get(str(pin_dir_for(ifname) / "prog"))
    frame = icmp_ipv4_frame("192.0.2.1", f"198.51.{100 + tenant // 250}.{tenant % 250 + 1}")
    test_run(fd, frame, repeat=count)
    return prog_info(fd).id

def packets():
    with live_maps(ifname) as maps:
        return {str(t): c.packets for t, c in read_counters(maps).items()}

attachment.attach(ifname, attachment.AttachMode.GENERIC, policy_from_document(doc(1, small), "small"))
first_program = send(1, 5)
send(2, 3)
send(small, 7)
held = open_pinned_maps(pin_dir_for(ifname))
monitor = CounterMonitor(held)
monitor.scan()
before = packets()
print(json.dumps({"before": before}), flush=True)
input()                       # the test reads the map sizes
apply_policy(ifname, policy_from_document(doc(2, big), "big"))
second_program = send(1, 2)
send(big, 4)
scan = monitor.scan()
followed = {str(t): sum(scan.row(i)[0][f] for f in range(12, 12 + 16))
            for i, t in enumerate(scan.tenant_ids) if t is not None}
print(json.dumps({"after": packets(), "followed": followed,
                  "reloaded": first_program != second_program}), flush=True)
input()
attachment.detach(ifname)
"""


def bpftool_max_entries(path: Path) -> int:
    shown = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(path)], capture_output=True, text=True,
                           check=True)
    return json.loads(shown.stdout)["max_entries"]


def test_slot_maps_are_small_for_a_small_policy_and_grow_keeping_every_count():
    tag = uuid.uuid4().hex[:6]
    ns, ifname = f"ewslot-{tag}", f"ews{tag}"
    small, big = 3, 100
    pin_dir = bpffs_base() / namespace_scope_of(ns) / ifname
    subprocess.run(["ip", "netns", "add", ns], check=True)
    engine = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", f"ewt{tag}"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)
        engine = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-c", GROW, ifname,
                                   str(small), str(big)], cwd=REPO, text=True, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def report() -> dict:
            line = engine.stdout.readline()
            assert line, engine.stderr.read()
            return json.loads(line)

        before = report()["before"]
        assert before == {"0": 0, "1": 5, "2": 3, str(small): 7}
        assert {name: bpftool_max_entries(pin_dir / name) for name in SLOT_MAPS} == \
            {name: SLOT_STEP * per_slot for name, per_slot in SLOT_MAPS.items()}
        engine.stdin.write("\n")
        engine.stdin.flush()
        after = report()
        grown = capacity_for(big + 1)
        assert grown > SLOT_STEP
        assert {name: bpftool_max_entries(pin_dir / name) for name in SLOT_MAPS} == \
            {name: grown * per_slot for name, per_slot in SLOT_MAPS.items()}
        assert after["reloaded"], "growing the slot maps loads the program again"
        # Every count made before the growth is still there, and the new program counts on.
        expected = {str(t): 0 for t in range(big + 1)} | {"1": 7, "2": 3, str(small): 7, str(big): 4}
        assert after["after"] == expected
        assert after["followed"] == expected, "a monitor opened before the growth reads the grown maps"
        assert not list(pin_dir.glob("*_grown")), "no staged pin is left behind"
        engine.stdin.write("\n")
        engine.stdin.flush()
        assert engine.wait(timeout=60) == 0, engine.stderr.read()
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
            engine.wait()
        forget_namespace(ns)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_sizing_follows_the_policy_with_headroom():
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": i, "name": f"t{i}", "vips": [f"198.51.100.{i}"]} for i in range(1, 11)]}, "ten")
    assert slots_needed(policy, {}) == 11
    assert slots_needed(None, {5: 40}) == 41
    assert slots_needed(policy, {5: 40}) == 41          # tenant 5 keeps slot 40, the others take 1..9
    assert [capacity_for(n) for n in (1, 11, 51, 52, 1001, abi.MAX_TENANTS)] == [64, 64, 64, 128, 1280, abi.MAX_TENANTS]
    for n in range(1, abi.MAX_TENANTS + 1, 37):
        capacity = capacity_for(n)
        assert capacity % SLOT_STEP == 0 and n <= capacity <= abi.MAX_TENANTS
        assert capacity >= n + n // 4 or capacity == abi.MAX_TENANTS, n


def test_bytes_per_slot_is_what_the_kernel_charges():
    """The memory figure's arithmetic (values rounded to 8 bytes, one per
    possible CPU) against the kernel's own memlock of a loaded map."""
    from agent.datapath.program import LoadedProgram
    with LoadedProgram(pin_dir=None, tenant_capacity=SLOT_STEP * 8) as small, \
            LoadedProgram(pin_dir=None, tenant_capacity=SLOT_STEP * 16) as large:
        charged = 0
        for name in SLOT_MAPS:
            fds = small.maps[name].fd, large.maps[name].fd
            memlock = [_fd_memlock(fd) for fd in fds]
            charged += memlock[1] - memlock[0]
    assert charged == bytes_per_slot(possible_cpus()) * SLOT_STEP * 8


def _fd_memlock(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    pytest.fail(f"no memlock in /proc/self/fdinfo/{fd}")


def test_counts_the_old_program_makes_during_a_growth_are_carried_over(monkeypatch):
    """The instant between the copy and the swap: the old program (still
    loaded, on the old maps) and the new one both count; after the commit
    the live pin holds the copy, the old program's late counts and the new
    program's own. Maps pinned in a directory of the test's own; nothing is
    attached (the programs run through BPF_PROG_TEST_RUN)."""
    from agent.datapath.apply import apply_policy_to_maps
    from agent.datapath.counters import read_counters
    from agent.datapath.program import LoadedProgram, close_maps, open_pinned_maps
    from agent.datapath.syscalls import test_run
    from frames import icmp_ipv4_frame

    from agent.datapath import slot_maps
    # Copies in chunks of 5 counter slots, so the copy and the late counts cross chunk boundaries.
    monkeypatch.setattr(slot_maps, "CHUNK_BYTES", 5 * 352 * possible_cpus())
    pin_dir = Path("/sys/fs/bpf") / f"ewslot-test-{uuid.uuid4().hex[:8]}"
    pin_dir.mkdir()
    ids = (1, 2, *range(3, 13))     # tenants 1 and 2 in slots 1 and 2; 12 in slot 12, in the third chunk
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": i, "name": f"t{i}", "vips": [f"198.51.100.{i}"]} for i in ids]}, "twelve")
    frame = {i: icmp_ipv4_frame("192.0.2.1", f"198.51.100.{i}") for i in ids}
    try:
        with LoadedProgram(pin_dir=pin_dir, slots=SLOT_STEP) as old:
            old.commit_slot_maps()
            apply_policy_to_maps(old.maps, policy)
            test_run(old.prog_fd, frame[1], repeat=10)
            with LoadedProgram(pin_dir=pin_dir, slots=SLOT_STEP * 3) as new:
                assert new.slots == SLOT_STEP * 3 and old.slots == SLOT_STEP
                assert sorted(p.name for p in pin_dir.glob("*_grown")) == sorted(f"{n}_grown" for n in SLOT_MAPS)
                test_run(old.prog_fd, frame[1], repeat=4)       # late: after the copy, on the old maps
                test_run(old.prog_fd, frame[2], repeat=6)
                test_run(old.prog_fd, frame[12], repeat=2)
                test_run(new.prog_fd, frame[1], repeat=3)       # the new program, on the new maps
                test_run(new.prog_fd, frame[12], repeat=1)
                new.commit_slot_maps()
            assert not list(pin_dir.glob("*_grown"))
            maps = open_pinned_maps(pin_dir)
            try:
                assert maps["ew_counters"].max_entries == SLOT_STEP * 3
                assert {t: c.packets for t, c in read_counters(maps).items()} == \
                    {t: 0 for t in (0, *ids)} | {1: 17, 2: 6, 12: 3}
            finally:
                close_maps(maps)
            # A load that is not committed (its program never attached) leaves the live maps as they are.
            with LoadedProgram(pin_dir=pin_dir, slots=SLOT_STEP * 5) as abandoned:
                assert abandoned.slots == SLOT_STEP * 5
            assert not list(pin_dir.glob("*_grown"))
            maps = open_pinned_maps(pin_dir)
            try:
                assert maps["ew_counters"].max_entries == SLOT_STEP * 3
                assert read_counters(maps)[1].packets == 17
            finally:
                close_maps(maps)
    finally:
        for entry in pin_dir.iterdir():
            entry.unlink()
        pin_dir.rmdir()


@pytest.mark.live
def test_the_daemon_grows_the_slots_on_reload_and_its_metrics_keep_counting(tmp_path):
    """The agent daemon in lab namespaces: a reload with more tenants than
    the slots grows them; the daemon's own counter scans (its metrics)
    follow the grown maps, and the pings counted before are still there."""
    import re
    import signal

    from agent.lab import EdgeLab, in_namespace
    from daemon_harness import DaemonProcess, NotifySocket, free_port, write_config
    from waiting import wait_until

    one = 'revision = 1\n[[tenants]]\nid = 1\nname = "shop"\nvips = ["203.0.113.10"]\n'
    many = one.replace("revision = 1", "revision = 2") + "".join(
        f'[[tenants]]\nid = {t}\nname = "t{t}"\nvips = ["2001:db8::{t:x}"]\n' for t in range(2, 101))
    port = free_port()
    with EdgeLab() as lab:
        config = write_config(tmp_path, [lab.edge_if], one, metrics_port=port,
                              extra="[accounting]\ninterval_seconds = 0.2\n")
        notify = NotifySocket(tmp_path / "notify.sock")
        daemon = DaemonProcess(lab.edge_ns, config, notify)
        pin_dir = bpffs_base() / namespace_scope_of(lab.edge_ns) / lab.edge_if

        def tenant_packets() -> float | None:
            out = subprocess.run(in_namespace(lab.edge_ns, [sys.executable, "-c",
                                 f"import urllib.request; print(urllib.request.urlopen("
                                 f"'http://127.0.0.1:{port}/metrics').read().decode())"]),
                                 capture_output=True, text=True, timeout=30)
            found = re.search(r'edgewarden_tenant_packets_total\{tenant="1"\} (\S+)', out.stdout)
            return float(found.group(1)) if found else None

        def ping(count: int) -> None:
            lab.ns(lab.peer_ns, ["ping", "-q", "-c", str(count), "-i", "0.01", "-I", "198.51.100.1", "203.0.113.10"],
                   check=False)

        try:
            notify.wait_for("READY", "1")
            assert bpftool_max_entries(pin_dir / "ew_counters") == SLOT_STEP
            ping(20)
            wait_until(tenant_packets, lambda n: n == 20, 30, "the daemon's metrics to count 20 pings")
            (tmp_path / "policy.toml").write_text(many)
            mark = len(daemon.lines)
            daemon.signal(signal.SIGHUP)
            daemon.wait_log("reloaded", after=mark, revision=2)
            assert bpftool_max_entries(pin_dir / "ew_counters") == capacity_for(101) > SLOT_STEP
            ping(5)
            wait_until(tenant_packets, lambda n: n == 25, 30, "the daemon's metrics to count 25 pings")
        finally:
            daemon.stop()
            notify.close()


def test_array_values_reads_from_any_index():
    """The chunked reads of a growth: `entries` values from `start`, for a per-CPU array."""
    from agent.datapath.program import LoadedProgram
    with LoadedProgram(pin_dir=None, tenant_capacity=SLOT_STEP) as program:
        budgets = program.maps["ew_sample_budget"]
        for slot in range(SLOT_STEP):
            budgets.update(struct.pack("=I", slot), bytes([slot]) * budgets.value_size)
        size = budgets.value_size
        assert bytes(budgets.array_values(3, 5)) == b"".join(bytes([s]) * size for s in (5, 6, 7))
        assert bytes(budgets.array_values(None, SLOT_STEP - 2)) == \
            b"".join(bytes([s]) * size for s in (SLOT_STEP - 2, SLOT_STEP - 1))
        assert bytes(budgets.array_values(2)) == bytes([0]) * size + bytes([1]) * size


DIES_MID_GROWTH = """
import os, sys
from pathlib import Path
from agent.datapath.program import LoadedProgram
from agent.datapath.scope import PROGRAM_PIN

pin_dir, slots, attached = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "attached"
grown = LoadedProgram(pin_dir=pin_dir, slots=slots)
if attached:
    grown.pin_program(pin_dir / PROGRAM_PIN)     # as attach_locked does right after the attach
os._exit(0)                                      # killed before the commit: no close, no rename
"""


def test_a_growth_killed_before_its_commit_is_finished_or_dropped_by_the_next_load():
    """kill -9 between the attach and the renames: the next load finds the
    staged maps in use by the pinned program and makes them the live ones,
    counts made since included; killed before the attach, the staged maps
    are dropped and the live ones kept."""
    from agent.datapath.apply import apply_policy_to_maps
    from agent.datapath.counters import read_counters
    from agent.datapath.program import LoadedProgram, close_maps, open_pinned_maps
    from agent.datapath.scope import PROGRAM_PIN
    from agent.datapath.syscalls import obj_get, test_run
    from frames import icmp_ipv4_frame

    pin_dir = Path("/sys/fs/bpf") / f"ewslot-test-{uuid.uuid4().hex[:8]}"
    pin_dir.mkdir()
    policy = policy_from_document({"revision": 1, "tenants": [{"id": 1, "name": "t1", "vips": ["198.51.100.1"]}]},
                                  "one")
    frame = icmp_ipv4_frame("192.0.2.1", "198.51.100.1")

    def die_growing(slots: int, attached: bool) -> None:
        done = subprocess.run([sys.executable, "-c", DIES_MID_GROWTH, str(pin_dir), str(slots),
                               "attached" if attached else "loaded"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in pin_dir.glob("*_grown")) == sorted(f"{n}_grown" for n in SLOT_MAPS)

    def live() -> tuple[int, int]:
        maps = open_pinned_maps(pin_dir)
        try:
            return maps["ew_counters"].max_entries, read_counters(maps)[1].packets
        finally:
            close_maps(maps)

    try:
        with LoadedProgram(pin_dir=pin_dir, slots=SLOT_STEP) as first:
            first.commit_slot_maps()
            apply_policy_to_maps(first.maps, policy)
            first.pin_program(pin_dir / PROGRAM_PIN)
            test_run(first.prog_fd, frame, repeat=10)
        die_growing(SLOT_STEP * 3, attached=True)
        program = obj_get(str(pin_dir / PROGRAM_PIN))      # the grown program, on the staged maps
        try:
            test_run(program, frame, repeat=3)
        finally:
            os.close(program)
        with LoadedProgram(pin_dir=pin_dir, slots=SLOT_STEP):
            assert not list(pin_dir.glob("*_grown"))
        assert live() == (SLOT_STEP * 3, 13)
        die_growing(SLOT_STEP * 5, attached=False)
        with LoadedProgram(pin_dir=pin_dir, slots=SLOT_STEP):
            assert not list(pin_dir.glob("*_grown"))
        assert live() == (SLOT_STEP * 3, 13)
    finally:
        for entry in pin_dir.iterdir():
            entry.unlink()
        pin_dir.rmdir()
