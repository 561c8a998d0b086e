"""The workflow in a real controller process (uvicorn, its background loop)
driven by the `edgewarden` CLI, on both stores: an incident reported, the
suspension, the notifications delivered by the controller's own loop to a
real SMTP relay (STARTTLS) and a webhook receiver, the case commands with
tables and --json, termination refused without --confirm and without the
admin role, a bad rule file refused over the API, audit verify."""

import email
import email.policy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from controller.store import open_engine
from controller_support import controller_process, make_token
from test_workflow_notify import Receiver, smtp_relay  # noqa: F401  (the relay fixture)

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env, check=True):
    result = subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                            env=env, timeout=120, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"edgewarden {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture
def service(store_url, tmp_path, smtp_relay):  # noqa: F811
    box, relay, ca_file = smtp_relay
    hook = Receiver(fail=1)
    secret = tmp_path / "webhook.secret"
    secret.write_text("hook-secret\n")
    rules = tmp_path / "enforcement.toml"
    rules.write_text((REPO / "configs" / "enforcement.toml").read_text(encoding="utf-8")
                     .replace('relay = "127.0.0.1:25"', f'relay = "{relay}"\nca_file = "{ca_file}"')
                     .replace('starttls = "opportunistic"', 'starttls = "required"')
                     .replace('# secret_file = "/etc/edgewarden/webhook.secret"', f'secret_file = "{secret}"')
                     .replace("backoff_seconds = 30 ", "backoff_seconds = 0.2 "), encoding="utf-8")
    config = tmp_path / "controller.toml"
    config.write_text(f'[workflow]\nrules = "{rules}"\nworkflow_interval_seconds = 0.1\n')
    base = dict(os.environ, EDGEWARDEN_CLIENT_CONFIG=str(tmp_path / "absent.toml"))
    # The tokens are made in this process: `controller token create` is the
    # CLI fixture's (test_controller_cli); two more interpreters per test here
    # only cost time.
    engine = open_engine(store_url)
    tokens = {name: make_token(engine, name, role) for name, role in (("root", "admin"), ("alice", "operator"))}
    engine.dispose()
    with controller_process(config, store_url, tmp_path) as url:
        env = {name: dict(base, EDGEWARDEN_CONTROLLER=url, EDGEWARDEN_TOKEN=token) for name, token in tokens.items()}
        yield {"url": url, "env": env, "box": box, "hook": hook, "tokens": tokens, "tmp": tmp_path, "rules": rules}
    hook.close()


def wait_for(check, what, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_incident_to_suspension_notifications_and_confirmed_termination(service):
    alice, root = service["env"]["alice"], service["env"]["root"]
    hook = service["hook"]
    cli("tenant", "create", "--name", "北京示例", "--icp", "京ICP备12345678号-1", "--domain", "www.example.cn",
        "--vip", "203.0.113.10", "--contact", f"张三,security@example.cn,+86 10 5555 0100,{hook.url}",
        "--reason", "onboard", env=alice)
    out = json.loads(cli("incident", "report", "--tenant", "1", "--kind", "virus", "--summary", "确认的蠕虫传播",
                         "--harm-confirmed", "--evidence", "evidence/edge-01/a.pcap.sealed", "--json", env=alice).stdout)
    assert out["new_case"] and out["done"] == ["suspend"] and out["state"] == "warned"
    assert json.loads(cli("tenant", "show", "1", "--json", env=alice).stdout)["state"] == "suspended"

    # the controller's own loop delivers: e-mail over STARTTLS, webhook after one 500
    wait_for(lambda: service["box"].messages and len(hook.requests) >= 2, "the e-mail and the webhook retry")
    msg = email.message_from_bytes(service["box"].messages[0]["data"], policy=email.policy.default)
    assert msg["Subject"].startswith("[edgewarden] 服务中断通知 / service suspended: 北京示例")
    assert "确认的蠕虫传播" in msg.get_content()
    assert json.loads(hook.requests[-1]["body"])["tenant"]["name"] == "北京示例"

    table = cli("case", "list", env=alice).stdout
    assert table.split()[:5] == ["CASE", "TENANT", "KIND", "CLAUSE", "STATE"] and "virus" in table
    shown = cli("case", "show", "1", env=alice).stdout
    assert "incidents:" in shown and "trail:" in shown and "case.warned" in shown
    wait_for(lambda: all(n["status"] == "sent" for n in
                         json.loads(cli("case", "show", "1", "--json", env=alice).stdout)["notifications"]),
             "every notification marked sent")

    escalated = json.loads(cli("case", "escalate", "1", "--reason", "明知故犯", "--json", env=alice).stdout)
    assert escalated["state"] == "escalated" and escalated["termination_proposed"]
    no_confirm = cli("tenant", "terminate", "1", "--reason", "clause 八", env=root, check=False)
    assert no_confirm.returncode == 2 and "--confirm" in no_confirm.stderr
    not_admin = cli("tenant", "terminate", "1", "--confirm", "--reason", "clause 八", env=alice, check=False)
    assert not_admin.returncode == 2 and "HTTP 403" in not_admin.stderr and "admin" in not_admin.stderr
    assert json.loads(cli("tenant", "show", "1", "--json", env=alice).stdout)["state"] == "suspended"
    done = cli("tenant", "terminate", "1", "--confirm", "--reason", "屡整屡犯 clause 八", env=root).stdout
    assert "tenant 1 terminated" in done and "cases closed: 1" in done
    assert json.loads(cli("case", "show", "1", "--json", env=alice).stdout)["resolution"] == "terminated"
    assert cli("audit", "verify", env=alice).returncode == 0


def test_rules_over_the_api_and_a_bad_file_refused(service):
    root = service["env"]["root"]
    rules = json.loads(cli("rules", "show", "--json", env=root).stdout)
    assert rules["kinds"]["virus"]["grace_minutes"] == 30 and rules["strikes"] == {"window_days": 180, "limit": 2}
    bad = service["tmp"] / "bad.toml"
    bad.write_text('[kinds.spam]\nsuspension_minutes = "a day"\n')
    api = httpx.Client(base_url=service["url"], headers={"Authorization": f"Bearer {service['tokens']['root']}"})
    r = api.post("/workflow/rules/reload", json={"path": str(bad)})
    assert r.status_code == 422 and "unchanged" in r.json()["error"]
    assert "kinds.spam.suspension_minutes" in r.json()["problems"][0]["rule"]
    assert api.get("/workflow/rules").json()["source"] == str(service["rules"])
    operator = httpx.Client(base_url=service["url"], headers={"Authorization": f"Bearer {service['tokens']['alice']}"})
    assert operator.post("/workflow/rules/reload", json={}).status_code == 403
    assert cli("rules", "check", str(bad), env=root, check=False).returncode == 2
