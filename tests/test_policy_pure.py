"""agent.policy is pure Python: a controller host with no libbpf, no BPF
objects and none of the project's compiled modules validates policies."""

import subprocess
import sys
from pathlib import Path

from agent import abi_constants
from agent._libbpf import lib
from agent.datapath import abi
from agent.policy.model import AMPLIFICATION_PORTS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = REPO / "configs" / "policy.example.toml"

# Run in a fresh interpreter in which the compiled modules and the datapath
# package cannot be imported at all: any import of them raises.
HIDDEN_IMPORTS = """
import importlib.abc, sys
HIDDEN = ("agent._libbpf", "agent._counters", "agent._prefixes", "agent.datapath", "cffi", "_cffi_backend")
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in HIDDEN or name.startswith(tuple(h + "." for h in HIDDEN)):
            raise ImportError(f"{name} is hidden in this test")
        return None
sys.meta_path.insert(0, Hide())
import agent.policy
policy = agent.policy.load_policy(sys.argv[1])
hidden = sorted(m for m in sys.modules if m in HIDDEN)
print(policy.revision, len(policy.tenants), hidden)
"""


def test_policy_validates_with_the_compiled_modules_hidden():
    result = subprocess.run([sys.executable, "-c", HIDDEN_IMPORTS, str(EXAMPLE_POLICY)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    revision, tenants, hidden = result.stdout.split(maxsplit=2)
    assert int(tenants) > 0 and hidden.strip() == "[]"


def test_a_bad_policy_is_refused_with_the_compiled_modules_hidden(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('revision = 1\n[[tenants]]\nid = 1\nname = "x"\nvips = ["not-an-address"]\n')
    result = subprocess.run([sys.executable, "-c", HIDDEN_IMPORTS, str(bad)], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert "PolicyError" in result.stderr and "not-an-address" in result.stderr


def test_generated_constants_are_the_compiled_headers():
    """agent/abi_constants.py (written from the header at build time) agrees
    with what the C compiler made of the same header."""
    defines = {name: value for name, value in vars(abi_constants).items() if name.startswith("EW_")
               and isinstance(value, int)}
    assert len(defines) > 20
    for name, value in defines.items():
        assert getattr(lib, name) == value, name
    for enum_members in (abi_constants.EW_VERDICT_REASON, abi_constants.EW_TRAFFIC_CLASS,
                         abi_constants.EW_AMPLIFICATION_PORT, abi_constants.EW_BUCKET_KIND):
        for member, value in enum_members.items():
            assert getattr(lib, member) == value, member
    assert abi.AMPLIFICATION_PORTS == AMPLIFICATION_PORTS
    assert AMPLIFICATION_PORTS[161] == lib.EW_AMP_PORT_161
