"""Snapshots in bounded chunks: encoded ONCE per revision on the controller
(EncodedRevision, kept by SnapshotCache) so every connection sends the same
bytes objects, and reassembled on the agent (SnapshotAssembler), checked
chunk by chunk and against the signed digest at the end."""

from __future__ import annotations

import threading
from collections import OrderedDict

from agent.wire.bundle import LIST_KEY, PolicyBundle
from agent.wire.frames import encode_frame
from agent.wire.messages import SnapshotBegin, SnapshotChunk, SnapshotEnd, message_to_wire
from agent.wire.prefixes import RECORD_SIZE, PrefixList, PrefixListError, check_records

# Records per prefix chunk, whatever the list length: 64 KiB, so a frame
# that must overtake a snapshot (an emergency block) waits behind at most a
# few small chunks, in buffers and in the agent's decoding (bench_wire.py).
CHUNK_RECORD_BYTES = 64 * 1024
# Tenant documents per chunk are cut by encoded size, to the same budget.
CHUNK_ITEM_BYTES = 64 * 1024
MAX_SNAPSHOT_PREFIXES = 64 * 1024 * 1024   # an agent refuses a begin announcing more


class SnapshotError(ValueError):
    """A snapshot stream that does not add up; the connection closes (bad_snapshot)."""


def _chunks(bundle: PolicyBundle):
    """The SnapshotChunk contents of a bundle, in order, without index."""
    top = {k: (v if k != "tenants" else []) for k, v in bundle.document.items()}   # tenants follow
    yield dict(kind="document", items=[top])
    batch, size = [], 0
    for tenant in bundle.document.get("tenants", []):
        tenant_size = len(encode_frame(tenant))
        if batch and size + tenant_size > CHUNK_ITEM_BYTES:
            yield dict(kind="tenants", items=batch)
            batch, size = [], 0
        batch.append(tenant)
        size += tenant_size
    if batch:
        yield dict(kind="tenants", items=batch)
    for key, prefixes in bundle.lists.items():
        for family in (4, 6):
            data, step = prefixes.block(family), CHUNK_RECORD_BYTES - CHUNK_RECORD_BYTES % RECORD_SIZE[family]
            for offset in range(0, len(data), step):
                yield dict(kind="prefixes", list_key=key, family=family, data=data[offset:offset + step])


class EncodedRevision:
    """One revision's snapshot as ready frames: `frames` is (begin, chunks...,
    end), plain bytes objects that every connection writes as they are.
    Without a signer the begin is unsigned (for files that carry their proof
    separately, see revision_file.py)."""

    def __init__(self, bundle: PolicyBundle, signer=None):
        self.bundle = bundle
        self.revision = bundle.revision
        self.digest = bundle.digest
        body = [encode_frame(message_to_wire(SnapshotChunk(revision=self.revision, index=i, **chunk)))
                for i, chunk in enumerate(_chunks(bundle))]
        key_id, signature = signer.sign_snapshot(self.revision, self.digest) if signer else ("", b"")
        begin = SnapshotBegin(self.revision, self.digest, key_id, signature, len(body), bundle.prefix_count)
        end = SnapshotEnd(self.revision, len(body))
        self.frames: tuple[bytes, ...] = (encode_frame(message_to_wire(begin)), *body,
                                          encode_frame(message_to_wire(end)))

    @property
    def size(self) -> int:
        return sum(len(f) for f in self.frames)


class SnapshotCache:
    """The encoded snapshots of the latest few revisions; `get` encodes a
    revision the first time any connection needs it, under a lock, and hands
    the same object to every later caller."""

    def __init__(self, signer, keep: int = 2):
        self.signer, self.keep = signer, keep
        self._encoded: OrderedDict[int, EncodedRevision] = OrderedDict()
        self._lock = threading.Lock()
        self.encodings = 0     # how many times a revision was encoded (tests and benchmarks read it)

    def get(self, bundle: PolicyBundle) -> EncodedRevision:
        with self._lock:
            encoded = self._encoded.get(bundle.revision)
            if encoded is None or encoded.bundle is not bundle and encoded.digest != bundle.digest:
                encoded = EncodedRevision(bundle, self.signer)
                self.encodings += 1
                self._encoded[bundle.revision] = encoded
            self._encoded.move_to_end(bundle.revision)
            while len(self._encoded) > self.keep:
                self._encoded.popitem(last=False)
            return encoded


class SnapshotAssembler:
    """Agent side: one snapshot's chunks in, a PolicyBundle out. Raises
    SnapshotError on the first chunk that does not fit; nothing of a
    snapshot is handed on before its last chunk checked out."""

    def __init__(self, begin: SnapshotBegin):
        if begin.prefixes > MAX_SNAPSHOT_PREFIXES:
            raise SnapshotError(f"snapshot of revision {begin.revision} announces {begin.prefixes} prefixes, "
                                f"more than the {MAX_SNAPSHOT_PREFIXES} an agent accepts")
        self.begin = begin
        self.next_index = 0
        self.top: dict | None = None
        self.tenants: list = []
        self._blocks: dict[tuple[str, int], list[bytes]] = {}
        self._last_record: dict[tuple[str, int], bytes] = {}
        self._records = 0

    def add(self, chunk: SnapshotChunk) -> None:
        where = f"snapshot {self.begin.revision} chunk {chunk.index}"
        if chunk.revision != self.begin.revision:
            raise SnapshotError(f"{where}: belongs to revision {chunk.revision}")
        if chunk.index != self.next_index or chunk.index >= self.begin.chunks:
            raise SnapshotError(f"{where}: expected chunk {self.next_index} of {self.begin.chunks}")
        self.next_index += 1
        if chunk.kind == "document":
            if self.top is not None or len(chunk.items) != 1 or not isinstance(chunk.items[0], dict):
                raise SnapshotError(f"{where}: a document chunk holds one table, once")
            self.top = chunk.items[0]
        elif chunk.kind == "tenants":
            if not all(isinstance(t, dict) for t in chunk.items):
                raise SnapshotError(f"{where}: tenants must be tables")
            self.tenants.extend(chunk.items)
        elif chunk.kind == "prefixes":
            if not LIST_KEY.fullmatch(chunk.list_key):
                raise SnapshotError(f"{where}: {chunk.list_key[:80]!r} is not a list key")
            slot = (chunk.list_key, chunk.family)
            try:
                check_records(chunk.family, chunk.data, f"{where} {chunk.list_key}")
            except PrefixListError as err:
                raise SnapshotError(str(err)) from None
            if not chunk.data:
                raise SnapshotError(f"{where}: empty prefix chunk")
            size = RECORD_SIZE[chunk.family]
            if self._last_record.get(slot, b"") >= chunk.data[:size]:
                raise SnapshotError(f"{where}: {chunk.list_key} IPv{chunk.family} records out of order across chunks")
            self._records += len(chunk.data) // size
            if self._records > self.begin.prefixes:
                raise SnapshotError(f"{where}: more prefixes than the {self.begin.prefixes} announced")
            self._last_record[slot] = chunk.data[-size:]
            self._blocks.setdefault(slot, []).append(chunk.data)
        else:
            raise SnapshotError(f"{where}: unknown chunk kind {chunk.kind[:40]!r}")

    def finish(self, end: SnapshotEnd) -> PolicyBundle:
        where = f"snapshot {self.begin.revision}"
        if end.revision != self.begin.revision or end.chunks != self.begin.chunks or \
                self.next_index != self.begin.chunks:
            raise SnapshotError(f"{where}: ended after {self.next_index} of {self.begin.chunks} chunks")
        if self.top is None:
            raise SnapshotError(f"{where}: no document chunk")
        if self._records != self.begin.prefixes:
            raise SnapshotError(f"{where}: {self._records} prefixes arrived, {self.begin.prefixes} announced")
        document = dict(self.top)
        if "tenants" in document:
            document["tenants"] = self.tenants
        elif self.tenants:
            raise SnapshotError(f"{where}: tenant chunks for a document without tenants")
        keys = sorted({key for key, _ in self._blocks})
        lists = {key: PrefixList(b"".join(self._blocks.get((key, 4), [])), b"".join(self._blocks.get((key, 6), [])))
                 for key in keys}
        # the caller compares bundle.digest with the signed one (a mismatch is a Reject, not a broken stream)
        return PolicyBundle(self.begin.revision, document, lists)
