"""Signed revisions: the controller signs every revision (a snapshot's
revision and digest, a delta's canonical encoding) and every emergency
block with Ed25519; the agent verifies against the public keys its config
trusts (two at once while keys rotate) and refuses, with a reason, what does
not verify or would take it back in time."""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.wire.canonical import canonical_bytes
from agent.wire.messages import Delta, EmergencyBlock, RejectReason, SnapshotBegin

SNAPSHOT_LABEL = "edgewarden/snapshot/v1"
DELTA_LABEL = "edgewarden/delta/v1"
EMERGENCY_LABEL = "edgewarden/emergency/v1"
REPLAY_HISTORY = 4096     # applied (revision, digest) pairs remembered to tell a replay from a rollback


class KeyFileError(ValueError):
    """A key file or key text that cannot be used; says which and what to do."""


class RevisionRefused(Exception):
    """A revision the agent must not apply: `reason` is a RejectReason, `revision` the one refused."""

    def __init__(self, revision: int, reason: RejectReason, message: str):
        self.revision, self.reason = revision, reason
        super().__init__(message)


# ---------------------------------------------------------------- keys
def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key (first 8 bytes of SHA-256 of its raw form)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The raw public key in base64: one line an agent config can hold."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _read(source: str | bytes | Path) -> tuple[bytes, str]:
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and os.path.exists(source)):
        try:
            return Path(source).read_bytes(), str(source)
        except OSError as err:
            raise KeyFileError(f"cannot read key file {source}: {err.strerror}") from None
    return (source.encode() if isinstance(source, str) else source), "<key text>"


def _raw_base64(data: bytes, where: str) -> bytes:
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: neither PEM nor base64 of a raw 32-byte Ed25519 key") from None
    if len(raw) != 32:
        raise KeyFileError(f"{where}: base64 key is {len(raw)} bytes, an Ed25519 key is 32")
    return raw


def load_private_key(source: str | bytes | Path) -> Ed25519PrivateKey:
    """From a path, PEM text (PKCS#8) or base64 of the raw 32-byte seed."""
    data, where = _read(source)
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as err:
            raise KeyFileError(f"{where}: not a readable unencrypted PEM private key ({err})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{where}: a {type(key).__name__}, not an Ed25519 key; make one with keygen")
        return key
    raw = _raw_base64(data, where)
    try:
        return Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError as err:
        raise KeyFileError(f"{where}: not an Ed25519 private key ({err})") from None


def load_public_key(source: str | bytes | Path) -> Ed25519PublicKey:
    """From a path, PEM text (SubjectPublicKeyInfo) or base64 of the raw 32-byte key."""
    data, where = _read(source)
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as err:
            raise KeyFileError(f"{where}: not a readable PEM public key ({err})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{where}: a {type(key).__name__}, not an Ed25519 key")
        return key
    raw = _raw_base64(data, where)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as err:
        raise KeyFileError(f"{where}: not an Ed25519 public key ({err})") from None


def keygen(private_path: str | Path, public_path: str | Path | None = None) -> str:
    """Write a new signing key (PEM, mode 0600) and its public key (PEM;
    default: PRIVATE.pub); refuses to overwrite. Returns the key id."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} exists; move it away first (a signing key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


# ---------------------------------------------------------------- what is signed
def snapshot_signed_bytes(revision: int, digest: bytes) -> bytes:
    return canonical_bytes([SNAPSHOT_LABEL, revision, digest])


def _fields_without_signature(msg) -> dict:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg) if f.name not in ("key_id", "signature")}


def delta_signed_bytes(delta: Delta) -> bytes:
    return canonical_bytes([DELTA_LABEL, _fields_without_signature(delta)])


def emergency_signed_bytes(block: EmergencyBlock) -> bytes:
    return canonical_bytes([EMERGENCY_LABEL, _fields_without_signature(block)])


class BundleSigner:
    """The controller's side: signs with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self.private_key = private_key
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def from_file(cls, source) -> "BundleSigner":
        return cls(load_private_key(source))

    def sign_snapshot(self, revision: int, digest: bytes) -> tuple[str, bytes]:
        return self.key_id, self.private_key.sign(snapshot_signed_bytes(revision, digest))

    def sign_delta(self, delta: Delta) -> Delta:
        """The delta with key_id and signature filled in."""
        unsigned = dataclasses.replace(delta, key_id=self.key_id, signature=b"")
        return dataclasses.replace(unsigned, signature=self.private_key.sign(delta_signed_bytes(unsigned)))

    def sign_emergency(self, block: EmergencyBlock) -> EmergencyBlock:
        unsigned = dataclasses.replace(block, key_id=self.key_id, signature=b"")
        return dataclasses.replace(unsigned, signature=self.private_key.sign(emergency_signed_bytes(unsigned)))

    def make_delta(self, old, new) -> Delta:
        """The signed Delta from bundle `old` to bundle `new` (bundle.make_changes)."""
        from agent.wire.bundle import make_changes
        return self.sign_delta(Delta(old.revision, new.revision, new.digest, "", b"", **make_changes(old, new)))

    def emergency(self, emergency_id: str, prefixes: Iterable[str], reason: str, priority: int = 0,
                  tenant_id: int = 0) -> EmergencyBlock:
        """A signed EmergencyBlock issued now."""
        block = EmergencyBlock(emergency_id, [str(p) for p in prefixes], reason, priority, "", b"", tenant_id,
                               int(time.time()))
        return self.sign_emergency(block)


class BundleVerifier:
    """The agent's side: the trusted keys and the revision it has applied.
    One per agent (not per connection), so a reconnect keeps what it knows."""

    def __init__(self, trusted_keys: Iterable[Ed25519PublicKey], applied_revision: int = 0,
                 applied_digest: bytes = b""):
        self.trusted = {key_id(k): k for k in trusted_keys}
        if not self.trusted:
            raise KeyFileError("no trusted public keys: the agent config must list at least one signing key")
        self.applied_revision, self.applied_digest = applied_revision, applied_digest
        self._history: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        if applied_digest:
            self._history[applied_revision] = applied_digest

    def record_applied(self, revision: int, digest: bytes) -> None:
        """The datapath enforces `revision` now (called when its Ack is sent)."""
        self.applied_revision, self.applied_digest = revision, digest
        self._history[revision] = digest
        self._history.move_to_end(revision)
        while len(self._history) > REPLAY_HISTORY:
            self._history.popitem(last=False)

    def _verify(self, revision: int, kid: str, signature: bytes, payload: bytes) -> None:
        key = self.trusted.get(kid)
        if key is None:
            raise RevisionRefused(revision, RejectReason.UNKNOWN_KEY,
                                  f"revision {revision} is signed by key {kid[:32]!r}, which this agent does not "
                                  f"trust (trusted: {', '.join(sorted(self.trusted))}); add the controller's "
                                  f"public key to the agent config")
        try:
            key.verify(signature, payload)
        except InvalidSignature:
            raise RevisionRefused(revision, RejectReason.BAD_SIGNATURE,
                                  f"revision {revision}: the signature does not verify with key {kid}; "
                                  f"the revision was altered or signed by another key") from None

    def _refuse_old(self, revision: int, digest: bytes) -> None:
        if revision < self.applied_revision or (revision == self.applied_revision and digest != self.applied_digest
                                                and self.applied_digest):
            if self._history.get(revision) == digest:
                raise RevisionRefused(revision, RejectReason.REPLAYED,
                                      f"revision {revision} was applied before and is sent again; "
                                      f"revision {self.applied_revision} is applied")
            raise RevisionRefused(revision, RejectReason.BACKWARDS,
                                  f"revision {revision} would take the agent back from revision "
                                  f"{self.applied_revision}")

    def check_snapshot(self, begin: SnapshotBegin) -> None:
        """RevisionRefused unless the snapshot is signed by a trusted key and
        not older than the applied revision (the applied revision itself, with
        its own digest, is a resync and allowed)."""
        self._verify(begin.revision, begin.key_id, begin.signature,
                     snapshot_signed_bytes(begin.revision, begin.digest))
        self._refuse_old(begin.revision, begin.digest)

    def check_delta(self, delta: Delta) -> None:
        self._verify(delta.to_revision, delta.key_id, delta.signature, delta_signed_bytes(delta))
        if delta.to_revision <= delta.from_revision:
            raise RevisionRefused(delta.to_revision, RejectReason.BACKWARDS,
                                  f"delta from revision {delta.from_revision} to {delta.to_revision} goes backwards")
        if delta.to_revision <= self.applied_revision:
            self._refuse_old(delta.to_revision, delta.to_digest)
            raise RevisionRefused(delta.to_revision, RejectReason.REPLAYED,
                                  f"revision {delta.to_revision} is applied already")
        if delta.from_revision != self.applied_revision:
            raise RevisionRefused(delta.to_revision, RejectReason.WRONG_BASE,
                                  f"delta from revision {delta.from_revision}, but revision "
                                  f"{self.applied_revision} is applied; a snapshot is needed")

    def check_proof(self, proof: SnapshotBegin | Delta, revision: int, digest: bytes) -> None:
        """RevisionRefused unless `proof` (a snapshot's begin or a delta, as
        received) is signed by a trusted key and says `revision` has `digest`.
        No ordering check: this is how a stored revision is trusted again."""
        if isinstance(proof, SnapshotBegin):
            self._verify(proof.revision, proof.key_id, proof.signature,
                         snapshot_signed_bytes(proof.revision, proof.digest))
            stated = (proof.revision, proof.digest)
        elif isinstance(proof, Delta):
            self._verify(proof.to_revision, proof.key_id, proof.signature, delta_signed_bytes(proof))
            stated = (proof.to_revision, proof.to_digest)
        else:
            raise RevisionRefused(revision, RejectReason.BAD_SIGNATURE,
                                  f"a {type(proof).__name__} does not prove a revision")
        if stated != (revision, digest):
            raise RevisionRefused(revision, RejectReason.DIGEST_MISMATCH,
                                  f"revision {revision}: its content does not match what the signature covers "
                                  f"(revision {stated[0]})")

    def check_emergency(self, block: EmergencyBlock) -> None:
        self._verify(0, block.key_id, block.signature, emergency_signed_bytes(block))
