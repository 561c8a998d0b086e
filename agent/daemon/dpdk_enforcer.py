"""The daemon's enforcer for `engine = "dpdk"`: the DPDK engine
(agent.dpdk.engine) started in this process from the config's [dpdk]
table, with the same interface the service uses from the XDP Enforcer
(attach_all, reload, change_policy, replace_list, stop, STATUS), and the
same one-writer rule: every engine call that changes it runs in the writer
thread. How it differs from XDP, and where it is the same:
- the engine lives in this process, so stopping the agent ends enforcement
  (a bump in the wire then forwards nothing: it fails closed);
- evidence: watched tenants and tenants under incident are sampled by the
  lcores into their sample rings, which the daemon's evidence recorder
  drains (agent.dpdk.samples) into the same sealed files as on XDP;
- named block lists live in the engine's memory, not in pinned maps: each
  is stored once the engine has it, in the same list store as an XDP
  interface's (agent.datapath.named_lists, under the engine's name), and a
  restarted agent enforces them with its first policy, as an XDP agent
  adopts its pins;
- a policy the engine cannot enforce (SYN cookies, syn_ack = "track") is
  refused before anything is written: the running one stays in force."""

from __future__ import annotations

import threading
from typing import Callable

from agent.daemon import journal
from agent.daemon.config import AgentConfig
from agent.daemon.enforcer import Enforcer, InterfaceState, _return_freed_memory
from agent.policy import Policy, PolicyError

MODE = "dpdk"


def refuse_unsupported(policy: Policy, source: str) -> None:
    """PolicyError naming what the DPDK engine cannot enforce; nothing is applied."""
    from agent.dpdk.engine import unsupported_features
    problems = unsupported_features(policy)
    if problems:
        raise PolicyError(source, [f"the DPDK engine cannot enforce {p} (it needs the kernel's conntrack and "
                                   "SYN-cookie secret); use syn_ack = \"drop\" and no syn_cookies, or the XDP "
                                   "engine" for p in problems])


class _GuardedEngine:
    """What the counter and evidence views read (compiled, lcores,
    slot_capacity, read_counter_slot, the samples and their budget), refused
    once the engine is closed: a scan still running in the accounting or
    evidence thread never reads freed memory."""

    def __init__(self, engine, lock: threading.Lock):
        self._engine, self._lock = engine, lock
        self.lcores, self.slot_capacity = engine.lcores, engine.slot_capacity

    @property
    def compiled(self):
        return self._engine.compiled if self._engine is not None else None

    def read_counter_slot(self, slot: int) -> bytes:
        with self._lock:
            if self._engine is None:
                raise OSError("the DPDK engine has stopped")
            return self._engine.read_counter_slot(slot)

    def read_samples(self, out, max_samples: int) -> int:
        with self._lock:
            if self._engine is None:
                raise OSError("the DPDK engine has stopped")
            return self._engine.read_samples(out, max_samples)

    def read_sample_config(self) -> bytes:
        with self._lock:
            if self._engine is None:
                raise OSError("the DPDK engine has stopped")
            return self._engine.read_sample_config()

    def write_sample_config(self, raw: bytes) -> None:
        with self._lock:
            if self._engine is None:
                raise OSError("the DPDK engine has stopped")
            self._engine.write_sample_config(raw)

    def closed(self) -> None:
        with self._lock:
            self._engine = None


class DpdkEnforcer(Enforcer):
    def __init__(self, config: AgentConfig, policy: Policy):
        super().__init__(config, policy)
        self.engine = None
        self._guard: _GuardedEngine | None = None
        self._lock = threading.Lock()
        # One managed "interface": the engine, named by the ports it judges (one worker, one set of counters).
        self.name = "+".join(p.name for p in config.dpdk.ports if p.judge)
        self.interfaces = {self.name: InterfaceState(self.name)}

    # -- runs in the writer thread ----------------------------------------
    def attach_all(self) -> None:
        """Start the EAL and the worker, apply the first policy, then poll:
        the engine is 'attached' only once the policy is in force."""
        from agent.dpdk.engine import DpdkEngine
        state = self.interfaces[self.name]
        try:
            refuse_unsupported(self.policy, str(self.config.policy_file))
            engine = DpdkEngine(self.config.dpdk)
        except (PolicyError, OSError) as err:
            state.attached, state.mode, state.error = False, "none", str(err)
            journal.error("DPDK engine not enforcing", event="interface_error", interface=self.name, error=str(err))
            return
        try:
            # The lists stored by the agent before this one enforce with the first policy, as pins would.
            engine.named_lists = self.list_store().load_all()
            compiled = engine.apply(self.effective_policy())
            engine.start()
        except (OSError, ValueError) as err:
            engine.close()
            state.attached, state.mode, state.error = False, "none", str(err)
            journal.error("DPDK engine not enforcing", event="interface_error", interface=self.name, error=str(err))
            return
        self.engine = engine
        self._guard = _GuardedEngine(engine, self._lock)
        self._record_applied()
        state.attached, state.mode, state.error = True, MODE, None
        journal.info("DPDK engine enforcing", event="attached", interface=self.name, mode=MODE,
                     revision=self.policy.revision, tenants=len(compiled.slots), lcores=engine.lcores,
                     ports=[p.name for p in self.config.dpdk.ports],
                     named_lists={str(list_id): len(prefixes) for list_id, prefixes in engine.named_lists.items()})

    def attach_one(self, ifname: str) -> InterfaceState:
        return self.interfaces[ifname]          # the engine starts once per process (attach_all)

    def apply_all(self) -> dict[str, str]:
        state = self.interfaces[self.name]
        if self.engine is None:
            return {}
        try:
            compiled = self.engine.apply(self.effective_policy())
        except OSError as err:
            # apply swaps whole snapshots: a failed one leaves the previous in force.
            journal.error("policy apply failed on the DPDK engine; the previous policy stays in force",
                          event="apply_error", interface=self.name, error=str(err))
            return {self.name: f"failed: {err}"}
        state.error = None
        self._record_applied()
        return {self.name: f"revision {self.policy.revision}, {len(compiled.slots) - 1} tenants, swapped whole"}

    def reload(self, config: AgentConfig, policy: Policy) -> dict[str, str]:
        # Refused before anything changes: the service logs it and the old policy stays.
        refuse_unsupported(policy, str(config.policy_file))
        if config.dpdk != self.config.dpdk:
            journal.warning("the engine section of the config changed: it takes effect when the agent is "
                            "restarted (the EAL starts once per process); the running engine keeps its ports",
                            event="engine_change_pending")
            config = _keep_engine(config, self.config)
        self.config = config
        self.policy = policy
        return self.apply_all()

    def change_policy(self, change: Callable[[Policy], Policy], what: str) -> dict:
        def checked(old: Policy) -> Policy:
            new = change(old)
            if new is not old:
                refuse_unsupported(new, what)     # before the file is written: nothing changes
            return new
        return super().change_policy(checked, what)

    def replace_list(self, list_id, prefixes) -> dict[str, str]:
        if self.engine is None:
            raise OSError("the DPDK engine is not running")
        compiled = self.engine.replace_named_list(list_id, prefixes)
        # Stored once the engine enforces it (as XDP stores once the kernel has it).
        if prefixes is None:
            self.list_store().remove(list_id)
        else:
            self.list_store().save(list_id, prefixes)
        _return_freed_memory()
        what = f"{len(prefixes)} prefixes loaded" if prefixes is not None else "unloaded"
        return {self.name: f"list {list_id} {what}; revision {compiled.revision} swapped whole"}

    def _record_applied(self) -> None:
        """Beside the stored lists, the policy in force (agent.datapath.policy_store),
        as for an XDP interface: what `edgewarden block lists` reads to say whether
        a tenant's list is enforced."""
        from agent.datapath.policy_store import record_applied_policy
        try:
            record_applied_policy(self.name, self.engine.policy)
        except OSError as err:
            journal.warning("cannot record the applied policy beside the engine's lists", event="state_error",
                            interface=self.name, error=str(err))

    def list_store(self):
        """Where the engine's named lists are kept across restarts: the XDP
        path's list store, under the engine's name (`edgewarden block lists`
        reads it the same way)."""
        from agent.datapath.named_lists import list_store
        return list_store(self.name)

    def interface_gone(self, ifname: str) -> None:
        pass          # DPDK port names are not kernel interfaces

    def interface_appeared(self, ifname: str) -> None:
        pass

    def stop(self) -> None:
        self.writer.submit(self._close).result()
        self.writer.shutdown(wait=True)

    def _close(self) -> None:
        if self.engine is None:
            return
        stats = self.engine.stats()
        if self._guard is not None:
            self._guard.closed()
        self.engine.close()
        self.engine = None
        self.interfaces[self.name].attached = False
        journal.info("DPDK engine stopped: enforcement ends with the agent (nothing is forwarded until it "
                     "starts again)", event="engine_stopped", interface=self.name, **stats.as_dict())

    # -- what the service reads --------------------------------------------
    def counter_maps(self, ifname: str) -> dict:
        """The engine's per-lcore counters through the BpfMap interface (agent.dpdk.maps)."""
        from agent.dpdk.maps import engine_maps
        if self._guard is None:
            raise OSError("the DPDK engine is not running")
        return engine_maps(self._guard)

    def sample_ring(self):
        """The lcores' sample rings, drained by the evidence recorder (agent.dpdk.samples)."""
        from agent.dpdk.samples import EngineSampleRing
        if self._guard is None:
            raise OSError("the DPDK engine is not running")
        return EngineSampleRing(self._guard)

    def map_fill(self, maps) -> dict[str, float]:
        """The engine's tables grow with each snapshot; its fixed size is the counter slots."""
        return {"ew_counters": (len(maps["ew_tenants"].items()) + 1) / maps["ew_counters"].max_entries}


def _keep_engine(new: AgentConfig, running: AgentConfig) -> AgentConfig:
    from dataclasses import replace
    return replace(new, dpdk=running.dpdk)


def make_enforcer(config: AgentConfig, policy: Policy) -> Enforcer:
    """The enforcer the config's engine needs."""
    return DpdkEnforcer(config, policy) if config.engine == MODE else Enforcer(config, policy)
