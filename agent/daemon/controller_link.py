"""The agent in controller mode: the last good signed revision is re-applied
from disk at boot (the node enforces while its controller is unreachable),
then the agent dials the controller over mutual TLS with backoff and
jitter, takes snapshots and deltas, applies each through the daemon's one
writer, stores it, and only then acknowledges it; a revision that does not
verify or does not apply is rejected with the reason and the last good one
stays in force. It also sends the spool's incidents until each is
acknowledged, and per-tenant counter summaries every few seconds."""

from __future__ import annotations

import asyncio
import time

from agent.daemon import journal
from agent.daemon.config import AgentConfig
from agent.policy import Policy, PolicyError, policy_from_document
from agent.wire import (
    Ack, BundleVerifier, ConnectionClosed, CounterSummary, DeltaError, DeltaReceived, DigestReport, DigestRequest,
    EmergencyAck, EmergencyReceived, EvidenceAck, EvidenceManifest, Hello, IncidentAck, IncidentReport, PolicyBundle, Reject,
    RejectReason, RevisionFileError, RevisionRejected, SnapshotReceived, apply_delta, load_public_key, read_revision,
    write_revision,
)
from agent.wire.frames import PROTOCOL_VERSION

INCIDENT_RESEND_SECONDS = 1.0   # how often unacknowledged spool reports are looked for


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
    """The policy a bundle enforces, with the emergency blocks no revision carries yet."""
    document = bundle.full_document()
    if emergency:
        own = set(document["global"]["blocked_sources"])
        document["global"]["blocked_sources"] += sorted(c for t, c in emergency if t == 0 and c not in own)
        for tenant in document["tenants"]:
            own = set(tenant["blocked_sources"])
            tenant["blocked_sources"] += sorted(c for t, c in emergency if t == tenant["id"] and c not in own)
    return policy_from_document(document, f"controller revision {bundle.revision}")


def _list_id(key: str):
    from agent.datapath.named_lists import ListId
    scope, _, name = key.partition("/")
    return ListId(name, None if scope == "global" else int(scope.removeprefix("tenant-")))


def apply_bundle_change(enforcer, old: PolicyBundle | None, new: PolicyBundle, delta=None,
                        emergency: frozenset[tuple[int, str]] = frozenset()) -> dict:
    """Make the datapath enforce `new` (runs in the enforcer's writer thread).
    Today: the new full policy through the enforcer and every changed named
    list replaced whole. `delta` (the wire Delta that made `new`, if any) is
    what the cheap path (agent.datapath.list_delta.apply_list_delta) will
    apply instead. ApplyFailed (a RejectReason and why) leaves `old` in force."""
    try:
        policy = bundle_policy(new, emergency)
    except PolicyError as err:
        raise ApplyFailed(RejectReason.INVALID_POLICY, str(err)[:900]) from None
    previous = enforcer.policy
    enforcer.policy = policy
    results = enforcer.apply_all()
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    if not failed:
        old_lists = old.named_lists() if old is not None else {}
        try:
            for key, prefixes in new.named_lists().items():
                if old_lists.get(key) != prefixes:
                    results.update(enforcer.replace_list(_list_id(key), prefixes.to_prefix_set()))
            for key in set(old_lists) - set(new.named_lists()):
                results.update(enforcer.replace_list(_list_id(key), None))
        except (OSError, ValueError) as err:
            failed = {"lists": str(err)}
    if failed:
        enforcer.policy = previous
        enforcer.apply_all()
        raise ApplyFailed(RejectReason.APPLY_FAILED, "; ".join(f"{k}: {v}" for k, v in failed.items())[:900])
    return results


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
        """Named lists of the restored revision (the policy itself went in with the first attach)."""
        if self.bundle is not None:
            for key, prefixes in self.bundle.named_lists().items():
                self.daemon.enforcer.replace_list(_list_id(key), prefixes.to_prefix_set())

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
            await asyncio.gather(reporter, return_exceptions=True)

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
            await link.send(DigestReport(self.verifier.applied_revision, self.verifier.applied_digest, event.nonce))
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
        carried = {(0 if k.startswith("global/") else int(k.split("/")[0].removeprefix("tenant-")), c)
                   for k, v in new.lists.items() if k.endswith("/policy") for c in v.cidrs()}
        emergency = frozenset(e for e in self.emergency if e not in carried)
        try:
            results = await self.daemon.in_writer(apply_bundle_change, self.daemon.enforcer, old, new, delta,
                                                  emergency)
        except ApplyFailed as err:
            journal.error(f"revision {new.revision} rejected, revision {self.verifier.applied_revision} stays in "
                          f"force: {err}", event="revision_rejected", reason=err.reason.value)
            await link.send(Reject(new.revision, err.reason.value, str(err)))
            return
        # on disk before the ack: what was acknowledged survives a crash right after
        await asyncio.get_running_loop().run_in_executor(None, write_revision, self.config.revision_path, new, proof)
        self.bundle, self.emergency = new, emergency
        await link.send(Ack(new.revision, new.digest))
        self.daemon._after_change()
        journal.info("revision applied", event="revision_applied", revision=new.revision,
                     by="delta" if delta is not None else "snapshot", interfaces=results)

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
        rows = getattr(self.daemon.metrics.tenants, "_rows", {})
        tenants = []
        for tenant, totals in rows.items():
            if not tenant.isdigit():
                continue
            before = self._last_totals.get(tenant, {})
            tenants.append({"tenant_id": int(tenant), **{k: max(0, int(v) - int(before.get(k, 0)))
                                                          for k, v in totals.items()}})
        first = not self._last_totals
        self._last_totals = {k: dict(v) for k, v in rows.items()}
        if first:
            return None   # totals since the start are no interval's counts
        seconds = max(1, round(self.settings.report_interval))
        return CounterSummary(int(time.time()) - seconds, seconds, tenants)
