"""`edgewarden` (the real CLI, for `edgewarden controller`) with the
enforcement workflow's clock ahead of the system's by the seconds written
in a file, read at every look at the time: the lab tests move a running
controller's time (a virus warning's 30 minutes, a spam suspension's day)
without waiting, as ManualClock does in process. Only the workflow's clock
moves (controller.workflow.clock.SystemClock); everything else keeps real time.

usage: python tests/clocked_controller.py OFFSET_FILE controller --config ..."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path


def offset_seconds(path: Path) -> float:
    try:
        return float(path.read_text() or 0)
    except FileNotFoundError:
        return 0.0


def set_offset(path: Path, seconds: float) -> None:
    """Written whole (a rename), so the controller never reads half a number."""
    part = path.with_name(path.name + ".part")
    part.write_text(repr(float(seconds)))
    part.replace(path)


def main() -> int:
    offset_file = Path(sys.argv[1])
    from controller.workflow import clock
    system_now = clock.SystemClock.now

    def now(self) -> dt.datetime:
        return system_now(self) + dt.timedelta(seconds=offset_seconds(offset_file))

    clock.SystemClock.now = now
    from agent.cli import main as edgewarden
    return edgewarden(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
