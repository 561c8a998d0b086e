"""The controller's part of `make demo`: start the controller on SQLite as its
own process, make an admin token, register the demo tenants with their ICP
filings and contacts, import a small block list, and show the revision made."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import tomli_w

DEMO_TENANTS = [
    {"id": 1, "name": "shop", "icp_filing": "京ICP备12345678号-1", "domains": ["shop.example.cn"],
     "vips": ["203.0.113.10", "2001:db8:10::10"],
     "contacts": [{"name": "王芳", "email": "security@shop.example.cn", "phone": "+86 10 5555 0101",
                   "webhook_url": "https://hooks.shop.example.cn/edgewarden"}]},
    {"id": 3, "name": "spammer", "icp_filing": "沪ICP备2021012345号", "domains": ["mail.spam.example.com.cn"],
     "vips": ["203.0.113.30"], "state": "suspended",
     "contacts": [{"name": "李雷", "email": "abuse@spam.example.com.cn", "phone": "+86 21 5555 0303"}]},
]
DEMO_LIST = """# demo feed: FireHOL/Spamhaus style, one bad line on purpose
198.51.100.200        ; global: seen flooding every tenant
203.0.113.200-203.0.113.207
not-an-address
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                            env=env, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"edgewarden {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout + result.stderr


def run_controller_demo(workdir: str | os.PathLike, *, echo: bool = True) -> str:
    """Returns the report (printed too with `echo`); leaves workdir/controller.db
    and workdir/controller-policy.toml (the latest revision, for `edgewarden policy apply`)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "controller.db"
    db.unlink(missing_ok=True)
    listen = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    lines = [f"== controller on SQLite ({db}), listening on {listen}"]
    token = _cli("controller", "token", "create", "--db", str(db), "--name", "demo-admin", "--role", "admin",
                 env=env).splitlines()[0]
    log = open(workdir / "controller.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "controller.cli", "controller", "--db", str(db), "--listen",
                               listen], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://{listen}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not start; see {workdir / 'controller.log'}")
            time.sleep(0.1)
        env.update(EDGEWARDEN_CONTROLLER=url, EDGEWARDEN_TOKEN=token)
        for tenant in DEMO_TENANTS:
            path = workdir / f"tenant-{tenant['name']}.toml"
            path.write_text(tomli_w.dumps({k: v for k, v in tenant.items() if k != "id"}))
            lines.append(_cli("tenant", "create", "--id", str(tenant["id"]), "--file", str(path),
                              "--reason", "demo onboarding", env=env).rstrip())
        lines.append(_cli("lists", "add", "--tenant", "1", "--source", "198.51.100.70", "--port", "tcp/25",
                          "--reason", "demo: spam source for shop", "--evidence", "demo-case-1", env=env).rstrip())
        feed = workdir / "demo-feed.txt"
        feed.write_text(DEMO_LIST)
        lines.append(_cli("lists", "import", str(feed), "--reason", "demo feed", env=env).rstrip())
        lines.append("\n== tenants")
        lines.append(_cli("tenant", "list", env=env).rstrip())
        lines.append("\n== revisions")
        lines.append(_cli("revision", "list", env=env).rstrip())
        document = _cli("revision", "show", "latest", "--toml", env=env)
        (workdir / "controller-policy.toml").write_text(document)
        lines.append(f"\n== latest revision written to {workdir / 'controller-policy.toml'}")
        lines.append(_cli("audit", "verify", env=env).rstrip())
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    report = "\n".join(lines)
    if echo:
        print(report)
    return report


if __name__ == "__main__":
    run_controller_demo(sys.argv[1] if len(sys.argv) > 1 else "/tmp/edgewarden-controller-demo")
