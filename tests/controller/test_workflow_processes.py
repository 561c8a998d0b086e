"""Deadlines are rows, not timers: a controller restarted at minute 29 still
suspends at minute 30 (each step a separate process, on both backends), and
two controller processes on one PostgreSQL act on each deadline once."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from controller import schema as cschema
from controller.store import reading
from controller.workflow import IncidentReport, ManualClock, schema

from workflow_helpers import add_tenant, assert_chain_intact, policy_tenant, tenant, workflow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
T0 = dt.datetime(2026, 12, 1, 8, 0, 0)


def controller_process(url, now, *command, worker="proc", wait=True):
    cmd = [sys.executable, str(HERE / "workflow_process.py"), "--db", url, "--now", now.isoformat(),
           "--worker", worker, *command]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_controller_restarted_at_minute_29_still_suspends_at_minute_30(engine, store_url):
    add_tenant(engine)
    warned = controller_process(store_url, T0, "report", "1")
    assert warned["due"] == str(T0 + dt.timedelta(minutes=30))
    # the controller stops; another process starts at minute 29: nothing is due yet
    assert controller_process(store_url, T0 + dt.timedelta(minutes=29), "tick") == []
    assert tenant(engine)["state"] == "active"
    # and the next one, at minute 30, suspends from what the store remembers
    acted = controller_process(store_url, T0 + dt.timedelta(minutes=30), "tick", worker="after-restart")
    assert [a["done"] for a in acted] == [["suspend"]]
    assert policy_tenant(engine)["state"] == "suspended"
    with reading(engine) as conn:
        assert conn.execute(select(schema.deadlines.c.done_by)).scalar_one() == "after-restart"
    assert_chain_intact(engine)


def test_two_controller_processes_act_on_each_deadline_once(postgres_cluster, tmp_path):
    from controller.store import migrate, open_engine
    url = postgres_cluster.create_database("ew_two_controllers", template="ew_template")
    engine = open_engine(url)
    migrate(engine)
    tenants = range(1, 21)
    wf = workflow(engine, clock=ManualClock(T0))
    for t in tenants:
        add_tenant(engine, t)
        wf.report(IncidentReport(tenant_id=t, kind="virus", summary="worm seen"), reported_by="alice")
    start = tmp_path / "go"
    racers = [controller_process(url, T0 + dt.timedelta(minutes=31), "race", str(start), worker=f"controller-{n}",
                                 wait=False) for n in ("a", "b")]
    start.touch()
    results = []
    for proc in racers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    acted = [a["deadline"] for r in results for a in r]
    assert sorted(acted) == list(range(1, 21))              # every deadline acted on, none twice
    with reading(engine) as conn:
        d = schema.deadlines.c
        rows = conn.execute(select(d.id, d.done_by)).all()
        assert all(by in ("controller-a", "controller-b") for _, by in rows)
        a = cschema.audit.c
        suspensions = conn.execute(select(func.count()).select_from(cschema.audit).where(
            a.action == "tenant.update", a.operator == "controller")).scalar_one()
        assert suspensions == 20                            # one suspension per tenant
    print(f"deadlines acted on: controller-a {len(results[0])}, controller-b {len(results[1])}")
    for t in tenants:
        assert tenant(engine, t)["state"] == "suspended"
    assert_chain_intact(engine)
    engine.dispose()


def test_the_workflow_migration_comes_after_the_controllers_and_reverses(engine):
    from alembic import command
    from sqlalchemy import inspect
    from controller.store import _alembic_config, migrate
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    names = inspect(engine).get_table_names()
    assert "deadlines" not in names and "tenants" in names
    assert "watch" not in {c["name"] for c in inspect(engine).get_columns("tenants")}
    from alembic.script import ScriptDirectory
    with engine.connect() as conn:
        script = ScriptDirectory.from_config(_alembic_config(conn))
    # the workflow's 0002 follows the controller's 0001; later ones (0003 fleet) follow it
    assert script.get_revision("0002").down_revision == "0001"
    assert migrate(engine) == script.get_current_head()
    assert {"cases", "incidents", "deadlines", "notifications"} <= set(inspect(engine).get_table_names())
