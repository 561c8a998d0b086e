"""Shared by the benchmarks: the machine facts every figure is printed with,
and replacing one section of benchmarks/RESULTS.md while keeping the others."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_TITLE = "# edgewarden benchmark results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> list[tuple[str, str]]:
    uname = platform.uname()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        ("Date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Kernel", f"{uname.system} {uname.release} ({uname.machine})"),
        ("CPU", cpu_model()),
        ("Cores", f"{os.cpu_count()} online, {usable} usable by this process"),
    ]


def write_section(section_title: str, section: str, path: Path = RESULTS_PATH) -> None:
    """Replace (or append) the section headed `section_title`, keeping every other section."""
    text = path.read_text() if path.exists() else f"{RESULTS_TITLE}\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section_title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ") or lines[i].startswith("# ")), len(lines))
        head = "\n".join(lines[:start]).rstrip("\n")
        tail = "\n".join(lines[end:]).strip("\n")
        new = (head + "\n\n" if head else "") + section.rstrip("\n") + "\n" + ("\n" + tail + "\n" if tail else "")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def publish(section_title: str, section: str, write: bool) -> None:
    """Print a benchmark's section; with `write`, also record it in RESULTS.md."""
    print(section)
    if write:
        write_section(section_title, section)
