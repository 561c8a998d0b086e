"""The HTTP API on both stores: roles, failed authentication (logged, then
429), 4xx naming field and rule with nothing written, optimistic concurrency
(409) with two operators racing, import, export, revisions and diffs."""

import csv
import io
import logging
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from agent.policy import policy_from_document
from controller import schema
from controller.api import create_app
from controller.ratelimit import FailedAuthLimiter
from controller.store import reading

from controller_support import auth, make_token, tenant_body


@pytest.fixture
def api(engine):
    app = create_app(engine, limiter=FailedAuthLimiter(max_failures=3, window_seconds=60))
    with TestClient(app) as client:
        client.tokens = {role: make_token(engine, f"{role}-1", role) for role in ("viewer", "operator", "admin")}
        client.as_ = lambda role: auth(client.tokens[role])
        yield client


def _row_counts(engine):
    with reading(engine) as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in schema.metadata.sorted_tables}


def test_roles(api):
    r = api.post("/tenants", json=tenant_body(), headers=api.as_("viewer"))
    assert r.status_code == 403 and "operator role" in r.json()["error"]
    r = api.post("/tenants", json=tenant_body(), headers=api.as_("operator"))
    assert r.status_code == 201, r.text
    assert api.get("/tenants", headers=api.as_("viewer")).json()[0]["name"] == "北京示例科技有限公司"
    r = api.patch("/tenants/1", json={"version": 1, "state": "terminated", "reason": "false filing"},
                  headers=api.as_("operator"))
    assert r.status_code == 403 and "admin" in r.json()["error"]
    # even an admin does not terminate by a patch: only the confirmed terminate path does (clause 八)
    r = api.patch("/tenants/1", json={"version": 1, "state": "terminated", "reason": "false filing"},
                  headers=api.as_("admin"))
    assert r.status_code == 409, r.text
    assert "edgewarden tenant terminate 1 --confirm" in r.json()["error"]
    assert "POST /tenants/1/terminate" in r.json()["error"]
    assert api.get("/tenants/1", headers=api.as_("viewer")).json()["state"] == "active"
    r = api.post("/tenants/1/terminate", json={"confirm": True, "reason": "false filing"}, headers=api.as_("admin"))
    assert r.status_code == 200 and r.json()["state"] == "terminated", r.text
    assert api.get("/tenants/1", headers=api.as_("viewer")).json()["state"] == "terminated"
    doc = api.get(f"/policy/{r.json()['revision']}", headers=api.as_("viewer")).json()
    assert doc["tenants"] == []     # terminated: removed from every agent's policy, its records kept
    r = api.post("/lists/entries", json={"sources": ["192.0.2.0/24"], "reason": "x", "emergency": True},
                 headers=api.as_("operator"))
    assert r.status_code == 403
    assert api.post("/tokens", json={"name": "n", "role": "viewer", "reason": "r"},
                    headers=api.as_("operator")).status_code == 403
    r = api.post("/tokens", json={"name": "n", "role": "viewer", "reason": "new colleague"}, headers=api.as_("admin"))
    assert r.status_code == 201
    assert api.get("/whoami", headers=auth(r.json()["token"])).json() == {"name": "n", "role": "viewer"}
    assert api.post("/tokens/n/revoke", json={"reason": "left"}, headers=api.as_("admin")).status_code == 200
    assert api.get("/whoami", headers=auth(r.json()["token"])).status_code == 401


def test_failed_authentication_is_logged_and_rate_limited(api, caplog):
    caplog.set_level(logging.WARNING, logger="edgewarden.controller.auth")
    for _ in range(3):
        assert api.get("/tenants", headers=auth("ewt_wrong")).status_code == 401
    assert api.get("/tenants").status_code == 429      # the limit is per client, whatever it sends next
    r = api.get("/tenants", headers=api.as_("viewer"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert sum("authentication failed from testclient" in m for m in caplog.messages) == 3


def test_bad_input_names_field_and_rule_and_writes_nothing(api, engine):
    before = _row_counts(engine)
    r = api.post("/tenants", json=tenant_body(icp_filing="京ICP备12345678"), headers=api.as_("operator"))
    assert r.status_code == 422
    assert {"field": "icp_filing", "rule": "the digits must be followed by '号', e.g. 京ICP备12345678号-1"} in r.json()["problems"]
    r = api.post("/tenants", json=tenant_body(vips=["203.0.113.300"]), headers=api.as_("operator"))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "vips[0]"
    r = api.post("/tenants", json=tenant_body(flood={"packets_per_second": 10}), headers=api.as_("operator"))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "flood"
    assert "packet_burst" in r.json()["problems"][0]["rule"]
    body = tenant_body()
    body["contacts"][0]["email"] = "not-an-address"
    r = api.post("/tenants", json=body, headers=api.as_("operator"))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "contacts[0].email"
    r = api.post("/tenants", json={k: v for k, v in tenant_body().items() if k != "reason"}, headers=api.as_("operator"))
    assert r.status_code == 422 and r.json()["problems"][0] == {"field": "reason", "rule": "Field required"}
    r = api.post("/lists/entries", json={"sources": ["192.0.2.0/24", "192.0.2.0/33"], "ports": ["tcp/0"],
                                         "reason": "x"}, headers=api.as_("operator"))
    assert r.status_code == 422
    assert [p["field"] for p in r.json()["problems"]] == ["sources[1]", "ports[0]"]
    assert _row_counts(engine) == before


def test_two_operators_racing_on_one_tenant(api, engine):
    api.post("/tenants", json=tenant_body(), headers=api.as_("operator"))
    barrier = threading.Barrier(2)
    results = {}

    def edit(name, domain):
        barrier.wait()
        results[name] = api.patch("/tenants/1", json={"version": 1, "domains": [domain], "reason": name},
                                  headers=api.as_("operator"))

    threads = [threading.Thread(target=edit, args=(n, d)) for n, d in (("a", "a.example.cn"), ("b", "b.example.cn"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results.values())
    assert codes == [200, 409]
    winner = next(n for n, r in results.items() if r.status_code == 200)
    loser = results["b" if winner == "a" else "a"]
    assert "version 2" in loser.json()["error"]
    assert api.get("/tenants/1", headers=api.as_("viewer")).json()["domains"] == [f"{winner}.example.cn"]
    assert api.get("/audit/verify", headers=api.as_("viewer")).json()["intact"]


def test_import_export_revisions_and_diff(api):
    api.post("/tenants", json=tenant_body(), headers=api.as_("operator"))
    api.post("/tenants", json=tenant_body(name="上海示例网络", vip="203.0.113.20", domain="cdn.example.com.cn",
                                          icp_filing="沪ICP证030173号"), headers=api.as_("operator"))
    data = "# feed\n198.51.100.0/25\n198.51.100.128/25\nnot an address\n2001:db8::1-2001:db8::2\n".encode()
    r = api.post("/lists/import", params={"reason": "botnet feed", "tenant_id": 2, "evidence": "case-42"},
                 content=data, headers=api.as_("operator"))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["entries_read"] == 3 and out["entries"] == 3   # the /25s merged; the range is two /128s
    assert out["bad_lines"] == [{"line": 4, "reason": "invalid address", "text": "not an address"}]
    r = api.post("/lists/import", params={"reason": "x", "strict": True}, content=data, headers=api.as_("operator"))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "upload:4"
    entries = api.get("/lists/entries", params={"scope": "2"}, headers=api.as_("viewer")).json()
    assert {e["value"] for e in entries} == {"198.51.100.0/24", "2001:db8::1/128", "2001:db8::2/128"}
    assert all(e["evidence"] == "case-42" and e["operator"] == "operator-1" for e in entries)
    latest = api.get("/policy/latest", headers=api.as_("viewer")).json()
    policy = policy_from_document(latest)
    assert policy.revision == out["revision"] == 3
    diff = api.get("/policy/2/diff/3", headers=api.as_("viewer")).json()
    assert diff["tenants_changed"]["2"]["blocked_sources"]["added"] == ["198.51.100.0/24", "2001:db8::1/128",
                                                                         "2001:db8::2/128"]
    assert api.get("/policy/99", headers=api.as_("viewer")).status_code == 404

    r = api.get("/tenants/export", params={"format": "csv"}, headers=api.as_("viewer"))
    assert r.status_code == 200 and r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["name"] for row in rows] == ["北京示例科技有限公司", "上海示例网络"]
    assert rows[1]["icp_filing"] == "沪ICP证030173号"
    assert "张三 <security@example.cn>" in rows[0]["contacts"]
    assert "active by operator-1: onboarding" in rows[0]["state_history"]
    exported = api.get("/tenants/export", headers=api.as_("viewer")).json()
    assert exported[0]["contacts"][0]["name"] == "张三" and exported[0]["state_history"][0]["state"] == "active"


def test_openapi_is_generated_from_the_models(api):
    spec = api.get("/openapi.json").json()
    assert "TenantCreate" in spec["components"]["schemas"]
    assert "/policy/{revision}" in spec["paths"] and "/lists/import" in spec["paths"]
