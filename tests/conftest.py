"""Shared fixtures: these tests need root and a real kernel (BPF, XDP on
veth, network namespaces). Missing prerequisites fail loudly, never skip."""

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
CAPTURES = TESTS_DIR / "data" / "captures"   # see its README: source and licence
sys.path.insert(0, str(TESTS_DIR))   # tests/frames.py and tests/oracle.py


def pytest_sessionstart(session):
    problems = []
    if os.geteuid() != 0:
        problems.append("tests must run as root (BPF syscalls, XDP, network namespaces)")
    for tool in ("ip", "nsenter", "ping", "tshark"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (make setup installs it)")
    if problems:
        pytest.exit("cannot run the edgewarden suite:\n  " + "\n  ".join(problems), returncode=3)


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    if not CAPTURES.is_dir() or not any(CAPTURES.glob("*.pcap*")):
        pytest.fail(f"attack captures not found in {CAPTURES}; they are part of the repository (git checkout tests/data)")
    return CAPTURES
