"""What one block entry costs the controller when the registry already holds
a 1M-prefix list: the API's transaction (compile, validate, digest, store)
and the distribution hub's work until the new revision's bundle, snapshot
and delta are ready. Prints each stage, then the end-to-end times.

    .venv/bin/python benchmarks/bench_revision.py [--prefixes 1000000] [--adds 3]

SQLite in a temporary directory (the store the lab uses)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
import zlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.policy import policy_from_document
from agent.wire import BundleSigner, PolicyBundle
from controller import blocklists, revisions, schema
from controller.distribution.hub import Distributor
from controller.prefixes import prefix_set, prefix_texts
from controller.store import migrate, open_engine, reading, writing
from controller.tokens import Role


def _list_bytes(n: int) -> bytes:
    # every other address of 11.0.0.0/8 onwards: /32s that never merge into a shorter prefix
    base = 11 << 24
    return "\n".join(f"{(a >> 24) & 255}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"
                     for a in range(base, base + 2 * n, 2)).encode()


def _timed(label: str, fn, stages: list):
    start = time.perf_counter()
    out = fn()
    stages.append((label, time.perf_counter() - start))
    return out


def stages_of_one_revision(engine) -> list[tuple[str, float]]:
    """The stages of make_revision and the hub's load, one by one, as the code does them."""
    stages: list = []
    with reading(engine) as conn:
        cursor = conn.connection.driver_connection.cursor()
        rows = _timed("api: SELECT active sources", lambda: cursor.execute(revisions.ACTIVE_SOURCES_SQL).fetchall(),
                      stages)
        cursor.close()
        texts = [p for _, p in rows]
        sets = _timed("api: native prefix_set compile", lambda: {None: prefix_set(texts)}, stages)
        doc, _ = revisions.compile_document(conn, 1)
    _timed("api: policy_from_document (skeleton)", lambda: policy_from_document(doc, "bench"), stages)
    out_texts = _timed("api: prefix_texts", lambda: prefix_texts(sets[None]), stages)
    doc["global"]["blocked_sources"] = out_texts
    body = {k: v for k, v in doc.items() if k != "revision"}
    _timed("api: _digest json.dumps(sort_keys)+sha256",
           lambda: hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
           stages)
    raw = _timed("api: json.dumps for the stored document", lambda: json.dumps(doc, separators=(",", ":")).encode(),
                 stages)
    blob = _timed("api: zlib.compress level 3", lambda: zlib.compress(raw, 3), stages)
    raw2 = _timed("hub: zlib.decompress", lambda: zlib.decompress(blob), stages)
    document = _timed("hub: json.loads", lambda: json.loads(raw2), stages)
    bundle = _timed("hub: PolicyBundle.from_document", lambda: PolicyBundle.from_document(document), stages)
    _timed("hub: carried set of CIDR strings", lambda: {c for lst in bundle.lists.values() for c in lst.cidrs()},
           stages)
    signer = BundleSigner(Ed25519PrivateKey.generate())
    from agent.wire import SnapshotCache
    _timed("hub: snapshot encode + sign", lambda: SnapshotCache(signer).get(bundle), stages)
    return stages


def one_add(engine, distributor: Distributor, i: int) -> tuple[float, float, float]:
    """(API transaction seconds, hub refresh seconds, delta seconds) for one added entry."""
    start = time.perf_counter()
    with writing(engine) as (conn, head):
        out = blocklists.add_entries(conn, head, operator="bench", role=Role.ADMIN, tenant_id=None,
                                     sources=[f"12.0.{i // 256}.{i % 256}"], ports=[], reason=f"bench {i}")
    api = time.perf_counter() - start
    assert out["revision"], out
    previous = distributor.latest
    start = time.perf_counter()
    assert asyncio.run(distributor._refresh())
    hub = time.perf_counter() - start
    assert distributor.latest.revision == out["revision"]
    start = time.perf_counter()
    delta = distributor._delta(previous, distributor.latest)
    made = time.perf_counter() - start
    assert delta is not None
    return api, hub, made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefixes", type=int, default=1_000_000)
    p.add_argument("--adds", type=int, default=3)
    p.add_argument("--stages", action="store_true", help="also time each stage on its own")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_revision_") as tmp:
        engine = open_engine(f"sqlite:///{Path(tmp) / 'store.db'}")
        migrate(engine)
        start = time.perf_counter()
        with writing(engine) as (conn, head):
            blocklists.import_list(conn, head, operator="bench", role=Role.ADMIN, tenant_id=None,
                                   data=_list_bytes(args.prefixes), reason="bench list")
        print(f"import of {args.prefixes:,} prefixes: {time.perf_counter() - start:.2f} s")
        if args.stages:
            for label, seconds in stages_of_one_revision(engine):
                print(f"  {label:45s} {seconds * 1000:8.0f} ms")
        signer = BundleSigner(Ed25519PrivateKey.generate())
        distributor = Distributor(engine, signer, name="bench")
        start = time.perf_counter()
        asyncio.run(distributor._refresh())
        print(f"hub's first load of the head revision: {time.perf_counter() - start:.2f} s")
        results = [one_add(engine, distributor, i) for i in range(args.adds)]
        for label, k in (("API call (add one entry, commit)", 0), ("hub: bundle + snapshot ready", 1),
                         ("hub: delta made and signed", 2)):
            values = [r[k] * 1000 for r in results]
            print(f"{label:40s} median {statistics.median(values):8.0f} ms  "
                  f"(runs: {', '.join(f'{v:.0f}' for v in values)})")
        with reading(engine) as conn:
            head = conn.execute(schema.head.select()).mappings().one()
            stored = revisions.load_document(conn, head["revision"])
        assert PolicyBundle.from_document(stored).digest == distributor.latest.digest


if __name__ == "__main__":
    main()
