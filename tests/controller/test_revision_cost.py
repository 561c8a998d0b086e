"""The shortcuts that keep a revision on a large list cheap give exactly the
bytes of the long way: the list texts kept between compiles (never stale,
whoever changed the store), the document dumped to JSON once for its digest
and its stored copy, the hub's natively parsed bundle, and its check of
which emergency blocks a revision carries."""

import asyncio
import json
import subprocess
import sys
import textwrap

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from agent.wire import BundleSigner, PolicyBundle
from controller import blocklists, registry, revisions, schema
from controller.distribution.bundles import bundle_from_document
from controller.distribution.hub import Distributor
from controller.models import TenantCreate
from controller.prefixes import TextsCache, prefix_set, prefix_texts
from controller.store import reading, writing
from controller.tokens import Role

from controller_support import tenant_body


def _add(engine, sources, tenant_id=None):
    with writing(engine) as (conn, head):
        return blocklists.add_entries(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=tenant_id,
                                      sources=sources, ports=[], reason="test")


def _head_document(engine) -> tuple[dict, str]:
    with reading(engine) as conn:
        revision = conn.execute(select(schema.head.c.revision)).scalar_one()
        digest = conn.execute(select(schema.revisions.c.digest).where(
            schema.revisions.c.revision == revision)).scalar_one()
        return revisions.load_document(conn, revision), digest


def _compiled_from_store(engine, tenant_id=None) -> list[str]:
    with reading(engine) as conn:
        rows = conn.exec_driver_sql(revisions.ACTIVE_SOURCES_SQL).all()
    return prefix_texts(prefix_set([p for t, p in rows if t == tenant_id]))


def test_a_revision_another_process_made_is_not_served_from_a_stale_cache(engine, store_url, monkeypatch):
    cache = TextsCache()
    cache.SMALLEST = 1        # keep even this small list, as a 1M one is kept
    monkeypatch.setattr(revisions, "_TEXTS", cache)
    with writing(engine) as (conn, head):
        tenant, _ = registry.create_tenant(conn, head, operator="alice", data=TenantCreate(**tenant_body()))
    tenant_id = tenant["id"]
    _add(engine, [f"198.51.100.{i}" for i in range(0, 40, 2)] + ["2001:db8::/48"])
    _add(engine, ["192.0.2.0/25"], tenant_id)
    assert None in cache._kept and tenant_id in cache._kept
    # another process removes an entry and adds three that merge with neighbours (/31, /47, /24)
    script = textwrap.dedent(f"""
        from controller import blocklists
        from controller.store import open_engine, writing
        from controller.tokens import Role
        engine = open_engine({store_url!r})
        with writing(engine) as (conn, head):
            entry = next(e for e in blocklists.list_entries(conn, scope="global", kind="source")
                         if e["value"] == "198.51.100.4/32")
            blocklists.remove_entry(conn, head, operator="bob", role=Role.OPERATOR, entry_id=entry["id"],
                                    reason="false positive")
        with writing(engine) as (conn, head):
            blocklists.add_entries(conn, head, operator="bob", role=Role.OPERATOR, tenant_id=None,
                                   sources=["2001:db8:1::/48", "198.51.100.7"], ports=[], reason="other process")
        with writing(engine) as (conn, head):
            blocklists.add_entries(conn, head, operator="bob", role=Role.OPERATOR, tenant_id={tenant_id},
                                   sources=["192.0.2.128/25"], ports=[], reason="other process")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # this process's next revision starts from the kept texts of the revision before the other process's
    _add(engine, ["198.51.100.99"])
    document, digest = _head_document(engine)
    assert document["global"]["blocked_sources"] == _compiled_from_store(engine)
    assert "198.51.100.4/32" not in document["global"]["blocked_sources"]
    assert {"2001:db8::/47", "198.51.100.6/31", "198.51.100.99/32"} <= set(document["global"]["blocked_sources"])
    tenant_doc = next(t for t in document["tenants"] if t["id"] == tenant_id)
    assert tenant_doc["blocked_sources"] == ["192.0.2.0/24"] == _compiled_from_store(engine, tenant_id)
    assert digest == revisions._digest(document)


def test_the_kept_texts_follow_every_change_of_a_list():
    cache = TextsCache()
    cache.SMALLEST = 1
    texts = [f"10.{i // 256}.{i % 256}.0/24" for i in range(0, 4000, 2)] + ["2001:db8::/48", "::ffff:102:304/128"]
    changes = [["10.0.1.0/24"], ["11.0.0.1", "2001:db8:5::/48"], ["::ffff:1.2.3.5/128"], ["0.0.0.0/0"]]
    assert cache.texts(None, prefix_set(texts)) == prefix_texts(prefix_set(texts))
    for added in changes:
        texts = texts[5:] + added          # five removed, some added (merging with neighbours, or covering all)
        compiled = prefix_set(texts)
        assert cache.texts(None, compiled) == prefix_texts(compiled)


def test_the_digest_and_stored_json_are_the_plain_dumps():
    doc = {"revision": 7, "global": {"blocked_sources": ["192.0.2.0/24", "2001:db8::/32"]},
           "tenants": [{"id": 2, "name": "b", "blocked_sources": ["198.51.100.1/32"], "vips": ["203.0.113.1"]},
                       {"id": 1, "name": "a", "blocked_sources": []}]}
    marker = {**doc, "tenants": [{**doc["tenants"][0], "name": "\0edgewarden-sources-0\0"}]}
    for case in (doc, marker, {**doc, "global": {"blocked_sources": []}}):
        digest, stored = revisions._digest_and_json(case)
        assert digest == revisions._digest(case)
        assert stored == json.dumps(case, separators=(",", ":")).encode()


def _same_bundle(document: dict) -> None:
    fast, slow = bundle_from_document(document), PolicyBundle.from_document(document)
    assert (fast.revision, fast.document, fast.lists) == (slow.revision, slow.document, slow.lists)
    assert fast.digest == slow.digest


def test_the_hubs_bundle_equals_from_document_of_every_stored_revision(engine):
    with writing(engine) as (conn, head):
        tenant, _ = registry.create_tenant(conn, head, operator="alice", data=TenantCreate(**tenant_body()))
    _add(engine, [f"198.51.100.{i}" for i in range(0, 64, 2)] + ["2001:db8::/48", "::ffff:1.2.3.4"])
    _add(engine, ["192.0.2.0/24"], tenant["id"])
    _add(engine, ["198.51.100.1"])    # merges with 198.51.100.0 into a /31
    with reading(engine) as conn:
        numbers = conn.execute(select(schema.revisions.c.revision)).scalars().all()
        for revision in numbers:
            _same_bundle(revisions.load_document(conn, revision))
    assert len(numbers) >= 3


def test_the_hubs_bundle_equals_from_document_for_lists_that_are_not_compiled_sets():
    for sources in (["192.0.2.0/32", "192.0.2.1/32"],            # mergeable
                    ["192.0.2.0/24", "192.0.2.128/25"],          # overlapping
                    ["192.0.2.7/32", "192.0.2.7/32"],            # repeated
                    ["192.0.2.1/24"],                            # host bits
                    ["::ffff:192.0.2.1/128", "192.0.2.1/32"],     # an IPv4-mapped address and its IPv4 twin
                    ["2001:db8::/32", "198.51.100.0/24"]):       # families out of order
        _same_bundle({"revision": 3, "global": {"blocked_sources": sources},
                      "tenants": [{"id": 4, "name": "t", "blocked_sources": sources}]})


def test_the_hub_serves_the_stored_revision_and_drops_the_emergency_blocks_it_carries(engine):
    signer = BundleSigner(Ed25519PrivateKey.generate())
    hub = Distributor(engine, signer, name="test")
    carried = signer.emergency("e-carried", ["198.51.100.0/24", "2001:db8::/48"], "attack")
    written_otherwise = signer.emergency("e-other", ["198.51.100.0/24", "2001:db8:0::/48"], "attack")
    not_carried = signer.emergency("e-not", ["192.0.2.1/32"], "attack")
    hub.emergencies = {b.emergency_id: b for b in (carried, written_otherwise, not_carried)}
    _add(engine, ["198.51.100.0/24", "2001:db8::/48", "203.0.113.7"])
    assert asyncio.run(hub._refresh())
    document, _ = _head_document(engine)
    _same_bundle(document)
    assert hub.latest.digest == PolicyBundle.from_document(document).digest
    assert sorted(hub.emergencies) == ["e-not", "e-other"]   # "2001:db8:0::/48" is not the list's text
