"""The one clang command line for BPF objects: the datapath and lab objects
(setup.py), and the small programs that tests and benchmarks compile.
Includes the ABI header directory, bpf/ and the multiarch directory, which
`clang -target bpf` does not search and where asm/types.h lives on Debian."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INCLUDE_DIRS = (ROOT / "native" / "include", ROOT / "bpf")


@functools.cache
def multiarch_include() -> tuple[str, ...]:
    try:
        triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ()
    path = Path("/usr/include") / triplet
    return (f"-I{path}",) if triplet and path.is_dir() else ()


def clang_command(source: Path, output: Path, defines: dict[str, str | int] | None = None) -> list[str]:
    clang = os.environ.get("CLANG", "clang")
    # No sinking of stores from different paths into one store through a
    # pointer chosen per path: the datapath's packet facts sit in a map value
    # (bpf/edgewarden.bpf.c), and without CAP_PERFMON the verifier refuses
    # such pointer arithmetic ("pointer arithmetic with it prohibited for !root").
    return [
        clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-mllvm", "-simplifycfg-sink-common=false",
        *(f"-I{d}" for d in INCLUDE_DIRS), *multiarch_include(),
        *(f"-D{name}={value}" for name, value in (defines or {}).items()),
        "-c", str(source), "-o", str(output),
    ]


def compile_bpf(source: Path, output: Path, defines: dict[str, str | int] | None = None, *, echo: bool = False) -> Path:
    """Compile one BPF C file; raises with clang's own message on failure."""
    cmd = clang_command(source, output, defines)
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"building BPF programs needs {cmd[0]!r} (apt-get install clang llvm libbpf-dev)")
    output.parent.mkdir(parents=True, exist_ok=True)
    if echo:
        print(" ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"clang failed on {source}:\n{result.stderr}")
    return output
