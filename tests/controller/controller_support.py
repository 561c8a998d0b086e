"""Shared bits of the controller tests (named so it cannot clash with tests/ modules): a registered tenant's body, a token,
a real controller process."""

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from controller.store import writing
from controller.tokens import Role, create_token


def tenant_body(name="北京示例科技有限公司", vip="203.0.113.10", domain="www.example.cn", **extra):
    body = {"name": name, "icp_filing": "京ICP备12345678号-1", "domains": [domain], "vips": [vip],
            "contacts": [{"name": "张三", "email": "security@example.cn", "phone": "+86 10 5555 0100",
                          "webhook_url": "https://hooks.example.cn/security"}],
            "reason": "onboarding"}
    body.update(extra)
    return body


def make_token(engine, name, role):
    with writing(engine) as (conn, head):
        token, _ = create_token(conn, head, name=name, role=Role(role), created_by="test", reason="test token")
    return token


def auth(token):
    return {"Authorization": f"Bearer {token}"}


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def controller_process(config: Path, store_url: str, tmp_path: Path):
    """`edgewarden controller` in a process of its own on a free loopback
    port, yielded (as its URL) once /health answers; stopped on exit."""
    listen = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "controller.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "controller", "--config", str(config),
                                 "--db", store_url, "--listen", listen], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            url = f"http://{listen}"
            for _ in range(300):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                pytest.fail("controller did not start: " + log_path.read_text())
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
