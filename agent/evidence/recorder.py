"""The agent's evidence recorder: consumes each interface's sample ring in
a thread, writes the samples of every tenant under incident (or on the
watch list) into that incident's file set, rotates files by size and age,
seals each on close into the manifest, applies retention, and stops
writing (never enforcement) when the disk is full."""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from agent.daemon import journal
from agent.datapath import abi
from agent.evidence.manifest import EVIDENCE_SUFFIX, Manifest, file_sha256
from agent.evidence.pcapng_file import EvidenceFile
from agent.evidence.ring import SampleRing

PART_SUFFIX = ".part"
SAMPLE_CONFIG_MAP = "ew_sample_config"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class EvidenceSet:
    """The files of one incident (or of a watched tenant)."""
    key: str                 # incident id, or watch:<tenant>
    tenant_id: int
    reason: str              # why the evidence is kept
    part: int = 0
    current: EvidenceFile | None = None


class EvidenceRecorder:
    def __init__(self, config, metrics, spool=None, clock=time.time):
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.directory = Path(config.evidence.directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self.manifest = Manifest(self.directory)
        self._seal_leftovers()
        self.sets: dict[str, EvidenceSet] = {}
        self._by_tenant: dict[int, str] = {}
        self._rings: dict[str, tuple[SampleRing, threading.Thread, threading.Event]] = {}
        self._ifnames: dict[int, str] = {}
        self._sample_maps: dict[str, dict] = {}
        self.stopped_for_disk = False
        self.bytes_written = 0
        self.watched = frozenset(config.watch_list)
        self._set_watch(config.watch_list)

    # -- which tenants are recorded -------------------------------------------
    def _set_watch(self, tenants) -> None:
        with self._lock:
            for tenant_id in tenants:
                key = f"watch:{tenant_id}"
                if tenant_id not in self._by_tenant:
                    self.sets[key] = EvidenceSet(key, tenant_id, "watch list")
                    self._by_tenant[tenant_id] = key

    def set_watch(self, tenants) -> None:
        """The watch list changed (reload, policy change): sets for newly
        watched tenants, and the sets of tenants no longer watched sealed."""
        with self._lock:
            for key in [k for k, s in self.sets.items() if k.startswith("watch:") and s.tenant_id not in tenants]:
                self._close_set(key)
            self._set_watch(tenants)
            self.watched = frozenset(tenants)

    def set_incidents(self, open_incidents: dict) -> None:
        with self._lock:
            for incident in open_incidents.values():
                key = self._by_tenant.get(incident.tenant_id)
                if key is None or key.startswith("watch:"):
                    if key is not None:
                        self._close_set(key)
                    self.sets[incident.id] = EvidenceSet(incident.id, incident.tenant_id, f"incident {incident.check}")
                    self._by_tenant[incident.tenant_id] = incident.id

    def incident_event(self, event) -> None:
        if event.kind == "ended":
            with self._lock:
                if event.incident.id in self.sets:
                    self._close_set(event.incident.id)
                if event.incident.tenant_id in self.watched:
                    self._set_watch([event.incident.tenant_id])

    def _close_set(self, key: str) -> None:
        evidence_set = self.sets.pop(key)
        if self._by_tenant.get(evidence_set.tenant_id) == key:
            del self._by_tenant[evidence_set.tenant_id]
        self._seal(evidence_set)

    # -- the rings ---------------------------------------------------------------
    def watch(self, ifname: str, maps, ring=None) -> None:
        """Record `ifname`'s samples: from its pinned ring, or from `ring` (an
        engine's own, with SampleRing's poll/close: agent.dpdk.samples)."""
        from agent.datapath.scope import pin_dir_for
        import socket
        self.unwatch(ifname)
        try:
            self._ifnames[socket.if_nametoindex(ifname)] = ifname
        except OSError:
            pass
        rate = self.config.evidence.samples_per_second
        maps[SAMPLE_CONFIG_MAP].update((0).to_bytes(4, "little"), _sample_config(maps, rate))
        try:
            ring = ring if ring is not None else SampleRing(pin_dir_for(ifname) / abi.RING_MAPS[0])
        except OSError as err:
            journal.error("no evidence sampling on this interface", event="evidence_error", interface=ifname,
                          error=str(err))
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._consume, args=(ifname, ring, stop), name=f"ew-ring-{ifname}",
                                  daemon=True)
        self._rings[ifname] = (ring, thread, stop)
        self._sample_maps[ifname] = maps
        thread.start()

    def unwatch(self, ifname: str) -> None:
        entry = self._rings.pop(ifname, None)
        if entry is not None:
            ring, thread, stop = entry
            stop.set()
            thread.join(timeout=2)
            ring.close()

    def _consume(self, ifname: str, ring: SampleRing, stop: threading.Event) -> None:
        lost_seen = 0
        while not stop.is_set():
            try:
                samples = ring.poll(200)
            except OSError as err:
                journal.error("sample ring failed", event="evidence_error", interface=ifname, error=str(err))
                return
            if samples:
                offset = time.time_ns() - time.monotonic_ns()
                self.metrics.samples.inc(len(samples))
                self.record(ifname, samples, offset)
            lost = _lost(self._sample_maps.get(ifname))
            if lost > lost_seen:
                self.metrics.ring_lost.inc(lost - lost_seen)
                lost_seen = lost
            self.tick()

    # -- writing -------------------------------------------------------------------
    def record(self, ifname: str, samples, clock_offset_ns: int) -> None:
        with self._lock:
            for sample in samples:
                key = self._by_tenant.get(sample.tenant_id)
                if key is None:
                    continue      # sampled flag still set for a moment after the incident ended
                evidence_set = self.sets[key]
                if not self._room():
                    return
                try:
                    current = self._current(evidence_set)
                    reason = abi.VerdictReason(sample.reason).name if sample.reason in abi.VerdictReason._value2member_map_ \
                        else f"reason {sample.reason}"
                    before = current.size
                    current.add(ifname=self._ifnames.get(sample.ifindex, ifname),
                                timestamp_ns=sample.timestamp_ns + clock_offset_ns, data=sample.data,
                                packet_length=sample.packet_length,
                                comment=f"tenant={sample.tenant_id}; verdict={reason}; incident={key}")
                    written = current.size - before
                    self.bytes_written += written
                    self.metrics.evidence_bytes.inc(written)
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        self._disk_full(str(err))
                        return
                    raise
                if current.size >= self.config.evidence.max_file_bytes:
                    self._seal(evidence_set)

    def _current(self, evidence_set: EvidenceSet) -> EvidenceFile:
        if evidence_set.current is None:
            evidence_set.part += 1
            safe = evidence_set.key.replace(":", "_").replace("/", "_")
            name = f"{safe}-{int(self.clock())}-{evidence_set.part:03d}{EVIDENCE_SUFFIX}{PART_SUFFIX}"
            evidence_set.current = EvidenceFile(
                self.directory / name, node=self.config.node, incident=evidence_set.key,
                tenant_id=evidence_set.tenant_id, reason=evidence_set.reason, snaplen=abi.SAMPLE_BYTES,
                opened_at=self.clock())
        return evidence_set.current

    def _seal(self, evidence_set: EvidenceSet) -> None:
        current, evidence_set.current = evidence_set.current, None
        if current is None:
            return
        current.close()
        final = current.path.with_name(current.path.name.removesuffix(PART_SUFFIX))
        current.path.replace(final)
        entry = self.manifest.append(
            action="sealed", file=final.name, sha256=file_sha256(final), bytes=final.stat().st_size,
            packets=current.packets, node=self.config.node, sealed_at=_iso(self.clock()),
            opened_at=_iso(current.opened_at), reason=evidence_set.reason, incident=evidence_set.key,
            tenant=evidence_set.tenant_id)
        journal.info("evidence sealed", event="evidence_sealed", file=final.name, sha256=entry["sha256"],
                     packets=current.packets, incident=evidence_set.key, tenant=evidence_set.tenant_id)
        self._retention()

    def _seal_leftovers(self) -> None:
        """Files a crashed agent left open are sealed as they are (pcapng is
        block-structured: a cut last block is visible to any reader)."""
        for path in sorted(self.directory.glob(f"*{EVIDENCE_SUFFIX}{PART_SUFFIX}")):
            final = path.with_name(path.name.removesuffix(PART_SUFFIX))
            path.replace(final)
            self.manifest.append(action="sealed", file=final.name, sha256=file_sha256(final),
                                 bytes=final.stat().st_size, packets=None, node=self.config.node,
                                 sealed_at=_iso(self.clock()), opened_at=None,
                                 reason="left open by a previous agent run (sealed on restart)", incident=None,
                                 tenant=None)

    def tick(self) -> None:
        """Rotation by age."""
        now = self.clock()
        with self._lock:
            for evidence_set in self.sets.values():
                current = evidence_set.current
                if current is not None and now - current.opened_at >= self.config.evidence.max_file_seconds:
                    self._seal(evidence_set)

    # -- disk and retention -----------------------------------------------------
    def _room(self) -> bool:
        free = _free_bytes(self.directory)
        if free < self.config.evidence.min_free_bytes:
            self._disk_full(f"{free} bytes free, below evidence.min_free_bytes "
                            f"{self.config.evidence.min_free_bytes}")
            return False
        if self.stopped_for_disk:
            self.stopped_for_disk = False
            self.metrics.evidence_stopped.set(0)
            journal.info("evidence writing resumed", event="evidence_resumed")
        return True

    def _disk_full(self, why: str) -> None:
        if not self.stopped_for_disk:
            self.stopped_for_disk = True
            self.metrics.evidence_stopped.set(1)
            journal.error(f"evidence writing stopped, disk full ({why}); enforcement continues; free space in "
                          f"{self.directory} or lower the retention", event="evidence_disk_full")

    def _retention(self) -> None:
        from agent.evidence.manifest import read_entries
        entries, _ = read_entries(self.directory)
        live = {}
        for e in entries:
            if e.get("action") == "removed":
                live.pop(e.get("file"), None)
            else:
                live[e.get("file")] = e
        now = self.clock()
        max_age = self.config.evidence.retention_days * 86400
        total = sum(e.get("bytes", 0) for e in live.values())
        for name, e in list(live.items()):          # oldest first: manifest order
            sealed = datetime.fromisoformat(e["sealed_at"]).timestamp()
            too_old = now - sealed > max_age
            if not too_old and total <= self.config.evidence.retention_bytes:
                continue
            (self.directory / name).unlink(missing_ok=True)
            total -= e.get("bytes", 0)
            self.manifest.append(action="removed", file=name, sha256=e.get("sha256"), node=self.config.node,
                                 sealed_at=_iso(now), reason="retention: older than retention_days" if too_old
                                 else "retention: over retention_bytes")
            journal.info("evidence removed by retention", event="evidence_expired", file=name)

    def close(self) -> None:
        for ifname in list(self._rings):
            self.unwatch(ifname)
        with self._lock:
            for key in list(self.sets):
                self._close_set(key)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _sample_config(maps, rate: int) -> bytes:
    from agent._libbpf import ffi
    raw = maps[SAMPLE_CONFIG_MAP].lookup((0).to_bytes(4, "little"))
    value = ffi.new("struct ew_sample_config *")
    if raw:
        ffi.memmove(value, raw, len(raw))
    value.samples_per_second = rate
    value.burst = rate
    return bytes(ffi.buffer(value))


def _lost(maps) -> int:
    if maps is None:
        return 0
    from agent._libbpf import ffi
    raw = maps[SAMPLE_CONFIG_MAP].lookup((0).to_bytes(4, "little"))
    return ffi.from_buffer("struct ew_sample_config *", raw).lost if raw else 0
