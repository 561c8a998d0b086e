"""The CLI against a real controller process (uvicorn on uvloop) on both
stores: where URL and token come from, tables and --json, errors that exit
non-zero, import with its bad-line report, --strict and a progress bar in a
terminal, audit verify, and `controller --check`."""

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller_support import controller_process

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env=None, check=True):
    result = subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                            env=env or os.environ.copy(), timeout=120, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"edgewarden {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture
def controller(store_url, tmp_path):
    token = cli("controller", "token", "create", "--db", store_url, "--name", "root-admin", "--role", "admin").stdout.strip()
    with controller_process(REPO / "configs" / "controller.toml", store_url, tmp_path) as url:
        env = dict(os.environ, EDGEWARDEN_CONTROLLER=url, EDGEWARDEN_TOKEN=token,
                   EDGEWARDEN_CLIENT_CONFIG=str(tmp_path / "absent.toml"))
        yield {"url": url, "token": token, "env": env, "db": store_url, "tmp": tmp_path}


def test_tenant_lifecycle_and_errors(controller):
    env = controller["env"]
    out = cli("tenant", "create", "--name", "北京示例", "--icp", "京ICP备12345678号-1", "--domain", "www.example.cn",
              "--vip", "203.0.113.10", "--contact", "张三,security@example.cn,+86 10 5555 0100", "--reason", "onboard",
              env=env)
    assert "tenant 1 (北京示例) registered; policy revision 1" in out.stdout
    bad = cli("tenant", "create", "--name", "x", "--icp", "京ICP备12345678号-0", "--contact", "a,a@b.cn,12345",
              "--reason", "r", env=env, check=False)
    assert bad.returncode == 2 and "icp_filing: after '号' only a site suffix '-N'" in bad.stderr
    table = cli("tenant", "list", env=env).stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"] and "京ICP备12345678号-1" in table
    assert json.loads(cli("tenant", "list", "--json", env=env).stdout)[0]["contacts"][0]["name"] == "张三"
    cli("tenant", "suspend", "1", "--reason", "virus not fixed within 30 minutes", env=env)
    stale = cli("tenant", "update", "1", "--version", "1", "--domain", "b.example.cn", "--reason", "r", env=env, check=False)
    assert stale.returncode == 2 and "HTTP 409" in stale.stderr
    # an admin's field change does not terminate: the error names the confirmed command
    patched = cli("tenant", "update", "1", "--state", "terminated", "--reason", "r", env=env, check=False)
    assert patched.returncode == 2 and "HTTP 409" in patched.stderr
    assert "edgewarden tenant terminate 1 --confirm" in patched.stderr
    history = cli("tenant", "history", "1", env=env).stdout
    assert "suspended" in history and "virus not fixed" in history
    audit = json.loads(cli("audit", "list", "--tenant", "1", "--json", env=env).stdout)
    assert [e["action"] for e in audit] == ["tenant.create", "tenant.update"]
    assert cli("audit", "list", "--operator", "nobody", "--json", env=env).stdout.strip() == "[]"
    assert "intact" in cli("audit", "verify", env=env).stdout
    csv_file = controller["tmp"] / "tenants.csv"
    cli("tenant", "export", "--format", "csv", "-o", str(csv_file), env=env)
    assert csv_file.read_bytes().startswith("\ufeffid,name".encode()) and "北京示例" in csv_file.read_text("utf-8-sig")


def test_where_url_and_token_come_from(controller, tmp_path):
    env = dict(controller["env"])
    config = tmp_path / "client.toml"
    config.write_text(f'[controller]\nurl = "{controller["url"]}"\ntoken = "{controller["token"]}"\n')
    plain = {k: v for k, v in env.items() if k not in ("EDGEWARDEN_CONTROLLER", "EDGEWARDEN_TOKEN")}
    # the config file alone
    assert cli("token", "list", "--client-config", str(config), env=plain).returncode == 0
    # environment beats the file
    env_wrong = dict(plain, EDGEWARDEN_TOKEN="ewt_wrong")
    r = cli("token", "list", "--client-config", str(config), env=env_wrong, check=False)
    assert r.returncode == 2 and "unknown token" in r.stderr
    # a flag beats the environment
    r = cli("token", "list", "--client-config", str(config), "--token", controller["token"], env=env_wrong)
    assert "root-admin" in r.stdout
    r = cli("token", "list", "--controller", "http://127.0.0.1:9", env=env, check=False)
    assert r.returncode == 1 and "cannot reach the controller at http://127.0.0.1:9" in r.stderr
    r = cli("token", "list", env=plain, check=False)
    assert r.returncode == 2 and "no controller given" in r.stderr


def test_import_reports_bad_lines_strict_and_progress(controller, tmp_path):
    env = controller["env"]
    feed = tmp_path / "feed.txt"
    feed.write_text("".join(f"10.1.{i >> 8 & 255}.{i & 255}\n" for i in range(3000)) + "999.1.1.1\n")
    out = cli("lists", "import", str(feed), "--reason", "feed", "--expires", "1d", "--evidence", "case-7", env=env)
    assert f"{feed}:3001: invalid address: '999.1.1.1'" in out.stderr
    assert "3000 entries read, 1 bad lines skipped" in out.stdout
    strict = cli("lists", "import", str(feed), "--reason", "feed", "--strict", env=env, check=False)
    assert strict.returncode == 2 and "feed.txt:3001: invalid address" in strict.stderr
    # a terminal gets a progress bar on stderr
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "lists", "import", str(feed), "--reason", "again"],
                            stdout=subprocess.PIPE, stderr=secondary, env=env, cwd=REPO)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(primary)
    assert proc.returncode == 0 and b"upload [" in seen and b"100%" in seen
    entries = json.loads(cli("lists", "show", "--scope", "global", "--limit", "5", "--json", env=env).stdout)
    assert entries[0]["evidence"] == "case-7" and entries[0]["expires_at"] is not None
    diff = cli("revision", "diff", "1", "latest", env=env).stdout
    assert "global sources: +0 -0" in diff     # the second import added nothing new
    toml_doc = cli("revision", "show", "latest", "--toml", env=env).stdout
    assert "blocked_sources" in toml_doc


def test_controller_check_names_the_bad_key(tmp_path):
    good = cli("controller", "--config", str(REPO / "configs" / "controller.toml"), "--check")
    assert "config ok" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[controller]\nlisten = "nowhere"\nlog_lvl = "info"\n')
    r = cli("controller", "--config", str(bad), "--check", check=False)
    assert r.returncode == 2 and "controller.log_lvl: unknown key" in r.stderr and "controller.listen" in r.stderr


def test_the_running_controller_expires_entries_by_itself(controller):
    env = controller["env"]
    out = cli("lists", "add", "--source", "192.0.2.0/24", "--reason", "short block", "--expires", "2s", "--json", env=env)
    added = json.loads(out.stdout)["revision"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        revisions = json.loads(cli("revision", "list", "--json", env=env).stdout)
        if revisions[0]["revision"] > added:
            break
        time.sleep(0.5)
    newest = revisions[0]
    assert newest["revision"] == added + 1 and newest["operator"] == "controller" and "short block" in newest["reason"]
    assert json.loads(cli("revision", "show", "latest", env=env).stdout)["global"]["blocked_sources"] == []
    assert json.loads(cli("lists", "show", "--json", env=env).stdout) == []
