"""store.on_new_revision, on both backends: the distribution server is
woken by a committed revision (and only by one), after the commit, so what
it reads then is the revision itself."""

import pytest
from sqlalchemy import select

from controller import blocklists, schema
from controller.store import on_new_revision, reading, writing
from controller.tokens import Role


def _block(engine, source: str) -> int:
    with writing(engine) as (conn, head):
        blocklists.add_entries(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                               sources=[source], ports=[], reason="listener test")
        return head["revision"]


def test_a_committed_revision_calls_the_listener_after_its_commit(engine):
    calls = []

    def listener(revision):
        with reading(engine) as conn:   # another connection: sees only what is committed
            head = conn.execute(select(schema.head.c.revision)).scalar_one()
        calls.append((revision, head))
    stop = on_new_revision(engine, listener)
    first = _block(engine, "192.0.2.1")
    second = _block(engine, "192.0.2.2")
    assert calls == [(first, first), (second, second)]
    stop()
    _block(engine, "192.0.2.3")
    assert len(calls) == 2


def test_no_call_for_a_write_without_a_revision_or_one_rolled_back(engine):
    calls = []
    stop = on_new_revision(engine, calls.append)
    with writing(engine) as (conn, head):
        pass
    with pytest.raises(RuntimeError):
        with writing(engine) as (conn, head):
            blocklists.add_entries(conn, head, operator="alice", role=Role.OPERATOR, tenant_id=None,
                                   sources=["192.0.2.9"], ports=[], reason="rolled back")
            raise RuntimeError("the caller failed after the revision was made")
    with reading(engine) as conn:
        assert conn.execute(select(schema.head.c.revision)).scalar_one() == 0
    assert calls == []
    stop()


def test_a_failing_listener_neither_fails_the_write_nor_stops_the_others(engine):
    calls = []

    def broken(revision):
        raise ValueError("listener bug")
    stops = [on_new_revision(engine, broken), on_new_revision(engine, calls.append)]
    revision = _block(engine, "192.0.2.4")
    assert calls == [revision]
    with reading(engine) as conn:
        assert conn.execute(select(schema.head.c.revision)).scalar_one() == revision
    for stop in stops:
        stop()
