"""The agent daemon's life: start (attach and apply everywhere, then READY),
run (accounting, incidents, metrics, the control socket, interface watch,
the watchdog heartbeat from the loop itself), reload on SIGHUP, stop on
SIGTERM leaving the datapath attached and enforcing unless the config says
to detach."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from pathlib import Path

from agent.daemon import changes, journal
from agent.daemon.accounting import Accounting, map_fill
from agent.daemon.config import AgentConfig, ConfigError, load_config
from agent.daemon.control import ControlServer
from agent.daemon.dpdk_enforcer import make_enforcer
from agent.daemon.enforcer import Enforcer
from agent.daemon.incidents import IncidentTracker
from agent.daemon.metrics import AgentMetrics
from agent.daemon.netwatch import InterfaceWatch, LinkEvent
from agent.daemon.notify import Notifier, watchdog_interval
from agent.daemon.spool import IncidentSpool
from agent.policy import PolicyError, TenantState, load_policy, policy_from_document

FILL_EVERY_SCANS = 10        # map fill is counted every this many scans
# control-socket commands that change the policy: refused in controller mode
LOCAL_CHANGES = ("policy_apply", "block_add", "block_del", "suspend", "resume", "block_load", "block_unload")


class StartError(RuntimeError):
    pass


class AgentDaemon:
    def __init__(self, config_path: Path, config: AgentConfig, notifier: Notifier | None = None):
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or Notifier()
        self.stopping = asyncio.Event()
        # SIGHUP reloads: one at a time, and the signals that arrive while one
        # waits its turn join it (it reads the files after all of them).
        self._signal_reload_turn = asyncio.Lock()
        self._signal_reload_waiting = False
        self.enforcer: Enforcer | None = None
        self.spool = IncidentSpool(config.spool_path)
        self.tracker = IncidentTracker(config.node, config.incident_end_after)
        self.tracker.adopt(self.spool.incidents(open_only=True))
        self.accounting = Accounting(config)
        self.metrics = AgentMetrics(config.metrics_top_tenants)
        self.evidence = None            # agent.evidence.recorder.EvidenceRecorder, when sampling is available
        self._maps: dict[str, dict] = {}
        self._tasks: list[asyncio.Task] = []

    # -- helpers -----------------------------------------------------------
    async def in_writer(self, fn, *args):
        """Run a change in the one writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.enforcer.writer, fn, *args)

    def _open_maps(self, ifname: str) -> None:
        from agent.datapath.scope import pin_dir_for
        from agent.datapath.program import close_maps, open_pinned_maps
        old = self._maps.pop(ifname, None)
        self.accounting.forget(ifname)
        if old is not None:
            close_maps(old)
        try:
            if self.config.engine == "dpdk":       # the engine's per-lcore counters, as BPF maps
                maps = self.enforcer.counter_maps(ifname)
            else:
                maps = open_pinned_maps(pin_dir_for(ifname))
        except OSError as err:
            journal.error("cannot open the live maps for accounting", interface=ifname, error=str(err))
            return
        self._maps[ifname] = maps
        self.accounting.watch(ifname, maps)
        if self.evidence is not None:
            ring = self.enforcer.sample_ring() if self.config.engine == "dpdk" else None    # else the pinned ring
            self.evidence.watch(ifname, maps, ring)

    def _sync_watch(self) -> None:
        if self.evidence is not None:
            self.evidence.set_watch(self.enforcer.watched())

    def _sync_maps(self) -> None:
        for ifname, state in self.enforcer.interfaces.items():
            if state.attached and ifname not in self._maps:
                self._open_maps(ifname)
        self.metrics.set_interfaces(self.enforcer.interfaces.values())
        self.metrics.revision.set(self.enforcer.policy.revision)

    def _status(self) -> str:
        open_incidents = len(self.tracker.open)
        return self.enforcer.status_line() + (f"; {open_incidents} open incident(s)" if open_incidents else "")

    # -- start -------------------------------------------------------------
    async def start(self) -> None:
        self.controller = None
        restored = None
        if self.config.controller is not None:
            from agent.daemon.controller_link import ControllerMode, bundle_policy
            self.controller = ControllerMode(self, self.config)
            restored = self.controller.restore()
        # controller mode: the last good signed revision first, enforced before the controller is reached
        policy = bundle_policy(restored) if restored is not None else self._boot_policy()
        self.enforcer = make_enforcer(self.config, policy)
        self.enforcer.incident_tenants = frozenset(self.tracker.tenants_under_incident())
        await self.in_writer(self.enforcer.attach_all)
        if restored is not None:
            await self.in_writer(self.controller.apply_restored_lists)
        if not self.enforcer.enforced():
            # Not ready, and not pretending: systemd restarts us (Restart=on-failure).
            raise StartError("no configured interface could be enforced: " + "; ".join(
                f"{n}: {s.error}" for n, s in self.enforcer.interfaces.items()))
        self._start_evidence()
        self._sync_watch()
        self._sync_maps()
        host, port = self.config.metrics_host_port
        self.metrics.serve(host, port)
        self.control = ControlServer(self.config.control_socket, self.handle_request)
        await self.control.start()
        loop = asyncio.get_running_loop()
        self.netwatch = InterfaceWatch(loop, self.on_link_event)
        self.netwatch.start()
        for sig, handler in ((signal.SIGHUP, self.request_reload), (signal.SIGTERM, self.stopping.set),
                             (signal.SIGINT, self.stopping.set)):
            loop.add_signal_handler(sig, handler)
        # Ready means enforcing: every configured interface that exists has had its first full apply.
        status = self._status()
        self.notifier.ready(status)
        journal.info("agent ready", event="ready", status=status, control_socket=str(self.config.control_socket),
                     metrics=self.config.metrics_address)
        self._tasks = [asyncio.create_task(self._accounting_loop(), name="accounting")]
        if self.controller is not None:
            self._tasks.append(asyncio.create_task(self.controller.run(), name="controller"))
        interval = watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._heartbeat(interval), name="watchdog"))

    def _boot_policy(self):
        """The policy file; in controller mode without one, an empty policy until the first revision."""
        if self.config.controller is not None and not self.config.policy_file.is_file():
            return policy_from_document({"revision": 0, "global": {}, "tenants": []}, "<no revision yet>")
        return load_policy(self.config.policy_file)

    def _start_evidence(self) -> None:
        try:
            from agent.evidence.recorder import EvidenceRecorder
        except ImportError:
            return
        self.evidence = EvidenceRecorder(self.config, self.metrics, self.spool)

    # -- run ---------------------------------------------------------------
    async def _heartbeat(self, interval: float) -> None:
        # From the loop itself: a wedged loop stops the heartbeat and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _accounting_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = time.monotonic()
        scans = 0
        while True:
            next_at += self.config.accounting_interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                result = await loop.run_in_executor(None, self.accounting.scan)
            except OSError as err:
                journal.error("counter scan failed", event="scan_error", error=str(err))
                continue
            self.metrics.scan_seconds.set(result.seconds)
            self.metrics.scanned_tenants.set(sum(len(s.tenant_ids) for s in result.scans.values()))
            self.metrics.tenants.update(result.scans)
            scans += 1
            if scans % FILL_EVERY_SCANS == 1:
                await loop.run_in_executor(None, self._update_map_fill)
            await self._incidents(result)
            if result.seconds > self.config.accounting_interval:
                journal.warning("counter scan took longer than the interval", event="scan_slow",
                                seconds=round(result.seconds, 3), interval=self.config.accounting_interval)
                next_at = time.monotonic()

    def _update_map_fill(self) -> None:
        for ifname, maps in list(self._maps.items()):
            try:
                fill = self.enforcer.map_fill(maps) if self.config.engine == "dpdk" else map_fill(maps)
                for name, ratio in fill.items():
                    self.metrics.map_fill.labels(ifname, name).set(ratio)
            except OSError:
                pass       # the interface went away under us; the next round sees it

    async def _incidents(self, result) -> None:
        events = self.tracker.observe(result.started_at, result.over)
        for event in events:
            record = event.incident.as_record()
            await asyncio.get_running_loop().run_in_executor(None, self.spool.record, record, event.kind)
            journal.warning(f"incident {event.kind}", event=f"incident_{event.kind}", **record)
            if event.kind == "started":
                self.metrics.incidents.labels(event.incident.check).inc()
            if self.evidence is not None:
                self.evidence.incident_event(event)
        self.metrics.incidents_open.set(len(self.tracker.open))
        if events:
            # The recorder knows the incident before the datapath starts sampling it.
            if self.evidence is not None:
                self.evidence.set_incidents(self.tracker.open)
            under = frozenset(self.tracker.tenants_under_incident())
            await self.in_writer(self.enforcer.set_incident_tenants, under)
            self.notifier.status(self._status())

    def on_link_event(self, event: LinkEvent) -> None:
        configured = set(self.enforcer.interfaces)
        if event.kind == "gone" and event.name in configured:
            self.enforcer.interface_gone(event.name)
            self.notifier.status(self._status())
            self.metrics.set_interfaces(self.enforcer.interfaces.values())
        elif event.kind == "renamed" and event.old_name in configured:
            journal.warning(f"interface {event.old_name} was renamed to {event.name}: its program stays attached, "
                            f"but it is not managed until an interface named {event.old_name} exists again "
                            "(rename it back or change the config)", event="interface_renamed",
                            interface=event.old_name, new_name=event.name)
            self.enforcer.interface_gone(event.old_name)
            self.notifier.status(self._status())
        if event.kind in ("appeared", "renamed") and event.name in configured:
            asyncio.create_task(self._reattach(event.name))

    async def _reattach(self, ifname: str) -> None:
        was = self.enforcer.interfaces[ifname].ifindex, self.enforcer.interfaces[ifname].attached
        await self.in_writer(self.enforcer.interface_appeared, ifname)
        state = self.enforcer.interfaces[ifname]
        if state.attached and (state.ifindex, True) != was:
            self._open_maps(ifname)
        self._sync_maps()
        self.notifier.status(self._status())

    # -- reload --------------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP. A burst of signals costs at most two reloads, not one each:
        the one running and one more that starts after the last signal."""
        if not self._signal_reload_waiting:
            self._signal_reload_waiting = True
            asyncio.create_task(self._reload_on_signal())

    async def _reload_on_signal(self) -> None:
        async with self._signal_reload_turn:
            self._signal_reload_waiting = False
            await self.reload()

    async def reload(self) -> dict:
        self.notifier.reloading()
        try:
            try:
                config, policy, results = await self.in_writer(self._reload_in_writer)
            except (ConfigError, PolicyError) as err:
                self.metrics.reloads.labels("rejected").inc()
                journal.error(f"reload rejected, the running config and policy stay in force: {err}",
                              event="reload_rejected")
                return {"reloaded": False, "error": str(err)}
            self.config = config
            self.accounting.configure(config)
            self.tracker.end_after = config.incident_end_after
            for ifname in [i for i in self._maps if i not in self.enforcer.interfaces]:
                self.accounting.forget(ifname)
            self._sync_maps()
            self._sync_watch()
            self.metrics.reloads.labels("applied").inc()
            journal.info("reloaded", event="reloaded", revision=policy.revision, interfaces=results)
            return {"reloaded": True, "revision": policy.revision, "interfaces": results}
        finally:
            self.notifier.send(ready=1, status=self._status())

    def _reload_in_writer(self):
        """Read and apply in the writer thread: a CLI change written to the
        file just before is in what is read, none can slip in between."""
        config = load_config(self.config_path)
        if config.engine != self.config.engine:
            raise ConfigError(f"{self.config_path}: engine = {config.engine!r}, but {self.config.engine!r} runs: "
                              "switching engines needs a restart of the agent")
        # controller mode: the controller's revision stays; the file is not the source of truth
        policy = self.enforcer.policy if config.controller is not None else load_policy(config.policy_file)
        return config, policy, self.enforcer.reload(config, policy)

    # -- the control socket ----------------------------------------------------
    async def handle_request(self, request: dict) -> dict:
        command = request.get("command")
        e = self.enforcer
        if command == "status":
            return {"status": self._status(), "revision": e.policy.revision, "engine": self.config.engine,
                    "controller": None if self.controller is None else {
                        "address": self.controller.address, "connected": self.controller.connected,
                        "applied_revision": self.controller.verifier.applied_revision},
                    "interfaces": {n: vars(s) for n, s in e.interfaces.items()},
                    "open_incidents": [i.as_record() for i in self.tracker.open.values()]}
        if command == "reload":
            return await self.reload()
        if command == "counters":
            # For `edgewarden stats`: the interfaces it cannot read from pins (`skip` are those it can).
            skip = frozenset(request.get("skip") or ())
            return {"interfaces": await asyncio.get_running_loop().run_in_executor(
                None, self._counter_snapshots, skip, request.get("interface"))}
        if self.controller is not None and command in LOCAL_CHANGES:
            raise ValueError(f"this agent is in controller mode: its policy comes from the controller at "
                             f"{self.controller.address}; make the change there (edgewarden lists add ..., "
                             f"edgewarden block emergency ...), not on the node")
        if command == "policy_apply":
            document = request["document"]
            import tomllib
            policy = policy_from_document(tomllib.loads(document), request.get("source", "<control socket>"))
            result = await self.in_writer(e.change_policy, lambda old: policy, f"policy apply {request.get('source')}")
            self._after_change()
            return result
        if command in ("block_add", "block_del"):
            fn = changes.block_add if command == "block_add" else changes.block_del
            result = await self.in_writer(e.change_policy, lambda old: fn(old, request["cidr"], request.get("tenant")),
                                          f"{command} {request['cidr']}")
            self._after_change()
            return result
        if command in ("suspend", "resume"):
            state = TenantState.SUSPENDED if command == "suspend" else TenantState.ACTIVE
            result = await self.in_writer(e.change_policy,
                                          lambda old: changes.set_state(old, int(request["tenant"]), state),
                                          f"{command} tenant {request['tenant']}")
            self._after_change()
            return result
        if command in ("block_load", "block_unload"):
            from agent._prefixes import PrefixSet
            from agent.datapath.named_lists import ListId, check_list_name
            list_id = ListId(check_list_name(request["list"]), request.get("tenant"))
            # Popped: the request's text (megabytes for a big list) is not held while the list is applied.
            prefixes = PrefixSet.deserialize(base64.b64decode(request.pop("prefixes"))) \
                if command == "block_load" else None
            results = await self.in_writer(e.replace_list, list_id, prefixes)
            journal.info("named list changed through the control socket", event="list_changed", list=str(list_id),
                         loaded=prefixes is not None)
            return {"list": str(list_id), "interfaces": results}
        if command == "incidents_pending":
            return {"reports": self.spool.pending(int(request.get("limit", 1000)))}
        if command == "incidents_acknowledge":
            return {"acknowledged": self.spool.acknowledge(request.get("ids", []))}
        raise ValueError(f"unknown command {command!r}")

    def _counter_snapshots(self, skip: frozenset[str], only: str | None) -> dict[str, dict]:
        from agent.daemon.counter_snapshot import take_snapshot
        return {ifname: take_snapshot(maps, self.enforcer.policy) for ifname, maps in list(self._maps.items())
                if ifname not in skip and only in (None, ifname)}

    def _after_change(self) -> None:
        self._sync_watch()
        self.metrics.revision.set(self.enforcer.policy.revision)
        self.notifier.status(self._status())

    # -- stop ------------------------------------------------------------------
    async def run(self) -> int:
        await self.start()
        await self.stopping.wait()
        await self.stop()
        return 0

    async def stop(self) -> None:
        self.notifier.stopping()
        journal.info("agent stopping", event="stopping",
                     detach=self.config.detach_on_stop, enforced=self.enforcer.enforced())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.control.close()
        self.netwatch.stop()
        if self.evidence is not None:
            self.evidence.close()
        await asyncio.get_running_loop().run_in_executor(None, self.enforcer.stop)
        self.metrics.close()
        self.spool.close()
        from agent.datapath.program import close_maps
        for maps in self._maps.values():
            close_maps(maps)
        journal.info("agent stopped; the datapath " + ("was detached" if self.config.detach_on_stop else
                                                        "stays attached and enforcing"), event="stopped")


def run_agent(config_path: Path) -> int:
    import uvloop
    journal.setup()
    try:
        config = load_config(config_path)
        if config.controller is None or config.policy_file.is_file():
            load_policy(config.policy_file)
    except (ConfigError, PolicyError) as err:
        journal.error(f"cannot start: {err}", event="start_failed")
        return 1
    notifier = Notifier()

    async def main() -> int:
        return await AgentDaemon(config_path, config, notifier).run()

    try:
        return uvloop.run(main())
    except StartError as err:
        journal.error(f"cannot start: {err}", event="start_failed")
        return 1
    except OSError as err:
        journal.error(f"agent failed: {err}", event="failed")
        return 1
