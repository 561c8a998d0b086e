"""One controller process of the workflow tests: opens the store, runs one
workflow step at an injected time and exits, as a restarted controller
would. `report TENANT` warns of a virus; `tick` acts on what is due;
`race START_FILE` waits for START_FILE to appear, then ticks until nothing
is due (two of these at once are the two-controller test)."""

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from controller.store import open_engine
from controller.workflow import IncidentReport, ManualClock, RuleBook, Workflow


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--now", required=True, help="the injected time, ISO, naive UTC")
    p.add_argument("--worker", default=f"proc-{os.getpid()}")
    p.add_argument("command", choices=["report", "tick", "race"])
    p.add_argument("arg", nargs="?")
    args = p.parse_args()
    engine = open_engine(args.db)
    wf = Workflow(engine, RuleBook(), ManualClock(dt.datetime.fromisoformat(args.now)), worker=args.worker)
    if args.command == "report":
        out = wf.report(IncidentReport(tenant_id=int(args.arg), kind="virus", summary="worm seen"), reported_by="alice")
        print(json.dumps({"case": out["id"], "due": str(out["next_deadline"]["due_at"])}))
    elif args.command == "tick":
        print(json.dumps(wf.run_due()))
    else:
        start = Path(args.arg)
        while not start.exists():
            time.sleep(0.005)
        acted = []
        while True:
            done = wf.run_due(limit=1)
            if not done:
                break
            acted += done
        print(json.dumps(acted))
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
