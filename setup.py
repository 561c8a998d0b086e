"""Build of the compiled parts: the XDP object (clang), the cffi libbpf
binding, the Cython counter core and the pybind11 prefix compiler."""

import os
import shutil
import subprocess
from pathlib import Path

from Cython.Build import cythonize
from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BPF_SOURCES = sorted((ROOT / "bpf").glob("*.[ch]")) + [ROOT / "native" / "include" / "edgewarden_abi.h"]
# entry file -> object: the datapath, and the lab's flood generator
BPF_OBJECTS = {"edgewarden.bpf.c": "edgewarden.bpf.o", "flood_gen.bpf.c": "flood_gen.bpf.o",
               "lab_peer.bpf.c": "lab_peer.bpf.o"}


def multiarch_include() -> list[str]:
    """clang -target bpf does not search the multiarch dir where asm/types.h lives."""
    try:
        triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    path = Path("/usr/include") / triplet
    return [f"-I{path}"] if triplet and path.is_dir() else []


def compile_bpf_object(entry: Path, output: Path) -> None:
    clang = os.environ.get("CLANG", "clang")
    if shutil.which(clang) is None:
        raise SystemExit(f"building the XDP program needs {clang!r} (apt-get install clang llvm libbpf-dev)")
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Werror",
        f"-I{ROOT / 'native' / 'include'}", *multiarch_include(),
        "-c", str(entry), "-o", str(output),
    ]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)


class BuildWithBpf(build_ext):
    """build_ext that also compiles the XDP object next to agent/datapath."""

    def run(self):
        super().run()
        newest_source = max(p.stat().st_mtime for p in BPF_SOURCES)
        for entry, object_name in BPF_OBJECTS.items():
            targets = [ROOT / "agent" / "datapath" / object_name]
            if not self.inplace:
                targets.append(Path(self.build_lib) / "agent" / "datapath" / object_name)
            for target in targets:
                if not target.exists() or target.stat().st_mtime < newest_source:
                    compile_bpf_object(ROOT / "bpf" / entry, target)


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
    cffi_modules=["native/libbpf_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithBpf},
)
