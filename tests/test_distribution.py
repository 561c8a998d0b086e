"""The controller pushing policy to its fleet (issue 11), against a real
controller process (`edgewarden controller` with its distribution server on
loopback mutual TLS) and protocol-speaking agents (tests/fleet_support.py):
snapshot then delta, acknowledgements in the fleet view, a rejection shown
and never pushed again, bad credentials and untrusted signatures refused,
emergency blocks, incidents stored once across a controller restart, and
agents converging after the controller was killed and restarted."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import pytest

from agent.wire.asyncio_client import ControllerRefused
from agent.wire.signing import keygen
from fleet_support import Controller, SimAgent, cli, wait_for


@pytest.fixture
def controller(tmp_path):
    c = Controller(tmp_path / "controller").setup()
    c.start()
    yield c
    c.stop()


def applied_revisions(agent):
    return [r for r, *_ in agent.applied]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_snapshot_then_delta_each_acknowledged_and_shown_in_the_fleet_view(controller):
    files = {n: controller.add_node(n) for n in ("edge-1", "edge-2")}
    first = controller.block("192.0.2.0/24")

    async def scenario():
        agents = [SimAgent(controller, n, f) for n, f in files.items()]
        for a in agents:
            await a.connect()
        tasks = [asyncio.create_task(a.run()) for a in agents]
        await wait_for(lambda: all(applied_revisions(a) == [first] for a in agents), what="the snapshot")
        second = controller.block("198.51.100.7", reason="second")
        await wait_for(lambda: all(applied_revisions(a)[-1:] == [second] for a in agents), what="the delta")
        for a in agents:
            assert [how for _, how, _ in a.applied] == ["snapshot", "delta"]
            assert "198.51.100.7/32" in list(a.bundle.lists["global/policy"].cidrs())
        await asyncio.sleep(0.6)    # the node state is written in batches
        fleet = controller.api("GET", "/fleet")
        assert fleet["latest_revision"] == second and fleet["up_to_date"] == 2 and fleet["connected"] == 2
        for node in fleet["nodes"]:
            assert node["applied_revision"] == second and node["lag"] == 0 and node["last_rejection"] is None
            assert node["attach_modes"] == {"sim0": "native"} and node["agent_version"] == "sim"
        one = controller.api("GET", "/fleet/edge-1")
        assert one["node"] == "edge-1" and one["applied_revision"] == second
        out = cli("fleet", "status", "--json", "--controller", controller.url, "--token", controller.token)
        assert json.loads(out.stdout)["up_to_date"] == 2
        human = cli("fleet", "status", "--controller", controller.url, "--token", controller.token).stdout
        assert "edge-1" in human and "edge-2" in human and "connected" in human
        for a in agents:
            await a.close()
        await asyncio.gather(*tasks)

    run(scenario())


def test_a_rejected_revision_is_shown_and_never_pushed_again(controller):
    files = controller.add_node("edge-1")
    good = controller.block("192.0.2.1")

    def refuse(bundle):
        cidrs = list(bundle.lists.get("global/policy").cidrs()) if "global/policy" in bundle.lists else []
        return "this node cannot take 192.0.2.66" if "192.0.2.66/32" in cidrs and "203.0.113.9/32" not in cidrs \
            else None

    async def scenario():
        agent = SimAgent(controller, "edge-1", files, refuse=refuse)
        await agent.connect()
        task = asyncio.create_task(agent.run())
        await wait_for(lambda: applied_revisions(agent) == [good], what="the first revision")
        bad = controller.block("192.0.2.66")
        await wait_for(lambda: agent.rejected, what="the rejection")
        # digest requests every second, and new connections: the rejected revision is never offered again
        await asyncio.sleep(3.0)
        offers = [e for e in agent.events if getattr(getattr(e, "delta", None), "to_revision", None) == bad
                  or getattr(getattr(e, "bundle", None), "revision", None) == bad]
        assert len(offers) == 1, offers
        fleet = controller.api("GET", "/fleet/edge-1")
        assert fleet["applied_revision"] == good and fleet["lag"] == 1
        assert fleet["last_rejection"]["revision"] == bad
        assert fleet["last_rejection"]["reason"] == "invalid_policy"
        assert "192.0.2.66" in fleet["last_rejection"]["message"]
        await agent.close()
        await task
        # a reconnect does not bring it back either
        again = SimAgent(controller, "edge-1", files, refuse=refuse)
        again.verifier, again.bundle = agent.verifier, agent.bundle
        await again.connect()
        task = asyncio.create_task(again.run())
        await asyncio.sleep(1.5)
        assert not again.applied and not again.rejected
        # the next revision is pushed (a delta from the last good one)
        fixed = controller.block("203.0.113.9", reason="the fix")
        await wait_for(lambda: applied_revisions(again) == [fixed], what="the next revision")
        assert again.applied[0][1] == "delta"
        await again.close()
        await task

    run(scenario())


def test_unknown_and_revoked_nodes_are_refused_with_the_reason(controller, tmp_path):
    files = controller.add_node("edge-1")

    async def scenario():
        agent = SimAgent(controller, "edge-1", files)
        await agent.connect()
        task = asyncio.create_task(agent.run())
        await agent.close()
        await task
        cli("controller", "node", "revoke", "edge-1", "--reason", "decommissioned", "--config", str(controller.config))
        with pytest.raises(ControllerRefused) as refused:
            await SimAgent(controller, "edge-1", files).connect()
        assert refused.value.reason == "bad_credentials" and "revoked" in str(refused.value)
        assert "decommissioned" in str(refused.value)
        # a certificate from the fleet CA for a name the registry does not hold
        from agent.wire.tls import NodeAuthority
        issued = NodeAuthority(controller.ca_dir).issue_node("stray")
        with pytest.raises(ControllerRefused) as refused:
            await SimAgent(controller, "stray", {"cert": issued.cert_path, "key": issued.key_path,
                                                 "ca": files["ca"]}).connect()
        assert "not a registered node" in str(refused.value)

    run(scenario())
    listed = json.loads(cli("controller", "node", "list", "--json", "--config", str(controller.config)).stdout)
    assert [(n["name"], bool(n["revoked_at"])) for n in listed] == [("edge-1", True)]


def test_a_revision_signed_by_an_untrusted_key_is_refused_and_the_controller_shows_it(controller, tmp_path):
    files = controller.add_node("edge-1")
    revision = controller.block("192.0.2.5")
    keygen(tmp_path / "other.key", tmp_path / "other.pub")

    async def scenario():
        agent = SimAgent(controller, "edge-1", files)
        from agent.wire import BundleVerifier, load_public_key
        agent.verifier = BundleVerifier([load_public_key(tmp_path / "other.pub")])
        await agent.connect()
        task = asyncio.create_task(agent.run())
        await wait_for(lambda: agent.rejected, what="the refusal")
        assert agent.rejected == [(revision, "unknown_key")] and not agent.applied
        await asyncio.sleep(0.6)
        rejection = controller.api("GET", "/fleet/edge-1")["last_rejection"]
        assert rejection["revision"] == revision and rejection["reason"] == "unknown_key"
        await agent.close()
        await task

    run(scenario())


def test_emergency_block_reaches_every_agent_and_becomes_a_revision(controller):
    files = {n: controller.add_node(n) for n in ("edge-1", "edge-2")}
    controller.block("192.0.2.1")

    async def scenario():
        agents = [SimAgent(controller, n, f) for n, f in files.items()]
        for a in agents:
            await a.connect()
        tasks = [asyncio.create_task(a.run()) for a in agents]
        await wait_for(lambda: all(a.applied for a in agents), what="the first revision")
        out = await asyncio.to_thread(controller.api, "POST", "/fleet/emergency",
                                      {"prefixes": ["198.51.100.0/24"], "reason": "DDoS from this range"})
        assert out["sent_to"] == 2 and out["prefixes"] == ["198.51.100.0/24"]
        await wait_for(lambda: all(a.emergencies for a in agents), what="the emergency block")
        assert all(a.emergencies[0][0] == out["emergency_id"] for a in agents)
        revision = out["batch"]["revision"]
        await wait_for(lambda: all(applied_revisions(a)[-1] == revision for a in agents), what="its revision")
        for a in agents:
            assert "198.51.100.0/24" in list(a.bundle.lists["global/policy"].cidrs())
            await a.close()
        await asyncio.gather(*tasks)

    run(scenario())
    # the CLI: admin only
    out = cli("block", "emergency", "203.0.113.0/25", "--reason", "second wave", "--controller", controller.url,
              "--token", controller.token)
    assert "emergency block" in out.stdout
    bad = cli("block", "emergency", "not-an-address", "--reason", "x", "--controller", controller.url, "--token",
              controller.token, check=False)
    assert bad.returncode != 0 and "prefixes[0]" in bad.stderr


def test_incidents_are_stored_once_across_a_controller_restart(controller):
    files = controller.add_node("edge-1")
    report = {"id": "edge-1:7:packets_per_second:1", "tenant_id": 7, "check": "packets_per_second",
              "threshold": 1000.0, "started_at": 1.0, "peak_value": 5000.0, "peak_at": 2.0, "ended_at": None,
              "interfaces": ["eth1"], "report": "started"}

    async def send_and_wait(incident_id):
        agent = SimAgent(controller, "edge-1", files)
        await agent.connect()
        task = asyncio.create_task(agent.run())
        await agent.report_incident(incident_id, report)
        await wait_for(lambda: incident_id in agent.incident_acks, what="the incident ack")
        await agent.close()
        await task

    run(send_and_wait("edge-1:7:packets_per_second:1/started"))
    controller.stop(signal.SIGKILL)      # the ack may be lost in a crash: the agent sends again
    controller.start()
    run(send_and_wait("edge-1:7:packets_per_second:1/started"))
    db = sqlite3.connect(controller.directory / "controller.db")
    rows = db.execute("SELECT incident_id, node, workflow_note FROM fleet_incidents").fetchall()
    db.close()
    assert [r[:2] for r in rows] == [("edge-1:7:packets_per_second:1/started", "edge-1")]
    assert rows[0][2] and "tenant 7" in rows[0][2]    # no such tenant: stored, the workflow says why not


def test_agents_converge_after_the_controller_is_killed_and_restarted(controller):
    files = {n: controller.add_node(n) for n in ("edge-1", "edge-2")}
    first = controller.block("192.0.2.1")

    async def keep_connected(agent, stop):
        """As the daemon does: reconnect with backoff until told to stop."""
        from agent.wire.asyncio_client import reconnect_delays
        delays = reconnect_delays(first=0.1, cap=1.0)
        while not stop.is_set():
            try:
                await agent.connect()
            except (OSError, ControllerRefused, asyncio.TimeoutError):
                await asyncio.sleep(next(delays))
                continue
            await agent.run()

    async def scenario():
        agents = [SimAgent(controller, n, f) for n, f in files.items()]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(keep_connected(a, stop)) for a in agents]
        await wait_for(lambda: all(applied_revisions(a) == [first] for a in agents), what="the first revision")
        await asyncio.to_thread(controller.stop, signal.SIGKILL)
        await asyncio.to_thread(controller.start)
        latest = await asyncio.to_thread(controller.block, "198.51.100.1", reason="after the restart")
        await wait_for(lambda: all(applied_revisions(a)[-1:] == [latest] for a in agents), timeout=20,
                       what="convergence after the restart")
        # they reconnected holding revision `first`: a delta brought them up, not a snapshot
        assert all(a.applied[-1][1] == "delta" for a in agents)
        stop.set()
        for a in agents:
            await a.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario())


def test_counter_summaries_are_summed_into_fleet_wide_tenant_rates(controller):
    files = {n: controller.add_node(n) for n in ("edge-1", "edge-2")}
    from agent.wire import CounterSummary

    async def scenario():
        for n, (name, f) in enumerate(files.items(), 1):
            agent = SimAgent(controller, name, f)
            await agent.connect()
            task = asyncio.create_task(agent.run())
            # 5 s of counts: edge-1 1,000 packets/s, edge-2 2,000 packets/s for tenant 3
            await agent.link.send(CounterSummary(1_000_000, 5, [{"tenant_id": 3, "packets": 5000 * n,
                                                                 "bytes": 500_000 * n}]))
            await asyncio.sleep(0.5)
            await agent.close()
            await task

    run(scenario())
    stats = controller.api("GET", "/tenants/3/stats")
    assert stats["nodes"] == 2
    assert stats["per_second"] == {"packets": 3000.0, "bytes": 300000.0}
    out = cli("tenant", "stats", "3", "--controller", controller.url, "--token", controller.token).stdout
    assert "2 node(s)" in out and "packets/s: 3,000.0" in out
