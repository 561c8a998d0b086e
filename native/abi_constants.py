"""Turns the ABI-BEGIN..ABI-END block of native/include/edgewarden_abi.h into
a plain-Python module of its integer #defines and enum members, so code that
must run without the compiled libbpf binding (the policy package on a
controller host) reads the same definitions the datapath is built from.
setup.py writes the module at build time; nothing else edits it."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = Path(__file__).resolve().parent / "include" / "edgewarden_abi.h"
DEFINE = re.compile(r"^\s*#define\s+(EW_\w+)\s+(\d+|0x[0-9a-fA-F]+)\b", re.MULTILINE)
ENUM = re.compile(r"enum\s+(ew_\w+)\s*\{(.*?)\}", re.DOTALL)
MEMBER = re.compile(r"(EW_\w+)\s*=\s*(\d+|0x[0-9a-fA-F]+)")


def abi_block(text: str) -> str:
    start, end = text.index("/* ABI-BEGIN */"), text.index("/* ABI-END */")
    return text[start:end]


def read_constants(header: Path = HEADER) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(#define name -> value, enum name -> {member -> value})."""
    block = re.sub(r"/\*.*?\*/", "", abi_block(header.read_text()), flags=re.DOTALL)
    defines = {name: int(value, 0) for name, value in DEFINE.findall(block)}
    enums = {name: {m: int(v, 0) for m, v in MEMBER.findall(body)} for name, body in ENUM.findall(block)}
    return defines, enums


def render_module(header: Path = HEADER) -> str:
    defines, enums = read_constants(header)
    lines = [f'"""Generated at build time from {header.name} by native/abi_constants.py: do not edit."""', ""]
    lines += [f"{name} = {value}" for name, value in sorted(defines.items())]
    lines.append("")
    for enum_name, members in sorted(enums.items()):
        lines.append(f"{enum_name.upper()} = {{")
        lines += [f"    {member!r}: {value}," for member, value in members.items()]
        lines.append("}")
    return "\n".join(lines) + "\n"


def write_module(output: Path, header: Path = HEADER) -> bool:
    """Write the module if its content changed; True when it did."""
    text = render_module(header)
    if output.exists() and output.read_text() == text:
        return False
    output.write_text(text)
    return True
