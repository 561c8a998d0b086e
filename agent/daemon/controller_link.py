"""The agent in controller mode: the last good signed revision is re-applied
from disk at boot (the node enforces while its controller is unreachable),
then the agent dials the controller over mutual TLS with backoff and
jitter, takes snapshots and deltas, applies each through the daemon's one
writer, stores it, and only then acknowledges it; a revision that does not
verify or does not apply is rejected with the reason and the last good one
stays in force. It also sends the spool's incidents until each is
acknowledged, and per-tenant counter summaries every few seconds.

Every list of a revision (the document's own blocked_sources included) is
a datapath named list, so a delta that only changes list entries is
written in place on the kernel tables (revision_delta), at a cost of the
change; the revision file takes the signed delta appended. The digest
report is what the tables hold: they are read back and compared with the
digests every write keeps (agent.datapath.table_digest), and a difference
(a map changed by hand) is reported as drift, which the controller answers
with a snapshot that rebuilds the tables."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from agent.daemon import journal
from agent.daemon.config import AgentConfig
from agent.daemon.dpdk_enforcer import DpdkEnforcer
from agent.daemon.revision_delta import delta_list_changes, list_id, only_list_entries, prefix_listed
from agent.datapath.errors import InterfaceError
from agent.datapath.table_digest import digests_for
from agent.policy import Policy, PolicyError, policy_from_document
from agent.wire import (
    Ack, BundleVerifier, ConnectionClosed, CounterSummary, DeltaError, DeltaReceived, DigestReport, DigestRequest,
    EmergencyAck, EmergencyReceived, EvidenceAck, EvidenceManifest, Hello, IncidentAck, IncidentReport, PolicyBundle, Reject,
    RejectReason, RevisionFileError, RevisionRejected, SnapshotReceived, apply_delta, load_public_key, read_revision,
    write_revision,
)
from agent.wire.bundle import POLICY_LIST, list_key as wire_list_key
from agent.wire.revision_file import append_delta
from agent.wire.frames import PROTOCOL_VERSION

INCIDENT_RESEND_SECONDS = 1.0   # how often unacknowledged spool reports are looked for
APPENDED_DELTAS_KEPT = 32       # deltas appended to the stored revision before it is written whole again
APPENDED_BYTES_KEPT = 4 << 20   # ... or once they take this much
DRIFTED_DIGEST = bytes(32)      # reported when the tables do not hold what the agent wrote (the controller resyncs)


class ApplyFailed(Exception):
    def __init__(self, reason: RejectReason, message: str):
        self.reason = reason
        super().__init__(message)


def agent_version() -> str:
    try:
        from importlib.metadata import version
        return version("edgewarden")
    except Exception:
        return "dev"


def bundle_policy(bundle: PolicyBundle, emergency: frozenset[tuple[int, str]] = frozenset()) -> Policy:
    """The policy document of a bundle for the enforcer: its tenants and
    settings, with only the emergency blocks no revision carries yet as
    blocked_sources. The revision's own lists (the document's blocked_sources
    included) are enforced as named lists (bundle_lists), so a change of
    their entries is written in place."""
    document = {"revision": bundle.revision, **bundle.document}
    document["global"] = {**document.get("global", {}),
                          "blocked_sources": sorted(c for t, c in emergency if t == 0)}
    document["tenants"] = [{**t, "blocked_sources": sorted(c for i, c in emergency if i == t["id"])}
                           for t in document.get("tenants", [])]
    return policy_from_document(document, f"controller revision {bundle.revision}")


def carried_by(bundle: PolicyBundle, tenant_id: int, cidr: str) -> bool:
    """True when the revision's own list of the scope holds the emergency block `cidr` (a bisect, not a scan)."""
    own = bundle.lists.get(wire_list_key(POLICY_LIST, tenant_id or None))
    return own is not None and prefix_listed(own, cidr)


def bundle_lists(bundle: PolicyBundle) -> dict:
    """Every list of a bundle as the datapath named list enforcing it (ListId -> PrefixSet)."""
    return {list_id(k): v.to_prefix_set() for k, v in bundle.lists.items()}


@dataclass
class ChangeApplied:
    """How a revision reached the datapath."""
    results: dict
    path: str                    # "delta": list entries written in place; "full": policy and lists re-applied
    seconds: float               # the whole apply, in the writer thread
    tables_seconds: float = 0.0  # delta path: the live tables written (what enforcement waited for)
    store_seconds: float = 0.0   # delta path: the list journals appended
    fallback: str = ""           # why a delta went the full way


def apply_bundle_change(enforcer, old: PolicyBundle | None, new: PolicyBundle, delta=None,
                        emergency: frozenset[tuple[int, str]] = frozenset(), *,
                        emergency_before: frozenset[tuple[int, str]] | None = None,
                        repair: bool = False) -> ChangeApplied:
    """Make the datapath enforce `new` (runs in the enforcer's writer thread).
    A `delta` (the wire Delta that made `new` from `old`) that only changes
    list entries, with the emergency blocks unchanged, is written in place
    on the kernel tables (revision_delta, agent.datapath.list_delta): a cost
    of the change, not of the lists. Anything else (a document or tenant
    change, a list dropped, the DPDK engine, a delta that fails) goes the
    full way: the policy through the enforcer, every changed list replaced
    whole. `repair`: also every list reloaded and every block table rebuilt
    against what the kernel holds (a resync after drift). ApplyFailed (a
    RejectReason and why) leaves `old` in force."""
    started = time.perf_counter()
    kernel = not isinstance(enforcer, DpdkEnforcer)
    fallback = ""
    if delta is not None and old is not None and not repair and kernel:
        if not only_list_entries(delta):
            fallback = "the delta changes the document, tenants or drops a list"
        elif emergency != (emergency_before if emergency_before is not None else emergency):
            fallback = "the emergency blocks changed"
        else:
            try:
                changes = delta_list_changes(new.lists, delta)
                results, tables, store = enforcer.apply_list_deltas(changes)
            except (InterfaceError, OSError, ValueError) as err:
                fallback = f"the in-place delta failed ({err}); re-applied whole"
                journal.warning(f"revision {new.revision}: {fallback}", event="delta_fallback")
                repair = True
            else:
                enforcer.policy = replace(enforcer.policy, revision=new.revision)
                return ChangeApplied(results, "delta", time.perf_counter() - started, tables, store)
    results = _apply_whole(enforcer, old, new, emergency, repair, kernel)
    return ChangeApplied(results, "full", time.perf_counter() - started, fallback=fallback)


def _apply_whole(enforcer, old: PolicyBundle | None, new: PolicyBundle, emergency, repair: bool,
                 kernel: bool) -> dict:
    try:
        policy = bundle_policy(new, emergency)
    except PolicyError as err:
        raise ApplyFailed(RejectReason.INVALID_POLICY, str(err)[:900]) from None
    previous = enforcer.policy
    if kernel:
        enforcer.tables_unknown()     # until read back after this apply (ControllerMode._after_full_apply)
    old_lists = old.lists if old is not None else {}
    results: dict = {}
    failed: dict = {}
    try:
        # lists the revision drops go first, while their tenants are still in the applied policy
        for key in set(old_lists) - set(new.lists):
            results.update(enforcer.replace_list(list_id(key), None))
        enforcer.policy = policy
        results.update(enforcer.apply_all())
        failed = {k: v for k, v in results.items() if isinstance(v, str) and v.startswith("failed")}
        if not failed and repair and kernel:
            results.update(enforcer.sync_lists(bundle_lists(new)))
            enforcer.rebuild_block_tables()
        elif not failed:
            for key, prefixes in new.lists.items():
                if repair or old_lists.get(key) != prefixes:
                    results.update(enforcer.replace_list(list_id(key), prefixes.to_prefix_set()))
    except (InterfaceError, OSError, ValueError) as err:
        failed = {"lists": str(err)}
    if failed:
        enforcer.policy = previous
        enforcer.apply_all()
        raise ApplyFailed(RejectReason.APPLY_FAILED, "; ".join(f"{k}: {v}" for k, v in failed.items())[:900])
    return results


def _delta_entries(delta) -> int:
    sizes = {"add4": 5, "remove4": 5, "add6": 17, "remove6": 17}
    return sum(len(change.get(k, b"")) // n for change in delta.lists_changed for k, n in sizes.items())


def flat_totals(row: dict) -> dict[str, int]:
    """A tenant's totals as the metrics keep them (packets, bytes, and a
    drops dict by reason) as the flat counter names a CounterSummary
    carries: packets, bytes, dropped_packets and each drop reason's name."""
    drops = row.get("drops", {})
    return {"packets": int(row.get("packets", 0)), "bytes": int(row.get("bytes", 0)),
            "dropped_packets": int(sum(drops.values())), **{name: int(n) for name, n in drops.items()}}


def interval_counts(rows: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> list[dict]:
    """Per tenant (not "other"), the counts since `before` (flat_totals
    rows); a counter that went back (slots reset) counts from zero."""
    out = []
    for tenant, totals in rows.items():
        if not tenant.isdigit():
            continue
        earlier = before.get(tenant, {})
        out.append({"tenant_id": int(tenant), **{k: max(0, v - earlier.get(k, 0)) for k, v in totals.items()}})
    return out


class ControllerMode:
    def __init__(self, daemon, config: AgentConfig):
        self.daemon, self.config, self.settings = daemon, config, config.controller
        self.verifier = BundleVerifier([load_public_key(p) for p in self.settings.trusted_keys])
        self.bundle: PolicyBundle | None = None
        self.emergency: frozenset[tuple[int, str]] = frozenset()
        self.connected = False
        self.sessions = 0
        self._sent_incidents: dict[str, int] = {}    # incident id -> spool report id, sent on this connection
        self._sent_evidence: set[int] = set()         # manifest seqs sent on this connection
        self._evidence_acked = self._read_evidence_acked()
        self._last_totals: dict[str, dict] = {}
        self._stored_revision: int | None = None    # what the revision file ends with, if this process wrote it
        self._appended = (0, 0)                       # deltas appended to it since it was written whole, bytes
        self._repair_next = False                     # a drift was found: the next snapshot rebuilds the tables
        self._digest_task: asyncio.Task | None = None  # the digest check running, if any

    @property
    def address(self) -> str:
        return self.settings.address

    # -- boot ------------------------------------------------------------------
    def restore(self) -> PolicyBundle | None:
        """The stored last good revision, checked again; None if there is none (or it cannot be trusted)."""
        path = self.config.revision_path
        if not path.exists():
            return None
        try:
            bundle = read_revision(path, self.verifier)
        except RevisionFileError as err:
            journal.error(f"the stored revision is not used: {err}", event="revision_file_refused")
            return None
        self.verifier.record_applied(bundle.revision, bundle.digest)
        self.bundle = bundle
        journal.info("re-applying the last good revision from disk before connecting", event="revision_restored",
                     revision=bundle.revision, path=str(path))
        return bundle

    def apply_restored_lists(self) -> None:
        """The lists of the restored revision, exactly (the policy itself went
        in with the first attach; lists stored by a delta the revision file
        did not get, before a crash, are put back to the revision)."""
        if self.bundle is None:
            return
        enforcer = self.daemon.enforcer
        if isinstance(enforcer, DpdkEnforcer):
            for key, prefixes in self.bundle.lists.items():
                enforcer.replace_list(list_id(key), prefixes.to_prefix_set())
            return
        enforcer.sync_lists(bundle_lists(self.bundle))
        # a crash mid-delta may have left part of a newer revision in the tables: back to this one exactly
        enforcer.rebuild_block_tables()
        enforcer.tables_written()

    # -- the connection ---------------------------------------------------------
    async def run(self) -> None:
        from agent.wire.asyncio_client import ControllerRefused, connect, reconnect_delays
        from agent.wire.tls import client_context
        host, port = self.settings.host_port
        context = client_context(self.settings.cert, self.settings.key, self.settings.ca)
        delays = reconnect_delays()
        while True:
            try:
                link = await connect(host, port, ssl_context=context, hello=self._hello(), verifier=self.verifier,
                                     server_hostname=self.settings.server_name or host)
            except (OSError, asyncio.TimeoutError, ControllerRefused) as err:
                delay = next(delays)
                journal.warning(f"controller {self.address} not reachable ({err}); the node keeps enforcing "
                                f"revision {self.verifier.applied_revision}; retrying in {delay:.1f} s",
                                event="controller_unreachable", controller=self.address)
                await asyncio.sleep(delay)
                continue
            delays = reconnect_delays()
            self.connected, self.sessions = True, self.sessions + 1
            journal.info("connected to the controller", event="controller_connected", controller=self.address,
                         latest=link.welcome.latest_revision, applied=self.verifier.applied_revision)
            try:
                await self._session(link)
            except (OSError, ConnectionError) as err:
                journal.warning(f"controller connection failed: {err}", event="controller_lost")
            finally:
                self.connected = False
                await link.close()
            await asyncio.sleep(next(delays))

    def _hello(self) -> Hello:
        modes = {n: s.mode for n, s in self.daemon.enforcer.interfaces.items()}
        return Hello(PROTOCOL_VERSION, self.config.node, self.verifier.applied_revision, self.verifier.applied_digest,
                     agent_version(), modes)

    # -- evidence manifests: every entry after the last one acknowledged (seq kept in state_dir) --
    @property
    def _evidence_acked_path(self):
        return self.config.state_dir / "evidence-acked-seq"

    def _read_evidence_acked(self) -> int:
        try:
            return int(self._evidence_acked_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _evidence_unsent(self) -> list[dict]:
        from agent.evidence.manifest import read_entries
        entries, _problems = read_entries(self.config.evidence.directory)
        return [e for e in entries if isinstance(e.get("seq"), int) and e["seq"] > self._evidence_acked
                and e["seq"] not in self._sent_evidence]

    def _evidence_acknowledged(self, seq: int) -> None:
        if seq > self._evidence_acked:
            self._evidence_acked = seq
            tmp = self._evidence_acked_path.with_suffix(".tmp")
            tmp.write_text(str(seq))
            tmp.replace(self._evidence_acked_path)

    async def _session(self, link) -> None:
        self._sent_incidents, self._sent_evidence = {}, set()
        reporter = asyncio.create_task(self._report_loop(link), name="controller-reports")
        try:
            while True:
                event = await link.next_event()
                if isinstance(event, ConnectionClosed):
                    journal.warning(f"controller closed the connection ({event.reason}: {event.message})",
                                    event="controller_closed", by_peer=event.by_peer)
                    return
                await self._on_event(link, event)
        finally:
            reporter.cancel()
            tasks = [reporter]
            if self._digest_task is not None:
                self._digest_task.cancel()
                tasks.append(self._digest_task)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_event(self, link, event) -> None:
        if isinstance(event, SnapshotReceived):
            await self._apply(link, event.bundle, event.proof, None)
        elif isinstance(event, DeltaReceived):
            if self.bundle is None:
                await link.send(Reject(event.delta.to_revision, RejectReason.WRONG_BASE.value,
                                       "this agent holds no revision to apply a delta to; a snapshot is needed"))
                return
            try:
                new = apply_delta(self.bundle, event.delta)
            except DeltaError as err:
                journal.error(f"revision {event.delta.to_revision} rejected: {err}", event="revision_rejected",
                              reason=err.reason)
                await link.send(Reject(event.delta.to_revision, err.reason, str(err)[:1000]))
                return
            await self._apply(link, new, event.delta, event.delta)
        elif isinstance(event, RevisionRejected):
            journal.error(f"revision {event.revision} refused before applying it ({event.reason.value}): "
                          f"{event.message}", event="revision_refused", reason=event.reason.value)
        elif isinstance(event, EmergencyReceived):
            await self._emergency(link, event.block)
        elif isinstance(event, DigestRequest):
            # the read-back takes up to a second for a 1M-prefix list: revisions keep being applied meanwhile
            if self._digest_task is None or self._digest_task.done():
                self._digest_task = asyncio.create_task(self._digest_report(link, event.nonce), name="digest-check")
        elif isinstance(event, IncidentAck):
            report_id = self._sent_incidents.pop(event.incident_id, None)
            if report_id is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.daemon.spool.acknowledge, [report_id])
        elif isinstance(event, EvidenceAck):
            seq = event.evidence_id.rsplit(":", 2)[-2] if event.evidence_id.count(":") >= 2 else ""
            if seq.isdigit():
                await asyncio.get_running_loop().run_in_executor(None, self._evidence_acknowledged, int(seq))

    async def _apply(self, link, new: PolicyBundle, proof, delta) -> None:
        old = self.bundle
        emergency = frozenset(e for e in self.emergency if not carried_by(new, *e))
        # a snapshot of what this agent already holds is a resync: the tables are rebuilt, not trusted
        repair = delta is None and (self._repair_next or (old is not None and old.digest == new.digest))
        journal.info("applying revision", event="revision_applying", revision=new.revision,
                     by="delta" if delta is not None else "snapshot", repair=repair,
                     entries=_delta_entries(delta) if delta is not None else new.prefix_count)
        try:
            change = await self.daemon.in_writer(
                lambda: apply_bundle_change(self.daemon.enforcer, old, new, delta, emergency,
                                            emergency_before=self.emergency, repair=repair))
        except ApplyFailed as err:
            journal.error(f"revision {new.revision} rejected, revision {self.verifier.applied_revision} stays in "
                          f"force: {err}", event="revision_rejected", reason=err.reason.value)
            await link.send(Reject(new.revision, err.reason.value, str(err)))
            return
        # on disk before the ack: what was acknowledged survives a crash right after
        persist_started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, self._store, new, proof, delta)
        persist_seconds = time.perf_counter() - persist_started
        self.bundle, self.emergency = new, emergency
        if repair:
            self._repair_next = False
        await link.send(Ack(new.revision, new.digest))
        if change.path == "full":
            self._after_full_apply()
        else:
            self._after_delta_apply()
        self.daemon._after_change()
        self.daemon.metrics.revision_apply_seconds.labels(change.path).set(change.seconds)
        journal.info("revision applied", event="revision_applied", revision=new.revision,
                     by="delta" if delta is not None else "snapshot", datapath=change.path,
                     apply_ms=round(change.seconds * 1e3, 3), tables_ms=round(change.tables_seconds * 1e3, 3),
                     store_ms=round(change.store_seconds * 1e3, 3), persist_ms=round(persist_seconds * 1e3, 3),
                     repaired=repair, **({"fallback": change.fallback} if change.fallback else {}),
                     interfaces=change.results)

    def _after_delta_apply(self) -> None:
        """The revision beside the pins brought up to date, in the writer after the ack."""
        future = asyncio.get_running_loop().run_in_executor(self.daemon.enforcer.writer,
                                                            self.daemon.enforcer.record_revision)

        def done(f):
            if not f.cancelled() and f.exception() is not None:
                journal.error(f"recording the revision beside the pins failed: {f.exception()}",
                              event="revision_record_failed")
        future.add_done_callback(done)

    def _after_full_apply(self) -> None:
        """Read the tables' digests back, in the writer after the ack (a
        million entries take about half a second: the ack does not wait)."""
        enforcer = self.daemon.enforcer
        if isinstance(enforcer, DpdkEnforcer):
            return
        future = asyncio.get_running_loop().run_in_executor(enforcer.writer, enforcer.tables_written)

        def done(f):
            if not f.cancelled() and f.exception() is not None:
                journal.error(f"reading the block tables back failed: {f.exception()}", event="table_readback_failed")
        future.add_done_callback(done)

    def _store(self, new: PolicyBundle, proof, delta) -> None:
        """The revision file: the delta appended when the file ends with its
        base (cheap), else the whole revision written again."""
        path = self.config.revision_path
        count, size = self._appended
        if delta is not None and self._stored_revision == delta.from_revision and \
                count < APPENDED_DELTAS_KEPT and size < APPENDED_BYTES_KEPT:
            before = path.stat().st_size
            after = append_delta(path, delta)
            self._appended = (count + 1, size + after - before)
        else:
            write_revision(path, new, proof)
            self._appended = (0, 0)
        self._stored_revision = new.revision

    async def _digest_report(self, link, nonce: int) -> None:
        """The digest of what the datapath holds: the applied one if the block
        tables read back as the agent wrote them, else DRIFTED_DIGEST (the
        controller then resyncs, and the snapshot rebuilds the tables)."""
        enforcer = self.daemon.enforcer
        digest = self.verifier.applied_digest
        revision = self.verifier.applied_revision
        if not isinstance(enforcer, DpdkEnforcer) and self.bundle is not None:
            started = time.perf_counter()
            try:
                checks = await asyncio.get_running_loop().run_in_executor(None, enforcer.check_tables)
            except (InterfaceError, OSError) as err:     # (an interface gone meanwhile: no judgement this time)
                journal.warning(f"the block tables could not be read back: {err}", event="digest_check_failed")
                checks = {}
            seconds = time.perf_counter() - started
            self.daemon.metrics.table_check_seconds.set(seconds)
            drifted = {ifname: c.drifted for ifname, c in checks.items() if c.drifted}
            if drifted:
                self._repair_next = True
                self.daemon.metrics.drift_detected.inc()
                where = "; ".join(f"{i}: {', '.join(t)}" for i, t in drifted.items())
                journal.warning(f"the block tables do not hold what revision {revision} wrote ({where}): changed "
                                f"outside the agent; reporting drift so the controller resyncs",
                                event="drift_detected", revision=revision, tables=drifted,
                                readback_ms=round(seconds * 1e3, 1),
                                entries=sum(c.entries for c in checks.values()))
                digest = DRIFTED_DIGEST
            else:
                journal.info("the block tables read back as the agent wrote them", event="digest_checked",
                             revision=revision, readback_ms=round(seconds * 1e3, 1),
                             entries=sum(c.entries for c in checks.values()),
                             decided=bool(checks) and all(c.decided for c in checks.values()))
                undecided = [i for i, c in checks.items() if not c.decided]
                if undecided and any(digests_for(i).expected is None for i in undecided):
                    # nothing known of these tables yet (an interface attached again): take them as they are
                    await self.daemon.in_writer(enforcer.tables_written)
        try:
            await link.send(DigestReport(revision, digest, nonce))
        except Exception as err:      # the connection closed meanwhile: its session handles that
            journal.warning(f"digest report not sent: {type(err).__name__}: {err}", event="digest_report_unsent")

    async def _emergency(self, link, block) -> None:
        extra = frozenset((block.tenant_id, p) for p in block.prefixes)
        emergency = self.emergency | extra
        # before any revision came: on top of what the node enforces now
        base = self.bundle or PolicyBundle.from_policy(self.daemon.enforcer.policy)
        try:
            await self.daemon.in_writer(apply_bundle_change, self.daemon.enforcer, base, base, None, emergency)
        except ApplyFailed as err:
            journal.error(f"emergency block {block.emergency_id} not applied: {err}", event="emergency_failed")
            return
        self.emergency = emergency
        await link.send(EmergencyAck(block.emergency_id))
        self._after_full_apply()
        journal.warning("emergency block enforced", event="emergency_block", emergency_id=block.emergency_id,
                        prefixes=block.prefixes, reason=block.reason)

    # -- reports ---------------------------------------------------------------------
    async def _report_loop(self, link) -> None:
        loop = asyncio.get_running_loop()
        next_summary = time.monotonic() + self.settings.report_interval
        while True:
            try:
                pending = await loop.run_in_executor(None, self.daemon.spool.pending, 500)
                for report_id, document in pending:
                    incident_id = f"{document['id']}/{document.get('report', 'started')}"
                    if incident_id not in self._sent_incidents:
                        self._sent_incidents[incident_id] = report_id
                        await link.send(IncidentReport(incident_id, document))
                for entry in await loop.run_in_executor(None, self._evidence_unsent):
                    self._sent_evidence.add(entry["seq"])
                    await link.send(EvidenceManifest(f"{self.config.node}:{entry['seq']}:{entry.get('hash', '')[:16]}",
                                                     entry, str(entry.get("incident") or "")))
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + self.settings.report_interval
                    summary = self._counter_summary()
                    if summary is not None:
                        await link.send(summary)
            except asyncio.CancelledError:
                raise
            except Exception as err:   # a report that cannot be sent must not stop the others
                journal.error(f"report to the controller failed: {type(err).__name__}: {err}",
                              event="report_failed")
            await asyncio.sleep(INCIDENT_RESEND_SECONDS)

    def _counter_summary(self) -> CounterSummary | None:
        """Per-tenant counts since the previous summary (from the metrics' per-tenant totals)."""
        rows = {tenant: flat_totals(row) for tenant, row in getattr(self.daemon.metrics.tenants, "_rows", {}).items()}
        tenants = interval_counts(rows, self._last_totals)
        first = not self._last_totals
        self._last_totals = rows
        if first:
            return None   # totals since the start are no interval's counts
        seconds = max(1, round(self.settings.report_interval))
        return CounterSummary(int(time.time()) - seconds, seconds, tenants)
