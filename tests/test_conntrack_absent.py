"""The datapath loads where the conntrack kfuncs are unavailable, and
policies that need them are refused there, before anything is applied.

Where libbpf cannot resolve the conntrack kfuncs (nf_conntrack absent, or
a module while the agent lacks CAP_SYS_ADMIN) the agent loads the build
without conntrack calls, bpf/edgewarden_no_conntrack.bpf.c. This kernel has
nf_conntrack built in and it cannot be unloaded, so the tests load that
build directly, which is what the agent loads on such a host; the choice
itself follows conntrack_unusable_reason(), checked here against
/proc/kallsyms. Before the fix there was one build with strong kfunc
externs, which failed to load on such a host whatever the policy."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.datapath.abi import VerdictReason
from agent.datapath.conntrack import (
    CONNTRACK_KFUNCS, ConntrackUnavailable, KfuncHome, conntrack_unusable_reason, kernel_function_home,
)
from agent.datapath.private import PrivateDatapath
from agent.datapath.program import LoadedProgram, object_path, read_revision
from agent.datapath.scope import forget_namespace
from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets
from frames import tcp_ipv4_frame, udp_ipv4_frame
from native.bpf_build import compile_bpf
from oracle import Oracle

REPO = Path(__file__).resolve().parent.parent
VIP, CLIENT = "203.0.113.10", "198.51.100.9"


@pytest.fixture(scope="module")
def absent_object() -> Path:
    path = object_path(conntrack=False)
    assert path.exists(), f"{path} was not built"
    return path


def policy(revision=1, **flood):
    return policy_from_document({"revision": revision, "tenants": [
        {"id": 1, "name": "shop", "vips": [VIP], "flood": flood}]}, "tests/test_conntrack_absent.py")


def test_this_kernel_has_conntrack_so_the_default_object_uses_it():
    """The other half of the comparison: the kfuncs are in /proc/kallsyms
    here, built in (vmlinux BTF), and the agent loads the conntrack build."""
    with open("/proc/kallsyms") as kallsyms:
        symbols = {line.split()[2] for line in kallsyms}
    assert set(CONNTRACK_KFUNCS) <= symbols
    assert {kernel_function_home(name) for name in CONNTRACK_KFUNCS} == {KfuncHome.VMLINUX}
    assert kernel_function_home("ew_no_such_kfunc") is KfuncHome.NONE
    assert conntrack_unusable_reason() is None
    with LoadedProgram() as program:
        assert program.conntrack and set(program.kfuncs) == set(CONNTRACK_KFUNCS)


def test_loads_without_the_conntrack_kfuncs(absent_object):
    with LoadedProgram(object_file=absent_object) as program:
        assert not program.conntrack and program.kfuncs == []


def test_without_conntrack_other_defences_still_judge_as_the_reference(absent_object):
    p = policy(syn_ack="drop", fragments="drop", syns_per_second=100, syn_burst=100)
    buckets = ReferenceBuckets()
    buckets.apply(p)
    with PrivateDatapath(p, object_file=absent_object) as datapath:
        oracle = Oracle(datapath, p, buckets)
        assert oracle.check(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, flags="SA")).reason is VerdictReason.drop_syn_ack
        assert oracle.check(udp_ipv4_frame(CLIENT, VIP, 53, 5353)).reason is VerdictReason.drop_amplification
        assert oracle.check(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, flags="A")).reason is VerdictReason.pass_allowed


@pytest.mark.parametrize("flood", [{"syn_cookies": True}, {"syn_ack": "track"}], ids=["cookies", "track"])
def test_a_policy_needing_conntrack_is_refused_and_nothing_applied(absent_object, flood):
    with PrivateDatapath(policy(1), object_file=absent_object) as datapath:
        with pytest.raises(ConntrackUnavailable, match=r"tenant 1 \(shop\).*loaded without conntrack.*nothing was"):
            datapath.apply(policy(2, **flood))
        assert read_revision(datapath.program.maps) == 1, "the refused revision reached the maps"


def test_a_failed_lookup_is_not_read_as_no_connection(tmp_path):
    """opts.error: a lookup that fails (here: a network namespace id that
    does not exist, -ENONET) cannot tell whether the segment belongs to a
    connection, so it goes on to the kernel; only -ENOENT is 'no
    connection'. Before, every NULL was 'no connection' (drop_bad_cookie)."""
    failing = compile_bpf(REPO / "bpf" / "edgewarden.bpf.c", tmp_path / "failing.bpf.o", {"EW_CT_NETNS_ID": 987654})
    ack = tcp_ipv4_frame(CLIENT, VIP, 40000, 443, flags="A")
    with PrivateDatapath(policy(syn_cookies=True, syn_ack="pass"), object_file=failing) as datapath:
        assert datapath.program.conntrack
        assert datapath.run(ack) == 2   # XDP_PASS
    with PrivateDatapath(policy(syn_cookies=True, syn_ack="pass")) as datapath:
        assert datapath.run(ack) == 1   # XDP_DROP: conntrack answered "no entry"


ATTACH_WITHOUT_CONNTRACK = """
import sys
from pathlib import Path
from agent.datapath import attachment, program
from agent.datapath.conntrack import ConntrackUnavailable
from agent.datapath.syscalls import xdp_query
from agent.policy import policy_from_document
import socket

program.object_path = lambda conntrack=True: Path(sys.argv[1])
ifname = sys.argv[2]
doc = {"revision": 1, "tenants": [{"id": 1, "name": "shop", "vips": ["203.0.113.10"], "flood": {}}]}
status, _ = attachment.attach(ifname, attachment.AttachMode.GENERIC, policy_from_document(doc, "t"))
print("attached", status.ours, status.mode)
doc["revision"] = 2
doc["tenants"][0]["flood"] = {"syn_cookies": True}
before = xdp_query(socket.if_nametoindex(ifname)).prog_id
try:
    attachment.attach(ifname, attachment.AttachMode.GENERIC, policy_from_document(doc, "t"))
except ConntrackUnavailable as err:
    print("refused", err)
print("same program", xdp_query(socket.if_nametoindex(ifname)).prog_id == before)
attachment.detach(ifname)
"""


def test_attaches_without_conntrack_and_refuses_cookies_before_nftables(absent_object):
    """Live, in a namespace of the test's own: the object without conntrack
    attaches; a policy with cookies is refused with no program replaced and
    no nftables table made."""
    tag = uuid.uuid4().hex[:6]
    ns, ifname = f"ewnoct-{tag}", f"ewn{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", f"ewm{tag}"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)
        result = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-c",
                                 ATTACH_WITHOUT_CONNTRACK, str(absent_object), ifname],
                                capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "attached True generic"
        assert lines[1].startswith("refused ") and "syn_cookies" in lines[1] and "nothing was applied" in lines[1]
        assert lines[2] == "same program True"
        tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
        assert f"edgewarden_{ifname}" not in tables.stdout
    finally:
        forget_namespace(ns)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
