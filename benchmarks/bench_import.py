"""1M-line block-list import: edgewarden's controller (`edgewarden lists
import` over its HTTP API, into SQLite and into PostgreSQL) against CrowdSec
(`cscli decisions import` of the same addresses into a real LAPI), in the
same run, end to end as an operator runs them.

CrowdSec runs offline with this benchmark's own config, database and port
(`crowdsec -c CONFIG -no-cs`, no online_client section: no Central API), so
the system's CrowdSec config and database are not touched. Needs Debian's
`crowdsec` package; see DESIGN.md for installing it offline."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from crowdsec_lapi import CrowdsecLapi   # noqa: E402
from results_file import machine_facts, publish   # noqa: E402
from controller.throwaway_pg import ThrowawayPostgres   # noqa: E402

SECTION = "## Controller: 1M-line block-list import vs CrowdSec"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_list(path: Path, lines: int, seed: int = 10) -> list[str]:
    """`lines` distinct public-looking IPv4 addresses (never sent anything: stored only)."""
    rng = random.Random(seed)
    seen: set[int] = set()
    while len(seen) < lines:
        value = rng.randrange(0x01000000, 0xDF000000)
        seen.add(value)
    addresses = [f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}" for v in seen]
    path.write_text("\n".join(addresses) + "\n")
    return addresses


def run_cli(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"edgewarden {' '.join(args)} failed:\n{result.stderr}")
    return result


def time_edgewarden(db_url: str, listfile: Path, work: Path, timeout: float) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    token = run_cli("controller", "token", "create", "--db", db_url, "--name", "bench", "--role", "operator",
                    env=env, timeout=120).stdout.strip()
    listen = f"127.0.0.1:{free_port()}"
    log = open(work / f"controller-{db_url.split(':')[0]}.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "controller.cli", "controller", "--db", db_url, "--listen", listen,
                               "--config", str(REPO / "configs" / "controller.toml")],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        url = f"http://{listen}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        env.update(EDGEWARDEN_CONTROLLER=url, EDGEWARDEN_TOKEN=token)
        start = time.perf_counter()
        out = run_cli("lists", "import", str(listfile), "--reason", "benchmark feed", env=env, timeout=timeout)
        elapsed = time.perf_counter() - start
        return elapsed, out.stdout.strip().splitlines()[-1]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()



def time_crowdsec(addresses: list[str], work: Path, timeout: float) -> tuple[float | None, int, str]:
    """(seconds or None if it did not finish within timeout, decisions stored, note)."""
    lapi = CrowdsecLapi(work)
    data = lapi.data
    cscli = ["cscli", "-c", str(lapi.config), "--error"]
    csv_file = work / "decisions.csv"
    csv_file.write_text("value\n" + "\n".join(addresses) + "\n")
    lapi.start()
    try:
        # cscli may answer well after the LAPI has stored every decision: watch the database too
        stored_at: list[float] = []
        stop_watch = threading.Event()

        def watch() -> None:
            while not stop_watch.wait(0.5):
                try:
                    with sqlite3.connect(f"file:{data / 'crowdsec.db'}?mode=ro", uri=True, timeout=1) as db:
                        if db.execute("SELECT count(*) FROM decisions").fetchone()[0] >= len(addresses):
                            stored_at.append(time.perf_counter() - start)
                            return
                except sqlite3.Error:
                    pass   # locked by a writer: look again

        start = time.perf_counter()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = subprocess.run([*cscli, "decisions", "import", "-i", str(csv_file), "--duration", "24h",
                                     "--reason", "benchmark feed", "--type", "ban", "--scope", "ip"],
                                    capture_output=True, text=True, timeout=timeout)
            elapsed = time.perf_counter() - start
            note = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
            if result.returncode != 0:
                raise RuntimeError(f"cscli decisions import failed ({result.returncode}): {result.stderr[-2000:]}")
            done = elapsed
        except subprocess.TimeoutExpired:
            done, note = None, [f"did not finish within {timeout:.0f} s"]
    finally:
        stop_watch.set()
        lapi.stop()
    with sqlite3.connect(data / "crowdsec.db") as db:
        stored = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
    all_stored = f"all {len(addresses)} decisions in its database after {stored_at[0]:.0f} s" if stored_at else \
        f"{stored} of {len(addresses)} decisions in its database at the end"
    return done, stored, f"{note[0]}; {all_stored}".strip("; ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--crowdsec-timeout", type=float, default=300.0,
                        help="stop cscli after this long and report the lower bound of the ratio")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgewarden-bench-import-"))
    try:
        listfile = work / "feed.txt"
        addresses = make_list(listfile, args.lines)
        size = listfile.stat().st_size
        print(f"list: {args.lines} lines, {size / 1e6:.1f} MB", flush=True)
        sqlite_s, sqlite_note = time_edgewarden(f"sqlite:///{work / 'controller.db'}", listfile, work, 900)
        print(f"edgewarden/SQLite: {sqlite_s:.2f} s ({sqlite_note})", flush=True)
        with ThrowawayPostgres() as pg:
            pg_s, pg_note = time_edgewarden(pg.create_database("bench"), listfile, work, 900)
        print(f"edgewarden/PostgreSQL: {pg_s:.2f} s ({pg_note})", flush=True)
        cs_s, cs_stored, cs_note = time_crowdsec(addresses, work, args.crowdsec_timeout)
        print(f"CrowdSec: {cs_s if cs_s is None else f'{cs_s:.2f}'} s, {cs_stored} decisions stored ({cs_note})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = subprocess.run(["crowdsec", "-version"], capture_output=True, text=True)
    version = next((line.split("version:", 1)[1].strip() for line in (out.stdout + out.stderr).splitlines()
                    if "version:" in line), "unknown")

    def ratio(ours: float) -> str:
        if cs_s is None:
            return f">= {args.crowdsec_timeout / ours:.1f}x (CrowdSec stopped at {args.crowdsec_timeout:.0f} s)"
        return f"{cs_s / ours:.1f}x"

    cs_cell = f"{cs_s:.1f} s" if cs_s is not None else f"> {args.crowdsec_timeout:.0f} s"
    lines = [SECTION, "", *(f"- {k}: {v}" for k, v in machine_facts()), f"- CrowdSec: {version.strip() or 'unknown'}",
             "", f"The same {args.lines:,} distinct IPv4 addresses ({size / 1e6:.1f} MB), end to end as an operator runs "
             "it: `edgewarden lists import FILE` (CLI -> HTTP API -> parse with the native list parser -> bulk "
             "insert -> compile and validate the whole policy with agent.policy -> store the revision) against "
             "`cscli decisions import -i FILE.csv` into a CrowdSec LAPI (`crowdsec -no-cs`, its own SQLite "
             "database). Goal: at least 10x faster.", "",
             "| store | edgewarden | CrowdSec | ratio |", "|---|---|---|---|",
             f"| SQLite | {sqlite_s:.1f} s | {cs_cell} | {ratio(sqlite_s)} |",
             f"| PostgreSQL 15 | {pg_s:.1f} s | {cs_cell} (its SQLite) | {ratio(pg_s)} |", "",
             f"CrowdSec: {cs_note}.", "",
             f"Run: `.venv/bin/python benchmarks/bench_import.py --lines {args.lines}`."]
    publish(SECTION, "\n".join(lines) + "\n", args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
