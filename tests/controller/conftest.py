"""Controller fixtures: every store test runs on SQLite and on a real
PostgreSQL, a throwaway cluster started once per session and stopped at the
end. A missing server fails these tests; it never skips them."""

import itertools
import sqlite3

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


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite store migrated from empty once per session; each test gets a
    copy of it, as each PostgreSQL test gets a copy of ew_template (migrating
    every test's store from empty cost a quarter second each, and the CLI and
    controller processes a test starts then found it migrated already)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "controller.db"
    engine = open_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "controller.db"
        # the backup API copies a consistent image whatever the WAL holds
        source, copy = sqlite3.connect(request.getfixturevalue("sqlite_template")), sqlite3.connect(path)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        return f"sqlite:///{path}"
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
