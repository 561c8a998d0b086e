"""Build of the compiled parts: the XDP object (clang), the cffi libbpf
binding, the Cython counter core, the pybind11 prefix compiler and the cffi
DPDK worker (native/dpdk/, which needs libdpdk-dev)."""

import sys
from pathlib import Path

from Cython.Build import cythonize
from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "native"))
from abi_constants import write_module as write_abi_constants  # noqa: E402
from bpf_build import compile_bpf  # noqa: E402

ABI_HEADER = ROOT / "native" / "include" / "edgewarden_abi.h"
BPF_SOURCES = sorted((ROOT / "bpf").rglob("*.[ch]")) + [ABI_HEADER]
# entry file under bpf/ -> the package directory its object is installed in
BPF_OBJECTS = {"edgewarden.bpf.c": "agent/datapath", "edgewarden_no_conntrack.bpf.c": "agent/datapath",
               "lab/flood_gen.bpf.c": "agent/lab",
               "lab/lab_peer.bpf.c": "agent/lab"}
ABI_CONSTANTS = "agent/abi_constants.py"   # the header's constants for the pure-Python policy package


class BuildWithBpf(build_ext):
    """build_ext that also compiles the BPF objects into their packages and
    writes the header's constants as a plain-Python module."""

    def run(self):
        targets = [ROOT] if self.inplace else [ROOT, Path(self.build_lib)]
        for base in targets:
            (base / ABI_CONSTANTS).parent.mkdir(parents=True, exist_ok=True)
            write_abi_constants(base / ABI_CONSTANTS, ABI_HEADER)
        super().run()
        newest_source = max(p.stat().st_mtime for p in BPF_SOURCES)
        for entry, package_dir in BPF_OBJECTS.items():
            object_name = Path(entry).name.replace(".c", ".o")
            for base in targets:
                target = base / package_dir / object_name
                if not target.exists() or target.stat().st_mtime < newest_source:
                    compile_bpf(ROOT / "bpf" / entry, target, echo=True)


extensions = cythonize(
    [
        __import__("setuptools").Extension(
            "agent._counters", ["native/counters.pyx"], extra_compile_args=["-O3"],
        )
    ],
    language_level=3,
)
extensions.append(
    Pybind11Extension("agent._prefixes", ["native/prefix_compiler.cpp"], cxx_std=17, extra_compile_args=["-O3"],
                      depends=["native/entry_table.h"], include_dirs=["native"])
)

setup(
    ext_modules=extensions,
    cffi_modules=["native/libbpf_build.py:ffibuilder", "native/dpdk/dpdk_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithBpf},
)
