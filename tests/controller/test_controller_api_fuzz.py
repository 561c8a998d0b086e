"""Hypothesis-generated requests against the API on both stores: never a 5xx,
a refused request writes nothing, and the audit chain is intact after each."""

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from controller import schema
from controller.api import create_app
from controller.ratelimit import FailedAuthLimiter
from controller.store import reading

from controller_support import auth, make_token, tenant_body

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
icp_like = st.sampled_from(["京ICP备12345678号-1", "沪ICP证030173号", "京ICP备", "ICP备1号", "京ICP备1号-0", ""]) | st.text(max_size=20)
addresses = st.sampled_from(["203.0.113.7", "2001:db8::7", "300.1.1.1", "203.0.113.10", "", "::ffff:1.2.3.4",
                             "fe80::1%eth0"]) | st.ip_addresses().map(str)
contact = st.fixed_dictionaries({"name": st.text(max_size=10), "email": st.sampled_from(["a@b.cn", "bad", ""]),
                                 "phone": st.sampled_from(["+86 10 1234 5678", "12", "abc"])},
                                optional={"webhook_url": st.sampled_from(["https://h.example.cn/x", "ftp://x", None])})
flood = st.dictionaries(st.sampled_from(["packets_per_second", "packet_burst", "fragments", "syn_cookies", "bogus",
                                         "allow_amplification_ports"]), json_scalars, max_size=3)
tenant_bodies = st.fixed_dictionaries(
    {"name": st.text(max_size=12), "icp_filing": icp_like, "contacts": st.lists(contact, max_size=2),
     "reason": st.text(max_size=8)},
    optional={"id": st.integers(-5, 2**33), "domains": st.lists(st.sampled_from(["www.example.cn", "x", "-a.cn", "例子.中国"]), max_size=3),
              "vips": st.lists(addresses, max_size=3), "flood": flood, "state": st.sampled_from(["active", "suspended", "gone"]),
              "extra": json_values})
patch_bodies = st.fixed_dictionaries(
    {"version": st.integers(-1, 4), "reason": st.text(max_size=8)},
    optional={"name": st.text(max_size=12), "icp_filing": icp_like, "vips": st.lists(addresses, max_size=3),
              "state": st.sampled_from(["active", "suspended", "terminated", "x"]), "flood": flood,
              "contacts": st.lists(contact, max_size=2), "domains": st.lists(st.sampled_from(["b.example.cn", "x"]), max_size=2)})
block_bodies = st.fixed_dictionaries(
    {"reason": st.text(max_size=8)},
    optional={"tenant_id": st.integers(-1, 3) | st.none(), "sources": st.lists(addresses | st.text(max_size=15), max_size=4),
              "ports": st.lists(st.sampled_from(["tcp/25", "udp/6000-6010", "tcp/0", "sctp/1", "tcp/9-1"]) | st.text(max_size=8), max_size=3),
              "expires_at": st.sampled_from(["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "soon", None]),
              "evidence": st.text(max_size=10) | st.none(), "emergency": st.booleans()})
# NUL in any text: PostgreSQL cannot store it, the API must refuse it (422), never fail (500)
nul_text = st.sampled_from(["a\x00b", "\x00"])
requests = st.one_of(
    st.tuples(st.just("POST"), st.just("/tenants"), st.builds(lambda k, v: tenant_body(**{k: v}), st.sampled_from(
        ["name", "reason", "icp_filing"]), nul_text)),
    st.tuples(st.just("GET"), st.sampled_from(["/tenants/99999999999999999999", "/tenants/4294967296",
                                               "/policy/99999999999999999999", "/policy/9223372036854775808",
                                               "/audit?after_seq=99999999999999999999", "/audit?operator=a%00b",
                                               "/lists/entries?after_id=99999999999999999999",
                                               "/lists/entries?scope=9999999999", "/policy/latest/diff/0",
                                               "/tenants/1/history", "/tenants/export?format=csv"]), st.none()),
    st.tuples(st.just("POST"), st.sampled_from(["/lists/entries/99999999999999999999/remove",
                                                "/tokens/a%00b/revoke"]), st.just({"reason": "r"})),
    st.tuples(st.just("IMPORT"), st.just("reason=a%00b"), st.just(b"192.0.2.1\n")),
    st.tuples(st.just("POST"), st.just("/tenants"), tenant_bodies),
    st.tuples(st.just("POST"), st.just("/tenants"), json_values),
    st.tuples(st.just("PATCH"), st.sampled_from(["/tenants/1", "/tenants/2", "/tenants/0", "/tenants/x"]), patch_bodies),
    st.tuples(st.just("POST"), st.just("/lists/entries"), block_bodies),
    st.tuples(st.just("POST"), st.sampled_from(["/lists/entries/1/remove", "/lists/batches/1/remove", "/tokens"]), json_values),
    st.tuples(st.just("IMPORT"), st.sampled_from(["", "reason=r", "reason=r&strict=true", "reason=r&tenant_id=9"]),
              st.binary(max_size=200)),
)


def _state(engine):
    with reading(engine) as conn:
        counts = {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in schema.metadata.sorted_tables}
        head = dict(conn.execute(select(schema.head)).mappings().one())
    return counts, head


@pytest.fixture
def fuzz_api(engine):
    with TestClient(create_app(engine, limiter=FailedAuthLimiter(10**6, 60))) as client:
        client.headers.update(auth(make_token(engine, "fuzzer", "admin")))
        client.post("/tenants", json=tenant_body())
        yield client


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(request=requests)
def test_generated_requests(fuzz_api, engine, request):
    method, path, body = request
    before = _state(engine)
    if method == "IMPORT":
        r = fuzz_api.post(f"/lists/import?{path}", content=body)
    elif method == "GET":
        r = fuzz_api.get(path)
    else:
        r = fuzz_api.request(method, path, json=body)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert _state(engine) == before, f"{method} {path} answered {r.status_code} but wrote something"
        assert "error" in r.json() or "detail" in r.json()
    with reading(engine) as conn:
        from controller.audit import verify
        assert verify(conn).intact
