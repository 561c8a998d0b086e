"""What one revision enforces, in the form the wire carries it: the policy
document without its block lists, plus every block list (the document's
own blocked_sources and the named lists) as a PrefixList. The one policy
digest, and deltas between two bundles (made on the controller, applied
on the agent)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from agent.wire.canonical import canonical_bytes, unordered_canonical_bytes
from agent.wire.prefixes import PrefixList, PrefixListError

POLICY_LIST = "policy"   # the document's own blocked_sources of a scope (as agent.datapath.named_lists)
LIST_KEY = re.compile(r"(global|tenant-[1-9][0-9]{0,9})/[a-z0-9][a-z0-9._-]{0,62}")
DIGEST_LABEL = "edgewarden/policy-digest/v1"


class DeltaError(ValueError):
    """A delta that does not fit the bundle it is applied to; `reason` is a RejectReason value."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def scope_key(tenant_id: int | None) -> str:
    return "global" if tenant_id is None else f"tenant-{tenant_id}"


def list_key(name: str, tenant_id: int | None = None) -> str:
    """'global/NAME' or 'tenant-ID/NAME', as agent.datapath.named_lists.ListId prints it."""
    key = f"{scope_key(tenant_id)}/{name}"
    if not LIST_KEY.fullmatch(key):
        raise ValueError(f"list key {key!r}: names are 1-63 of a-z 0-9 . _ -, tenant ids 1..4294967295")
    return key


@dataclass(frozen=True, eq=False)
class PolicyBundle:
    """`document` is the policy document (agent.policy.policy_to_document
    form) with "revision" and every "blocked_sources" taken out; those
    prefixes are in lists["global/policy"] and lists["tenant-ID/policy"]."""

    revision: int
    document: dict
    lists: Mapping[str, PrefixList] = field(default_factory=dict)

    def __post_init__(self):
        for key in self.lists:
            if not LIST_KEY.fullmatch(key):
                raise ValueError(f"list key {key!r} is not 'global/NAME' or 'tenant-ID/NAME'")
        # an empty list and no list enforce the same: keep one spelling, so digests agree
        object.__setattr__(self, "lists", {k: v for k, v in sorted(self.lists.items()) if len(v)})

    # -- the document, in and out
    @classmethod
    def from_document(cls, document: dict, lists: Mapping[str, PrefixList] | None = None) -> "PolicyBundle":
        """From a full policy document (blocked_sources as CIDR strings) and named lists."""
        lists = dict(lists or {})
        reserved = [k for k in lists if k.endswith("/" + POLICY_LIST)]
        if reserved:
            raise ValueError(f"list {reserved[0]!r}: the name {POLICY_LIST!r} is reserved for the document's own "
                             f"blocked_sources; name the list otherwise")
        skeleton = {k: v for k, v in document.items() if k != "revision"}
        if "global" in skeleton:
            table = dict(skeleton["global"])
            sources = table.pop("blocked_sources", [])
            if sources:
                lists[list_key(POLICY_LIST)] = PrefixList.from_networks(sources)
            skeleton["global"] = table
        tenants = []
        for tenant in skeleton.get("tenants", []):
            tenant = dict(tenant)
            sources = tenant.pop("blocked_sources", [])
            if sources:
                lists[list_key(POLICY_LIST, tenant["id"])] = PrefixList.from_networks(sources)
            tenants.append(tenant)
        if "tenants" in skeleton:
            skeleton["tenants"] = tenants
        return cls(int(document.get("revision", 0)), skeleton, lists)

    @classmethod
    def from_policy(cls, policy, lists: Mapping[str, PrefixList] | None = None) -> "PolicyBundle":
        from agent.policy import policy_to_document   # imported here: the wire does not need the policy model
        return cls.from_document(policy_to_document(policy), lists)

    def full_document(self) -> dict:
        """The policy document with blocked_sources back in (for agent.policy.policy_from_document)."""
        doc = {"revision": self.revision, **self.document}
        own = self.lists.get(list_key(POLICY_LIST))
        doc["global"] = {**doc.get("global", {}), "blocked_sources": list(own.cidrs()) if own else []}
        tenants = []
        for tenant in doc.get("tenants", []):
            own = self.lists.get(list_key(POLICY_LIST, tenant["id"]))
            tenants.append({**tenant, "blocked_sources": list(own.cidrs()) if own else []})
        doc["tenants"] = tenants
        return doc

    def named_lists(self) -> dict[str, PrefixList]:
        """The lists that are not a document's own blocked_sources."""
        return {k: v for k, v in self.lists.items() if not k.endswith("/" + POLICY_LIST)}

    def tenant(self, tenant_id: int) -> dict | None:
        return next((t for t in self.document.get("tenants", []) if t.get("id") == tenant_id), None)

    @property
    def prefix_count(self) -> int:
        return sum(len(v) for v in self.lists.values())

    # -- the digest
    @cached_property
    def digest(self) -> bytes:
        return policy_digest(self)


def policy_digest(bundle: PolicyBundle) -> bytes:
    """SHA-256 over the canonical document (lists in any order give one
    digest) and every list's records (canonical by construction). The
    revision number is not part of it: signatures bind the two together."""
    # no list in the document is ordered (tenants, VIPs, ports): their order does not change the digest
    h = hashlib.sha256(canonical_bytes(DIGEST_LABEL) + unordered_canonical_bytes(bundle.document))
    for key, prefixes in sorted(bundle.lists.items()):
        h.update(canonical_bytes([key, len(prefixes.v4), len(prefixes.v6)]))
        h.update(prefixes.v4)
        h.update(prefixes.v6)
    return h.digest()


def document_digest(document: dict, lists: Mapping[str, PrefixList] | None = None) -> bytes:
    """The digest of a full policy document and its named lists (what the hello and drift reports carry)."""
    return PolicyBundle.from_document(document, lists).digest


# ---------------------------------------------------------------- deltas
def make_changes(old: PolicyBundle, new: PolicyBundle) -> dict:
    """The Delta fields (less revisions, digest and signature) that turn `old` into `new`."""
    document = {k: new.document.get(k) for k in sorted(set(old.document) | set(new.document))
                if k != "tenants" and old.document.get(k) != new.document.get(k)}
    old_tenants = {t["id"]: t for t in old.document.get("tenants", [])}
    new_tenants = {t["id"]: t for t in new.document.get("tenants", [])}
    changed = []
    for key in sorted(set(old.lists) | set(new.lists)):
        if key not in new.lists:
            continue
        before, after = old.lists.get(key, PrefixList()), new.lists[key]
        if before == after:
            continue
        added, removed = before.difference(after)
        changed.append({"list": key, "add4": added.v4, "add6": added.v6,
                        "remove4": removed.v4, "remove6": removed.v6})
    return {
        "document": document,
        "tenants_set": [t for i, t in sorted(new_tenants.items()) if old_tenants.get(i) != t],
        "tenants_removed": sorted(set(old_tenants) - set(new_tenants)),
        "lists_changed": changed,
        "lists_removed": sorted(set(old.lists) - set(new.lists)),
    }


def apply_delta(bundle: PolicyBundle, delta) -> PolicyBundle:
    """The bundle `delta` (a messages.Delta) makes from `bundle`; DeltaError
    if it was made from another base or the result is not its signed digest.
    Touches only the lists it changes (a bisect per prefix, one copy)."""
    if delta.from_revision != bundle.revision:
        raise DeltaError("wrong_base", f"delta from revision {delta.from_revision} cannot apply to revision "
                                       f"{bundle.revision}; a resync (snapshot) is needed")
    try:
        document = {k: v for k, v in bundle.document.items()}
        for key, value in delta.document.items():
            if key == "tenants":
                raise DeltaError("invalid_policy", "a delta's document cannot replace 'tenants' (use tenants_set)")
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        tenants = {t["id"]: t for t in bundle.document.get("tenants", [])}
        for tenant_id in delta.tenants_removed:
            if tenants.pop(tenant_id, None) is None:
                raise DeltaError("wrong_base", f"delta removes tenant {tenant_id}, which revision "
                                               f"{bundle.revision} does not have")
        for tenant in delta.tenants_set:
            if not isinstance(tenant, dict) or type(tenant.get("id")) is not int:
                raise DeltaError("invalid_policy", "tenants_set holds a tenant without an integer id")
            tenants[tenant["id"]] = tenant
        if tenants or "tenants" in bundle.document:
            document["tenants"] = [tenants[i] for i in sorted(tenants)]
        lists = dict(bundle.lists)
        for key in delta.lists_removed:
            if lists.pop(key, None) is None:
                raise DeltaError("wrong_base", f"delta removes list {key!r}, which revision "
                                               f"{bundle.revision} does not have")
        for change in delta.lists_changed:
            key = change.get("list") if isinstance(change, dict) else None
            if not isinstance(key, str) or not LIST_KEY.fullmatch(key):
                raise DeltaError("invalid_policy", f"lists_changed names no valid list ({str(key)[:60]!r})")
            added = PrefixList.from_packed(change.get("add4", b""), change.get("add6", b""), f"{key} add")
            removed = PrefixList.from_packed(change.get("remove4", b""), change.get("remove6", b""),
                                             f"{key} remove")
            try:
                lists[key] = lists.get(key, PrefixList()).apply(added, removed)
            except PrefixListError as err:
                raise DeltaError("wrong_base", f"list {key}: {err} (the delta was made from another base)") \
                    from None
    except PrefixListError as err:
        raise DeltaError("invalid_policy", str(err)) from None
    except (TypeError, AttributeError, KeyError) as err:
        raise DeltaError("invalid_policy", f"delta is not well formed: {err}") from None
    result = PolicyBundle(delta.to_revision, document, lists)
    if result.digest != delta.to_digest:
        raise DeltaError("digest_mismatch", f"revision {delta.to_revision} built from this delta does not "
                                            f"match its signed digest; the agent needs a resync")
    return result
