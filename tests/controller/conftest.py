"""Controller fixtures: every store test runs on SQLite and on a real
PostgreSQL, a throwaway cluster started once per session and stopped at the
end. A missing server fails these tests; it never skips them."""

import itertools

import pytest

from sqlalchemy import select

from agent.policy import policy_from_document, policy_to_document
from controller import schema
from controller.revisions import load_document
from controller.store import migrate, open_engine, reading
from controller.throwaway_pg import PostgresUnavailable, ThrowawayPostgres

BACKENDS = ["sqlite", "postgresql"]
_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_cluster():
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
    except PostgresUnavailable as err:
        cluster.stop()
        pytest.fail(f"the PostgreSQL store tests need a server: {err}", pytrace=False)
    # one migrated template; each test gets a copy (CREATE DATABASE ... TEMPLATE is fast)
    url = cluster.create_database("ew_template")
    engine = open_engine(url)
    migrate(engine)
    engine.dispose()
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database(f"ew_test_{next(_numbers)}", template="ew_template")


@pytest.fixture
def engine(store_url):
    engine = open_engine(store_url)
    migrate(engine)
    yield engine
    # every revision a test made is a document the agent accepts, as it stands
    with reading(engine) as conn:
        for row in conn.execute(select(schema.revisions.c.revision)).all():
            doc = load_document(conn, row.revision)
            assert policy_to_document(policy_from_document(doc)) == doc, f"revision {row.revision}"
    engine.dispose()
