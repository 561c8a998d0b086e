"""The controller runs on hosts without BPF: none of its modules loads the datapath or libbpf."""

import subprocess
import sys

MODULES = ["controller.api", "controller.cli", "controller.server", "controller.demo", "controller.registry",
           "controller.blocklists", "controller.revisions", "controller.audit", "controller.tokens",
           "controller.workflow.ladder", "controller.workflow.api", "controller.workflow.cli",
           "controller.workflow.notify", "controller.workflow.demo"]


def test_controller_never_imports_the_datapath():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MODULES) +
            "print('\\n'.join(m for m in sys.modules if m.startswith('agent.datapath') or 'libbpf' in m))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
