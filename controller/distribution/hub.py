"""The distribution server: every connected agent is brought to the latest
revision, a delta when it holds the one before (or any revision still
cached), else the revision's snapshot, encoded once and shared. One revision
in flight per agent: the next is sent after its Ack or Reject. A rejected
revision is recorded and never pushed to that node again. Emergency blocks
overtake everything queued. Digest requests find drift and resync it.
Reports (incidents, evidence, counters) are stored and acknowledged.

It runs in the controller's event loop; the store is used from threads.
New revisions are found by watching the store's head revision, so whatever
made one (the API, the expiry loop, the workflow) is pushed the same way;
a write through this controller's engine wakes the watch at its commit
(store.on_new_revision), the periodic look catches every other writer."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.engine import Connection

from agent.wire import (
    Ack, BundleSigner, ConnectionClosed, CounterSummary, DigestReport, DigestRequest, EmergencyAck, EvidenceAck,
    EvidenceManifest, IncidentAck, IncidentReport, PolicyBundle, Reject, SnapshotCache, Welcome, fits_in_frame,
)
from agent.wire.connection import LocalProtocolError
from agent.wire.frames import PROTOCOL_VERSION, encode_frame
from agent.wire.messages import message_to_wire
from agent.wire.transport import frame_priority
from controller import schema as cschema
from controller.distribution import nodes, reports, schema
from controller.distribution.bundles import bundle_from_document
from controller.revisions import load_document
from controller.store import on_new_revision, reading, utcnow, writing

log = logging.getLogger("edgewarden.distribution")
WATCH_INTERVAL = 0.02        # seconds between looks at the store's head revision (writers in other processes)
FLUSH_INTERVAL = 0.25        # node state (acks, last seen) is written to the store in batches
BUNDLES_KEPT = 4             # revisions kept decoded, to make deltas from


@dataclass
class Session:
    link: object
    node: str
    acked: int = 0                  # the revision the agent applied (0: none we know)
    acked_digest: bytes = b""
    in_flight: int | None = None    # sent, no Ack/Reject yet
    rejected: int | None = None     # never pushed to this node again
    connected_at: float = field(default_factory=time.time)


class Distributor:
    def __init__(self, engine: Engine, signer: BundleSigner, *, name: str, workflow=None,
                 digest_interval: float = 30.0):
        self.engine, self.signer, self.name, self.workflow = engine, signer, name, workflow
        self.digest_interval = digest_interval
        self.cache = SnapshotCache(signer)
        self.bundles: OrderedDict[int, PolicyBundle] = OrderedDict()
        self.deltas: OrderedDict[tuple[int, int], object] = OrderedDict()
        self.latest: PolicyBundle | None = None
        self.sessions: dict[str, Session] = {}
        self.dirty: dict[str, dict] = {}       # node -> columns to write at the next flush
        self.emergencies: dict[str, object] = {}   # emergency id -> EmergencyBlock not yet carried by a revision
        self._nonce = itertools.count(1)
        self._frames: dict[int, tuple] = {}      # id(delta) -> (delta, its encoded frame)
        self._tasks: list[asyncio.Task] = []
        self._head_moved = asyncio.Event()
        self._stop_listening = lambda: None
        self._push: tuple[int, float, int, set[str]] | None = None   # revision, seen at, agents, yet to ack
        self._node_updates: dict[tuple, tuple] = {}             # columns -> (SQL, parameter order, bind processors)
        self.server = None

    # -- start and stop ---------------------------------------------------------
    async def start(self, host: str, port: int, ssl_context) -> None:
        from agent.wire.asyncio_server import serve
        loop = asyncio.get_running_loop()
        self._stop_listening = on_new_revision(self.engine, lambda _revision: loop.call_soon_threadsafe(
            self._head_moved.set))
        await self._refresh()
        await asyncio.to_thread(self._mark_all_disconnected)
        self.server = await serve(self._handle, host, port, ssl_context=ssl_context, controller=self.name,
                                  authorize=self._authorize)
        self._tasks = [asyncio.create_task(self._watch_loop(), name="distribution-watch"),
                       asyncio.create_task(self._flush_loop(), name="distribution-flush"),
                       asyncio.create_task(self._digest_loop(), name="distribution-digest")]
        log.info("distribution serving agents on %s:%d (revision %s)", host, port,
                 self.latest.revision if self.latest else "none")

    async def close(self) -> None:
        self._stop_listening()
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions.values()):
            await session.link.close()
        await asyncio.to_thread(self._flush)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    # -- revisions ----------------------------------------------------------------
    def _load_bundle(self, revision: int) -> PolicyBundle:
        with reading(self.engine) as conn:
            document = load_document(conn, revision)
        return bundle_from_document(document)   # PolicyBundle.from_document's bundle, parsed natively

    async def bundle(self, revision: int) -> PolicyBundle | None:
        if revision in self.bundles:
            self.bundles.move_to_end(revision)
            return self.bundles[revision]
        if revision <= 0:
            return None
        try:
            bundle = await asyncio.to_thread(self._load_bundle, revision)
        except Exception:
            return None
        self.bundles[revision] = bundle
        while len(self.bundles) > BUNDLES_KEPT:
            self.bundles.popitem(last=False)
        return bundle

    def _head_revision(self) -> int:
        with reading(self.engine) as conn:
            return conn.execute(select(cschema.head.c.revision).where(cschema.head.c.id == 1)).scalar_one()

    async def _refresh(self) -> bool:
        head = await asyncio.to_thread(self._head_revision)
        if head == 0 or (self.latest is not None and self.latest.revision == head):
            return False
        bundle = await self.bundle(head)
        if bundle is None:
            return False
        self.latest = bundle
        self.cache.get(bundle)   # encoded once, here, before any connection asks
        # an emergency block a revision now carries needs no separate resend to new agents
        # (a bisect per prefix: the set of every CIDR text it replaces took ~1.6 s on a 1M list)
        for eid, block in list(self.emergencies.items()):
            if all(any(lst.has_cidr(p) for lst in bundle.lists.values()) for p in block.prefixes):
                del self.emergencies[eid]
        return True

    async def _watch_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._head_moved.wait(), WATCH_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._head_moved.clear()
            try:
                seen = time.monotonic()
                if await self._refresh():
                    revision = self.latest.revision
                    self._push = (revision, seen, len(self.sessions), set(self.sessions))
                    for session in list(self.sessions.values()):
                        await self._sync(session)
                    log.info("revision %d: sent to %d connected agent(s) in %.1f ms", revision,
                             len(self.sessions), (time.monotonic() - seen) * 1000)
                    self._pushed(None)
            except Exception:   # the loop outlives one bad pass
                log.exception("distribution watch pass failed")

    def _pushed(self, node: str | None) -> None:
        """`node` acked the revision being pushed, or went away (None: only look):
        when every agent connected at the push has done either, say how long it took."""
        if self._push is None:
            return
        revision, seen, agents, waiting = self._push
        waiting.discard(node)
        if waiting:
            return
        self._push = None
        log.info("revision %d: acknowledged by all %d agent(s) connected at its push %.1f ms after it was seen",
                 revision, agents, (time.monotonic() - seen) * 1000)

    def _delta(self, base: PolicyBundle, target: PolicyBundle):
        key = (base.revision, target.revision)
        delta = self.deltas.get(key)
        if delta is None:
            delta = self.signer.make_delta(base, target)   # made and signed once for every agent at `base`
            if not fits_in_frame(delta):
                delta = False
            self.deltas[key] = delta
            while len(self.deltas) > 16:
                self.deltas.popitem(last=False)
        return delta or None

    def _send_delta(self, session: Session, delta) -> None:
        """The delta's frame, encoded once for every agent at its base (as a snapshot's frames are)."""
        if delta.to_revision in session.link.connection.rejected:
            raise LocalProtocolError(f"revision {delta.to_revision} was rejected by {session.node}")
        frame = self._frames.get(id(delta))
        if frame is None or frame[0] is not delta:
            frame = self._frames[id(delta)] = (delta, encode_frame(message_to_wire(delta)))
            while len(self._frames) > 16:
                self._frames.pop(next(iter(self._frames)))
        put_frames = getattr(session.link, "put_frames", None)
        if put_frames is None:      # a transport without raw frames (transport.AgentLink): the message itself
            session.link.send(delta)
        else:
            put_frames(frame[1], frame_priority(delta))

    async def _sync(self, session: Session) -> None:
        """Send the agent the latest revision if it lacks it and nothing is in flight."""
        target = self.latest
        if target is None or session.in_flight is not None or session.acked == target.revision:
            return
        if session.rejected == target.revision or session.node not in self.sessions:
            return
        base = await self.bundle(session.acked) if session.acked else None
        if session.in_flight is not None or self.latest is not target:
            return   # something else moved while the base was read
        delta = self._delta(base, target) if base is not None and base.digest == session.acked_digest \
            and base.revision < target.revision else None
        try:
            if delta is not None:
                self._send_delta(session, delta)
            else:
                session.link.send_snapshot(self.cache.get(target))
        except LocalProtocolError as err:   # the connection closed under us; its handler cleans up
            log.info("agent %s: revision %d not sent: %s", session.node, target.revision, err)
            return
        session.in_flight = target.revision

    # -- one agent's connection ---------------------------------------------------
    def _authorize(self, node: str) -> str | None:
        with reading(self.engine) as conn:
            return nodes.refusal(conn, node)

    def _node_row(self, node: str) -> dict:
        with reading(self.engine) as conn:
            row = conn.execute(select(schema.nodes).where(schema.nodes.c.name == node)).mappings().one()
        return dict(row)

    async def _handle(self, link) -> None:
        hello = link.hello
        row = await asyncio.to_thread(self._node_row, link.node)
        session = Session(link, link.node, rejected=row["rejected_revision"])
        previous = self.sessions.get(link.node)
        if previous is not None:   # a node reconnecting before its old connection timed out
            await previous.link.close()
        self.sessions[link.node] = session
        # what the agent says it enforces counts only with a digest we signed for that revision
        claimed = await self.bundle(hello.applied_revision) if hello.applied_revision else None
        if claimed is not None and claimed.digest == hello.policy_digest:
            session.acked, session.acked_digest = hello.applied_revision, hello.policy_digest
        self.dirty.setdefault(link.node, {}).update(
            connected=True, last_seen=utcnow(), agent_version=hello.agent_version[:64],
            attach_modes=json.dumps(hello.attach_modes, sort_keys=True),
            **({"applied_revision": session.acked, "applied_digest": session.acked_digest.hex()}
               if session.acked else {}))
        link.send(Welcome(PROTOCOL_VERSION, self.name, self.latest.revision if self.latest else 0))
        for block in self.emergencies.values():
            link.send(block)
        await self._sync(session)
        try:
            while True:
                event = await link.next_event()
                if isinstance(event, ConnectionClosed):
                    log.info("agent %s: connection closed (%s: %s)", link.node, event.reason, event.message)
                    return
                now = utcnow()
                self.dirty.setdefault(link.node, {})["last_seen"] = now
                await self._on_event(session, event, now)
        finally:
            if self.sessions.get(link.node) is session:
                del self.sessions[link.node]
                self.dirty.setdefault(link.node, {})["connected"] = False
                self._pushed(link.node)

    async def _on_event(self, session: Session, event, now) -> None:
        node = session.node
        if isinstance(event, Ack):
            session.acked, session.acked_digest = event.revision, event.digest
            if session.in_flight == event.revision:
                session.in_flight = None
            self.dirty.setdefault(node, {}).update(applied_revision=event.revision, applied_digest=event.digest.hex(),
                                                  acked_at=now)
            if self._push is not None and self._push[0] == event.revision:
                self._pushed(node)
            await self._sync(session)
        elif isinstance(event, Reject):
            log.warning("agent %s rejected revision %d (%s): %s", node, event.revision, event.reason, event.message)
            if event.revision:
                session.rejected = event.revision
                if session.in_flight == event.revision:
                    session.in_flight = None
            self.dirty.setdefault(node, {}).update(
                rejected_revision=event.revision, rejected_reason=event.reason[:40],
                rejected_message=event.message[:2000], rejected_at=now)
            if event.reason == "wrong_base" and event.revision:
                # the agent holds another base than we thought: a snapshot of that revision it can take
                session.acked, session.acked_digest, session.rejected = 0, b"", None
                await self._sync(session)
        elif isinstance(event, DigestReport):
            if self.latest is not None and session.in_flight is None and (
                    event.revision != session.acked or event.digest != session.acked_digest
                    or (event.revision == self.latest.revision and event.digest != self.latest.digest)):
                log.warning("agent %s drifted (reports revision %d, digest %s): resync by snapshot", node,
                            event.revision, event.digest.hex()[:16])
                session.acked, session.acked_digest = 0, b""
                if session.rejected != self.latest.revision:
                    session.link.send_snapshot(self.cache.get(self.latest))
                    session.in_flight = self.latest.revision
        elif isinstance(event, IncidentReport):
            await asyncio.to_thread(reports.store_incident, self.engine, self.workflow, node, event.incident_id,
                                    event.incident)
            session.link.send(IncidentAck(event.incident_id))
        elif isinstance(event, EvidenceManifest):
            await asyncio.to_thread(reports.store_evidence, self.engine, node, event.evidence_id, event.incident_id,
                                    event.manifest)
            session.link.send(EvidenceAck(event.evidence_id))
        elif isinstance(event, CounterSummary):
            await asyncio.to_thread(reports.store_counters, self.engine, node, event.interval_start, event.seconds,
                                    event.tenants)
        elif isinstance(event, EmergencyAck):
            log.info("agent %s enforces emergency block %s", node, event.emergency_id)

    # -- emergency ------------------------------------------------------------------
    def emergency(self, emergency_id: str, prefixes: list[str], reason: str, tenant_id: int = 0) -> int:
        """Send a signed emergency block ahead of everything queued on every
        connection (call in the loop); returns how many agents it went to."""
        block = self.signer.emergency(emergency_id, prefixes, reason, priority=0, tenant_id=tenant_id)
        self.emergencies[emergency_id] = block
        sent = 0
        for session in list(self.sessions.values()):
            try:
                session.link.send(block)
                sent += 1
            except LocalProtocolError:
                pass
        return sent

    # -- drift ------------------------------------------------------------------------
    async def _digest_loop(self) -> None:
        while True:
            await asyncio.sleep(self.digest_interval)
            for session in list(self.sessions.values()):
                if session.in_flight is None:
                    try:
                        session.link.send(DigestRequest(next(self._nonce)))
                    except Exception:
                        pass

    # -- node state into the store ------------------------------------------------------
    def _mark_all_disconnected(self) -> None:
        with writing(self.engine) as (conn, _head):
            conn.execute(update(schema.nodes).values(connected=False))

    def _node_update(self, conn: Connection, columns: tuple) -> tuple:
        """The UPDATE of `columns` by node name, compiled once for the store's
        driver: (SQL, parameter order, each parameter's bind processor)."""
        made = self._node_updates.get(columns)
        if made is None:
            compiled = update(schema.nodes).where(schema.nodes.c.name == bindparam("node_name")) \
                .values({c: bindparam(c) for c in columns}).compile(dialect=conn.dialect)
            order = tuple(compiled.positiontup) if conn.dialect.positional else tuple(compiled.binds)
            processors = {c: schema.nodes.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
                          for c in columns}
            made = self._node_updates[columns] = (str(compiled), order, processors)
        return made

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, {}
        if not dirty:
            return
        groups: dict[tuple, list[tuple]] = {}
        for node, values in dirty.items():   # one executemany per set of columns (1,000 acks: a few statements)
            groups.setdefault(tuple(sorted(values)), []).append((node, values))
        with writing(self.engine) as (conn, _head):
            for columns, rows in groups.items():
                # straight to the driver's executemany: SQLAlchemy's per-row parameter
                # handling was a third of the ~12 ms (of the GIL, taken from the event
                # loop) that writing 1,000 acks cost
                sql, order, processors = self._node_update(conn, columns)
                params = []
                for node, values in rows:
                    row = {"node_name": node}
                    for c in columns:
                        process = processors[c]
                        row[c] = values[c] if process is None else process(values[c])
                    params.append(tuple(row[name] for name in order) if conn.dialect.positional else row)
                conn.exec_driver_sql(sql, params)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await asyncio.to_thread(self._flush)
            except Exception:
                log.exception("writing the fleet's node state failed")

    # -- what the fleet view reads ---------------------------------------------------------
    def live(self) -> dict[str, dict]:
        return {name: {"connected": True, "in_flight": s.in_flight, "acked": s.acked}
                for name, s in self.sessions.items()}
