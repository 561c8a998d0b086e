"""Two changers of one interface at once: `block add` in two processes,
50 entries each, against the live maps of an attached interface. Read,
change and apply are one locked step, so all 100 entries must be in the
maps afterwards, and the revision must count 100 changes."""

import ipaddress
import json
import subprocess
import sys

import pytest

from agent.lab import EdgeLab, in_namespace
from agent.policy import policy_from_document, policy_to_toml

pytestmark = pytest.mark.live

ENTRIES_PER_PROCESS = 50

# Each process runs the CLI's own entry point 50 times (what 50 `edgewarden
# block add` invocations run), without 50 interpreter start-ups.
CHANGER = """
import sys
from agent.cli import main
first_octet, ifname = int(sys.argv[1]), sys.argv[2]
for i in range({n}):
    rc = main(["block", "add", f"10.{{first_octet}}.{{i}}.0/24", "--iface", ifname])
    if rc != 0:
        sys.exit(rc)
""".format(n=ENTRIES_PER_PROCESS)


def test_two_concurrent_changers_lose_no_update(tmp_path):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_to_toml(policy_from_document(
        {"revision": 1, "tenants": [{"id": 1, "name": "shop", "vips": ["203.0.113.10"]}]}, "test")))
    with EdgeLab() as lab:
        lab.edgewarden("attach", lab.edge_if, "--mode", "native", "--policy", str(policy_file))
        changers = [subprocess.Popen(in_namespace(lab.edge_ns, [sys.executable, "-c", CHANGER, str(octet), lab.edge_if]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for octet in (1, 2)]
        for changer in changers:
            _, err = changer.communicate(timeout=240)
            assert changer.returncode == 0, err
        expected = {ipaddress.ip_network(f"10.{octet}.{i}.0/24") for octet in (1, 2) for i in range(ENTRIES_PER_PROCESS)}
        status = json.loads(lab.edgewarden("status", "--json").stdout)["interfaces"][0]
        assert status["policy_revision"] == 1 + 2 * ENTRIES_PER_PROCESS
        listed = json.loads(lab.edgewarden("block", "list", "--json").stdout)["interfaces"][lab.edge_if]
        in_maps = [ipaddress.ip_network(e["prefix"]) for e in listed if e["tenant_id"] is None]
        # the tables hold the minimal merge of the list: compare what is covered
        assert list(ipaddress.collapse_addresses(in_maps)) == list(ipaddress.collapse_addresses(expected))
        lab.edgewarden("detach", lab.edge_if)
