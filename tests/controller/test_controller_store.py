"""The store on both backends: migrations, the audit chain (changed, removed,
reordered entries found), tokens (hash only, expiry, revocation), one
transaction per call, revisions and expiry."""

import datetime as dt
import json

import pytest
from sqlalchemy import delete, func, select, text, update

from agent.policy import policy_from_document
from controller import audit, blocklists, registry, revisions, schema
from controller.errors import Conflict, Invalid, Unauthorized
from controller.models import TenantCreate, TenantPatch
from controller.store import check_migrated, migrate, reading, utcnow, writing
from controller.tokens import Role, authenticate, create_token, hash_token, revoke_token

from controller_support import tenant_body


def _populate(engine, n=5):
    with writing(engine) as (conn, head):
        registry.create_tenant(conn, head, operator="alice", data=TenantCreate(**tenant_body()))
    for i in range(n):
        with writing(engine) as (conn, head):
            blocklists.add_entries(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                                   sources=[f"192.0.2.{i}"], ports=[], reason=f"attack {i}")


def test_migrations_are_current_and_rerunnable(engine):
    check_migrated(engine)
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from controller.store import MIGRATIONS
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert migrate(engine) == ScriptDirectory.from_config(cfg).get_current_head()   # 0002: the workflow's tables
    with reading(engine) as conn:
        assert conn.execute(select(schema.head)).mappings().one()["audit_seq"] == 0


def test_audit_chain_intact_after_changes(engine):
    _populate(engine)
    with reading(engine) as conn:
        report = audit.verify(conn)
    assert report.intact and report.entries == 6


def test_audit_verify_finds_a_changed_entry(engine):
    _populate(engine)
    with engine.begin() as conn:
        conn.execute(update(schema.audit).where(schema.audit.c.seq == 3).values(reason="nothing to see"))
    with reading(engine) as conn:
        report = audit.verify(conn)
    assert not report.intact
    assert any("audit entry 3" in p and "changed" in p for p in report.problems)


def test_audit_verify_finds_a_removed_entry(engine):
    _populate(engine)
    with engine.begin() as conn:
        conn.execute(delete(schema.audit).where(schema.audit.c.seq == 4))
    with reading(engine) as conn:
        report = audit.verify(conn)
    assert not report.intact
    assert any("audit entry 5" in p and "missing" in p for p in report.problems)


def test_audit_verify_finds_a_removed_last_entry(engine):
    _populate(engine)
    with engine.begin() as conn:
        conn.execute(delete(schema.audit).where(schema.audit.c.seq == 6))
    with reading(engine) as conn:
        report = audit.verify(conn)
    assert not report.intact and any("at the end" in p for p in report.problems)


def test_audit_verify_finds_reordered_entries(engine):
    _populate(engine)
    a = schema.audit.c
    with engine.begin() as conn:   # swap entries 3 and 4 (their sequence numbers)
        conn.execute(update(schema.audit).where(a.seq == 3).values(seq=-1))
        conn.execute(update(schema.audit).where(a.seq == 4).values(seq=3))
        conn.execute(update(schema.audit).where(a.seq == -1).values(seq=4))
    with reading(engine) as conn:
        report = audit.verify(conn)
    assert not report.intact
    assert any("audit entry 3" in p for p in report.problems) and any("audit entry 4" in p for p in report.problems)


def test_tokens_store_only_a_hash_and_expire_and_revoke(engine):
    with writing(engine) as (conn, head):
        token, record = create_token(conn, head, name="bob", role=Role.OPERATOR, created_by="t", reason="r")
        create_token(conn, head, name="old", role=Role.VIEWER, created_by="t", reason="r",
                     expires_at=utcnow() + dt.timedelta(seconds=60))
    with reading(engine) as conn:
        dumped = json.dumps([list(map(str, r)) for r in conn.execute(select(schema.tokens)).all()])
        assert token not in dumped and hash_token(token) in dumped
        assert authenticate(conn, token) == ("bob", Role.OPERATOR)
    with engine.begin() as conn:   # let the other token expire
        conn.execute(update(schema.tokens).where(schema.tokens.c.name == "old")
                     .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    with writing(engine) as (conn, head):
        revoke_token(conn, head, name="bob", operator="t", reason="left the team")
    with reading(engine) as conn:
        with pytest.raises(Unauthorized, match="revoked"):
            authenticate(conn, token)
        with pytest.raises(Unauthorized, match="unknown"):
            authenticate(conn, token + "x")
        assert audit.verify(conn).intact


def test_a_refused_change_writes_nothing(engine):
    _populate(engine, 1)
    with reading(engine) as conn:
        counts = {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in schema.metadata.sorted_tables}
    # a second tenant claiming the first one's VIP: the compiled policy is refused, after rows were written
    with pytest.raises(Invalid, match="already assigned"):
        with writing(engine) as (conn, head):
            registry.create_tenant(conn, head, operator="alice", data=TenantCreate(
                **tenant_body(name="second", domain="www.second.cn")))
    with reading(engine) as conn:
        after = {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in schema.metadata.sorted_tables}
        assert after == counts
        assert audit.verify(conn).intact


def test_stale_version_is_refused(engine):
    _populate(engine, 0)
    with writing(engine) as (conn, head):
        registry.update_tenant(conn, head, operator="a", role=Role.OPERATOR, tenant_id=1,
                               patch=TenantPatch(version=1, reason="r", domains=["a.example.cn"]))
    with pytest.raises(Conflict, match="version 2"):
        with writing(engine) as (conn, head):
            registry.update_tenant(conn, head, operator="b", role=Role.OPERATOR, tenant_id=1,
                                   patch=TenantPatch(version=1, reason="r", domains=["b.example.cn"]))
    with reading(engine) as conn:
        assert registry.get_tenant(conn, 1)["domains"] == ["a.example.cn"]


def test_revisions_validate_with_agent_policy_and_expiries_are_their_own(engine):
    with writing(engine) as (conn, head):
        registry.create_tenant(conn, head, operator="alice", data=TenantCreate(**tenant_body()))
    with writing(engine) as (conn, head):
        out = blocklists.add_entries(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=1,
                                     sources=["198.51.100.0/25", "198.51.100.128/25"], ports=["tcp/25"],
                                     reason="spam relay", expires_at=utcnow() + dt.timedelta(seconds=60))
        blocklists.add_entries(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                               sources=["2001:db8::/32"], ports=[], reason="other",
                               expires_at=utcnow() + dt.timedelta(seconds=120))
    assert out["revision"] == 2
    with reading(engine) as conn:
        doc = revisions.load_document(conn, 3)
    policy = policy_from_document(doc)
    assert [str(n) for n in policy.tenant(1).blocked_sources] == ["198.51.100.0/24"]   # merged natively
    assert [str(r) for r in policy.tenant(1).blocked_ports] == ["tcp/25"]
    with engine.begin() as conn:   # both expiries are due now
        conn.execute(update(schema.block_batches).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert revisions.expire_due(engine) == [4, 5]
    assert revisions.expire_due(engine) == []
    with reading(engine) as conn:
        doc4, doc5 = revisions.load_document(conn, 4), revisions.load_document(conn, 5)
        assert doc4["tenants"][0]["blocked_sources"] == [] and doc4["global"]["blocked_sources"] == ["2001:db8::/32"]
        assert doc5["global"]["blocked_sources"] == []
        diff = revisions.diff_documents(revisions.load_document(conn, 3), doc5)
        assert diff["global_sources"]["removed"] == ["2001:db8::/32"]
        assert diff["tenants_changed"]["1"]["blocked_sources"]["removed"] == ["198.51.100.0/24"]
        actions = [e["action"] for e in audit.list_entries(conn)]
        assert actions.count("block.expire") == 2 and audit.verify(conn).intact


def test_bulk_import_stores_compiled_prefixes(engine):
    lines = [f"10.{i >> 8}.{i & 255}.1" for i in range(20000)] + ["garbage", "10.0.0.0/8 ; covers the rest"]
    with writing(engine) as (conn, head):
        out = blocklists.import_list(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                                     data="\n".join(lines).encode(), reason="feed", source="feed.txt")
    assert out["entries_read"] == 20001 and out["entries"] == 1
    assert out["bad_lines"] == [{"line": 20001, "reason": "invalid address", "text": "garbage"}]
    with pytest.raises(Invalid, match="strict"):
        with writing(engine) as (conn, head):
            blocklists.import_list(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                                   data=b"192.0.2.1\nnope\n", reason="feed", strict=True)
    many = "\n".join(f"2001:db8:{i:x}::/48" for i in range(0, 60000, 2)).encode()
    with writing(engine) as (conn, head):
        out = blocklists.import_list(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                                     data=many, reason="feed 2")
    assert out["entries"] == 30000
    with reading(engine) as conn:
        assert conn.execute(select(func.count()).select_from(schema.block_entries)).scalar() == 30001
        assert len(revisions.load_document(conn, out["revision"])["global"]["blocked_sources"]) == 30001


@pytest.mark.parametrize("text", ["::ffff:1.2.3.4", "::1.2.3.4", "2001:db8::", "2001:db8:0:1::", "::", "1:0:0:1::1",
                                  "2001:db8:0:0:1:0:0:1", "fe80::1:2:3:4"])
def test_prefix_texts_are_written_as_agent_policy_writes_them(text):
    import ipaddress

    from controller.prefixes import prefix_set, prefix_texts
    assert prefix_texts(prefix_set([text])) == [str(ipaddress.ip_network(text))]
