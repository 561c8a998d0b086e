"""A stored revision's document as the PolicyBundle the hub signs and sends,
with its source lists parsed by the native list parser.

PolicyBundle.from_document parses every CIDR text with ipaddress: about
11 s for a 1M-prefix list, paid for each revision, so one added entry took
that long to reach the fleet. The controller's documents hold the compiled
sets' texts (controller.revisions.validated_document), which the native
parser reads back into exactly the records from_document makes, in a
fraction of that time. A list the parser would change (duplicates,
overlapping or mergeable prefixes: anything that is not a compiled set)
falls back to from_document's own parse, so the bundle, its digest and the
bytes on the wire are the same either way."""

from __future__ import annotations

from agent.wire import PolicyBundle, PrefixList
from agent.wire.bundle import POLICY_LIST, list_key
from controller.prefixes import prefix_set


def source_list(texts: list[str]) -> PrefixList:
    """PrefixList.from_networks(texts), natively when the texts are a compiled set."""
    if not texts:
        return PrefixList()
    compiled = PrefixList.from_prefix_set(prefix_set(texts))
    v6 = sum(1 for t in texts if ":" in t)
    # one record per text in each family: nothing was merged, deduplicated or
    # moved between families, so the records are the texts' own networks
    if compiled.count(6) == v6 and compiled.count(4) == len(texts) - v6:
        try:   # sorted, duplicate-free and without host bits, as from_networks makes them
            return PrefixList.from_packed(compiled.v4, compiled.v6)
        except ValueError:
            pass
    return PrefixList.from_networks(texts)


def bundle_from_document(document: dict) -> PolicyBundle:
    """PolicyBundle.from_document(document), with the source lists parsed natively."""
    lists = {}
    skeleton = dict(document)
    if "global" in skeleton:
        table = dict(skeleton["global"])
        sources = table.pop("blocked_sources", [])
        if sources:
            lists[list_key(POLICY_LIST)] = source_list(sources)
        skeleton["global"] = table
    tenants = []
    for tenant in skeleton.get("tenants", []):
        tenant = dict(tenant)
        sources = tenant.pop("blocked_sources", [])
        if sources:
            lists[list_key(POLICY_LIST, tenant["id"])] = source_list(sources)
        tenants.append(tenant)
    if "tenants" in skeleton:
        skeleton["tenants"] = tenants
    bundle = PolicyBundle.from_document(skeleton)   # the document part, exactly as from_document makes it
    return PolicyBundle(bundle.revision, bundle.document, lists)
