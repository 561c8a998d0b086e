"""The DPDK engine: the EAL started in this process, the worker's ports and
poll loops (native/dpdk/, through agent._dpdk), and policies applied as
whole snapshots built from the same compiled map contents the XDP path
gets (agent.datapath.compile). One engine per process: the EAL starts once."""

from __future__ import annotations

from dataclasses import dataclass

from agent._dpdk import ffi, lib
from agent.datapath import abi
from agent.datapath.compile import POLICY_MAPS, CompiledPolicy, compile_policy
from agent.dpdk.config import DpdkConfig
from agent.policy.model import Policy, SynAckPolicy


class DpdkError(OSError):
    """The engine could not start or change; the message says what and where."""


def _last_error() -> str:
    return ffi.string(lib.ew_last_error()).decode(errors="replace")


_eal_started_by: str | None = None


def start_eal(config: DpdkConfig) -> None:
    """rte_eal_init with the config's arguments; a process gets one EAL."""
    global _eal_started_by
    if _eal_started_by is not None:
        raise DpdkError(f"the DPDK EAL already runs in this process (started for {_eal_started_by}); "
                        "DPDK allows one EAL per process: run another engine in another process")
    argv = [ffi.new("char[]", arg.encode()) for arg in config.eal_argv()]
    if lib.ew_eal_init(len(argv), ffi.new("char *[]", argv)) < 0:
        raise DpdkError(f"{config.source}: {_last_error()} (arguments: {' '.join(config.eal_argv()[1:])})")
    _eal_started_by = config.source


def unsupported_features(policy: Policy) -> list[str]:
    """What the policy asks of the kernel that the DPDK engine cannot give:
    SYN cookies and SYN-ACK tracking need conntrack and the kernel's cookie
    secret (bpf/tcp_state.h), which a DPDK port bypasses."""
    problems = []
    for tenant in policy.tenants:
        if tenant.flood.syn_cookies:
            problems.append(f"tenant {tenant.id} ({tenant.name}): syn_cookies")
        if tenant.flood.syn_ack is SynAckPolicy.TRACK:
            problems.append(f"tenant {tenant.id} ({tenant.name}): syn_ack = \"track\"")
    return problems


@dataclass(frozen=True)
class WorkerStats:
    received: int
    passed: int
    dropped: int
    answered: int
    tx_failed: int
    swaps: int
    cpu_seconds: float      # of the poll loops, once they ended

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class DpdkEngine:
    def __init__(self, config: DpdkConfig):
        if not config.ports:
            raise DpdkError(f"{config.source}: no [[ports]]: the engine needs a port to receive on")
        self.config = config
        self.compiled: CompiledPolicy | None = None
        self.policy: Policy | None = None
        self.named_lists: dict = {}     # ListId -> PrefixSet, enforced with the policy's own lists
        self._started = False
        start_eal(config)
        self._worker = lib.ew_worker_new(config.tenant_capacity, config.mbufs, config.burst, config.source_buckets)
        if self._worker == ffi.NULL:
            error = _last_error()
            lib.ew_eal_cleanup()
            raise DpdkError(f"{config.source}: {error}")
        try:
            self._add_ports(config)
        except BaseException:
            self.close()
            raise

    def _add_ports(self, config: DpdkConfig) -> None:
        self.slot_capacity = config.tenant_capacity
        self.lcores = lib.ew_worker_lcores(self._worker)
        self.port_ids = {port.name: self._port_id(port) for port in config.ports}
        for port in config.ports:
            if lib.ew_worker_add_port(self._worker, self.port_ids[port.name],
                                      self.port_ids[port.pass_to or port.name], int(port.judge)) < 0:
                raise DpdkError(f"{config.source}: {_last_error()}")

    def _port_id(self, port_config) -> int:
        port = ffi.new("uint16_t *")
        if lib.ew_port_by_name(port_config.name.encode(), port) < 0:
            hint = (f"; its vdev {port_config.vdev!r} did not probe (a missing interface or file? the EAL's "
                    "message above says which)") if port_config.vdev else ""
            raise DpdkError(f"{self.config.source}: {_last_error()}{hint}")
        return port[0]

    # --- policy ------------------------------------------------------------

    def apply(self, policy: Policy) -> CompiledPolicy:
        """Compiles the policy (with the named lists) as for XDP and swaps
        it in whole: a burst is judged by the old snapshot or the new one,
        never a mix. A policy the engine cannot enforce changes nothing."""
        from agent.datapath.named_lists import scope_unions
        named_lists = scope_unions(self.named_lists)
        problems = unsupported_features(policy)
        if problems:
            raise DpdkError("the DPDK engine cannot enforce " + "; ".join(problems) +
                            ": they need the kernel's conntrack and SYN-cookie secret. Use syn_ack = \"drop\" "
                            "or the XDP engine for these tenants; nothing was applied")
        live = self.compiled.slots if self.compiled else {}
        compiled = compile_policy(policy, live, self.slot_capacity, named_lists)
        snapshot = lib.ew_snapshot_new(self.slot_capacity)
        if snapshot == ffi.NULL:
            raise DpdkError("out of memory for a policy snapshot; nothing was applied")
        try:
            for name in POLICY_MAPS:
                key_type, value_type = abi.MAP_LAYOUTS[name]
                entries = compiled.maps[name]
                self._fill(snapshot, name, b"".join(entries), b"".join(entries.values()), len(entries),
                           ffi.sizeof(key_type), ffi.sizeof(value_type))
            for name, table in compiled.tables.items():
                self._fill(snapshot, name, table.keys_packed(), table.values_packed(), len(table),
                           table.key_size, table.value_size)
        except BaseException:
            lib.ew_snapshot_free(snapshot)
            raise
        # A counter slot is zeroed when a tenant takes it, before any VIP points at it.
        old_slots = live
        for tenant_id, slot in compiled.slots.items():
            if old_slots.get(tenant_id) != slot:
                lib.ew_worker_zero_counters(self._worker, slot)
        if lib.ew_worker_publish(self._worker, snapshot) < 0:
            raise DpdkError(_last_error())
        self.compiled, self.policy = compiled, policy
        return compiled

    def replace_named_list(self, list_id, prefixes) -> CompiledPolicy:
        """Load `prefixes` as the named list `list_id` (agent.datapath.named_lists.ListId),
        or unload it with None; the policy is swapped in again with it."""
        if self.policy is None:
            raise DpdkError("no policy is applied yet: apply one before loading block lists")
        if list_id.tenant_id is not None and self.policy.tenant(list_id.tenant_id) is None:
            raise DpdkError(f"tenant {list_id.tenant_id} is not in the live policy; a list for it would not "
                            "be enforced")
        if prefixes is None and list_id not in self.named_lists:
            raise DpdkError(f"no list {list_id} is loaded")
        previous = dict(self.named_lists)
        if prefixes is None:
            del self.named_lists[list_id]
        else:
            self.named_lists[list_id] = prefixes
        try:
            return self.apply(self.policy)
        except BaseException:
            self.named_lists = previous
            raise

    @staticmethod
    def _fill(snapshot, name: str, keys: bytes, values: bytes, count: int, key_size: int, value_size: int) -> None:
        error = ffi.new("char[]", 512)
        if lib.ew_snapshot_fill(snapshot, name.encode(), keys, values, count, key_size, value_size, error, 512) < 0:
            raise DpdkError(f"policy table {name}: {ffi.string(error).decode()}; nothing was applied")

    # --- running -----------------------------------------------------------

    def start(self, max_packets: int = 0) -> None:
        if lib.ew_worker_start(self._worker, max_packets) < 0:
            raise DpdkError(f"{self.config.source}: {_last_error()}")
        self._started = True

    def running(self) -> bool:
        return bool(lib.ew_worker_running(self._worker))

    def stop(self) -> None:
        """Stops the poll loops, then the ports (net_pcap writes its file here)."""
        if self._started:
            lib.ew_worker_stop(self._worker)
            lib.ew_worker_wait(self._worker)
            self._started = False

    def close(self) -> None:
        """Frees the worker and ends the EAL (DPDK allows no second one in this process)."""
        self.stop()
        if self._worker != ffi.NULL:
            lib.ew_worker_free(self._worker)
            self._worker = ffi.NULL
            lib.ew_eal_cleanup()

    def stats(self) -> WorkerStats:
        out = ffi.new("struct ew_worker_stats *")
        lib.ew_worker_stats(self._worker, out)
        return WorkerStats(out.received, out.passed, out.dropped, out.answered, out.tx_failed,
                           lib.ew_worker_swaps(self._worker), out.cpu_ns / 1e9)

    # --- tests: packet-by-packet observation -------------------------------

    def enable_trace(self, capacity: int) -> None:
        """Record, for each lcore's first `capacity` packets, the tenant,
        reason and class its counters moved (tests hold each packet to the
        oracles with it, as they read the XDP program's counter deltas)."""
        if lib.ew_worker_enable_trace(self._worker, capacity) < 0:
            raise DpdkError(_last_error())
        self._trace_capacity = capacity

    def trace(self) -> list[dict]:
        from agent.datapath.abi import TrafficClass, VerdictReason
        tenant_of_slot = {slot: tenant for tenant, slot in (self.compiled.slots if self.compiled else {}).items()}
        tenant_of_slot[abi.TENANT_UNASSIGNED] = abi.TENANT_UNASSIGNED
        capacity = getattr(self, "_trace_capacity", 0)
        out = ffi.new("struct ew_trace_entry[]", max(capacity, 1))
        entries = []
        for lcore in range(self.lcores):
            count = lib.ew_worker_read_trace(self._worker, lcore, out, capacity)
            for i in range(max(count, 0)):
                e = out[i]
                entries.append({"lcore": lcore, "action": e.action,
                                "tenant_id": tenant_of_slot.get(e.slot) if e.counted else None,
                                "reason": VerdictReason(e.reason).name if e.counted else None,
                                "traffic_class": TrafficClass(e.traffic_class).name if e.counted else None})
        return entries

    # --- counters ----------------------------------------------------------

    def read_counter_slot(self, slot: int) -> bytes:
        out = ffi.new("char[]", self.lcores * ffi.sizeof("struct ew_counters"))
        if lib.ew_worker_read_counters(self._worker, slot, out) < 0:
            raise DpdkError(_last_error())
        return bytes(ffi.buffer(out))

    # --- evidence ------------------------------------------------------------

    def read_samples(self, out, max_samples: int) -> int:
        """Moves up to `max_samples` samples out of the lcores' rings into `out`
        (struct ew_sample[]); one reader at a time (agent.dpdk.samples)."""
        return lib.ew_worker_read_samples(self._worker, out, max_samples)

    def read_sample_config(self) -> bytes:
        return bytes(ffi.buffer(lib.ew_worker_sample_config(self._worker), ffi.sizeof("struct ew_sample_config")))

    def write_sample_config(self, raw: bytes) -> None:
        """samples_per_second and burst from `raw` (a struct ew_sample_config); `lost` stays the lcores'."""
        config = lib.ew_worker_sample_config(self._worker)
        value = ffi.from_buffer("struct ew_sample_config *", raw)
        config.samples_per_second, config.burst = value.samples_per_second, value.burst

    def packets_per_lcore(self) -> list[int]:
        """Packets each lcore counted, over every tenant slot in use."""
        import struct
        slots = sorted(set((self.compiled.slots if self.compiled else {}).values()) | {abi.TENANT_UNASSIGNED})
        fields = ffi.sizeof("struct ew_counters") // 8
        start = abi.COUNTER_LAYOUT["reason_packets"].start
        totals = [0] * self.lcores
        for slot in slots:
            values = struct.unpack(f"={fields * self.lcores}Q", self.read_counter_slot(slot))
            for lcore in range(self.lcores):
                totals[lcore] += sum(values[lcore * fields + start:lcore * fields + start + abi.REASON_SLOTS])
        return totals

    def maps(self) -> dict:
        """The maps agent.datapath.counters reads, with the BpfMap interface."""
        from agent.dpdk.maps import engine_maps
        return engine_maps(self)

    def counters(self):
        from agent.datapath.counters import read_counters
        return read_counters(self.maps())

    def __enter__(self) -> "DpdkEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def set_test_clock(ns: int) -> None:
    """Fix the datapath's clock (bpf_ktime_get_ns) for tests; 0 returns to the TSC."""
    lib.ew_set_test_clock(ns)
