"""Pins and state are scoped by network namespace: bpffs and /run are shared
by every namespace on the host, interface names are not. Two namespaces
with an interface of the same name are managed independently, and removing
a lab namespace removes what edgewarden kept for it, attached or not."""

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from agent.lab import NETNS_DIR, cli_in, remove_namespace, run

pytestmark = pytest.mark.live

POLICY = 'revision = {revision}\n[[tenants]]\nid = 1\nname = "{name}"\nvips = ["203.0.113.10"]\n'


@pytest.fixture
def twins():
    """Two namespaces, each with a veth pair whose inner end is called ewtwin0."""
    tag = secrets.token_hex(3)
    names = [f"ew-{tag}-twin{i}" for i in (1, 2)]
    try:
        for i, ns in enumerate(names, 1):
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", "ewtwin0", "netns", ns, "type", "veth", "peer", "name", "ewtwin1", "netns", ns])
            for dev in ("ewtwin0", "ewtwin1"):
                run(["nsenter", f"--net={NETNS_DIR}/{ns}", "ip", "link", "set", dev, "up"])
        yield names
    finally:
        for ns in names:
            remove_namespace(ns)


def status(ns):
    return json.loads(cli_in(ns, "status", "--json").stdout)["interfaces"]


def test_same_interface_name_in_two_namespaces(twins, tmp_path):
    for i, ns in enumerate(twins, 1):
        policy = tmp_path / f"p{i}.toml"
        policy.write_text(POLICY.format(revision=i, name=f"tenant-of-{i}"))
        cli_in(ns, "attach", "ewtwin0", "--mode", "native", "--policy", str(policy))
    first, second = (status(ns) for ns in twins)
    assert [s["interface"] for s in first] == [s["interface"] for s in second] == ["ewtwin0"]
    assert first[0]["pin_dir"] != second[0]["pin_dir"]
    assert (first[0]["policy_revision"], second[0]["policy_revision"]) == (1, 2)
    # Each namespace's CLI sees only its own interface and policy.
    stats = json.loads(cli_in(twins[1], "stats", "--json").stdout)["interfaces"]
    assert list(stats) == ["ewtwin0"] and stats["ewtwin0"]["tenants"][1]["name"] == "tenant-of-2"
    cli_in(twins[0], "detach", "ewtwin0")
    assert status(twins[0]) == [] and status(twins[1])[0]["policy_revision"] == 2
    assert Path(second[0]["pin_dir"]).is_dir()


def test_removing_a_namespace_removes_its_pins_even_when_still_attached(twins, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY.format(revision=1, name="t"))
    cli_in(twins[0], "attach", "ewtwin0", "--mode", "native", "--policy", str(policy))
    pin_dir = Path(status(twins[0])[0]["pin_dir"])
    state_dir = Path("/run/edgewarden") / pin_dir.relative_to("/sys/fs/bpf/edgewarden")
    assert pin_dir.is_dir() and state_dir.is_dir()
    remove_namespace(twins[0])
    assert not pin_dir.exists() and not state_dir.exists()
    assert not os.path.exists(f"{NETNS_DIR}/{twins[0]}")
    # The host namespace's own view is untouched by any of this.
    host = subprocess.run(["ls", "/sys/fs/bpf/edgewarden"], capture_output=True, text=True).stdout.split()
    assert "ewtwin0" not in host
