"""Opening the store (SQLite by default, PostgreSQL by URL), running the
migrations, and the two kinds of transaction every operation uses: a read,
and a write that first locks the controller head row so writes are serialised."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import weakref
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, create_engine, event, select, update
from sqlalchemy.engine import make_url

from controller import schema

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
GENESIS_HASH = "0" * 64
log = logging.getLogger("edgewarden.store")
# engine -> what to call (with the new head revision) after a write that made a revision commits
_revision_listeners: "weakref.WeakKeyDictionary[Engine, list[Callable[[int], None]]]" = weakref.WeakKeyDictionary()


class StoreError(Exception):
    """The store cannot be opened or is not migrated; says which and what to do."""


def utcnow() -> dt.datetime:
    """Naive UTC, microseconds: what every DateTime column holds."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def normalise_url(url: str) -> str:
    """Accept a plain path for SQLite and postgresql:// for psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            # pysqlite's own transaction handling would start writes late;
            # we issue BEGIN ourselves (below)
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA cache_size=-65536")   # 64 MiB: a million-row import stays in memory until commit
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # a writer takes the lock at BEGIN, so two writers never both read the
            # same head and then fail at commit
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writing") else "BEGIN")
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise StoreError(f"database URL {url!r}: only sqlite:///PATH and postgresql://... are supported")


def backend(engine: Engine) -> str:
    return engine.dialect.name


def _alembic_config(connection: Connection):
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest migration; returns the revision now in place."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
        return MigrationContext.configure(conn).get_current_revision()


def check_migrated(engine: Engine) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        newest = ScriptDirectory.from_config(_alembic_config(conn)).get_current_head()
    if current != newest:
        raise StoreError(f"the store is at schema {current or 'none'}, the controller needs {newest}; "
                         "run: edgewarden controller migrate")


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[tuple[Connection, dict]]:
    """One changing call = one transaction: everything in it commits together or
    not at all. Yields the connection and the locked head row (a dict the
    audit and revision code update; written back before commit)."""
    with engine.connect().execution_options(writing=True) as conn:
        with conn.begin():
            query = select(schema.head).where(schema.head.c.id == 1)
            if engine.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).mappings().one_or_none()
            if row is None:
                raise StoreError("the store has no controller head row; run: edgewarden controller migrate")
            head = dict(row)
            original = dict(head)
            yield conn, head
            if head != original:
                conn.execute(update(schema.head).where(schema.head.c.id == 1).values(
                    audit_seq=head["audit_seq"], audit_hash=head["audit_hash"], revision=head["revision"]))
    if head["revision"] != original["revision"]:
        for listener in list(_revision_listeners.get(engine, ())):
            try:
                listener(head["revision"])
            except Exception:   # a listener never undoes or fails a committed write
                log.exception("revision listener failed")


def on_new_revision(engine: Engine, listener: Callable[[int], None]) -> Callable[[], None]:
    """Call `listener(revision)` (in the writing thread) after each write
    through `engine` that made a revision has committed, so the distribution
    server pushes it at once instead of at its next look at the head.
    Returns the function that stops it."""
    listeners = _revision_listeners.setdefault(engine, [])
    listeners.append(listener)
    return lambda: listeners.remove(listener) if listener in listeners else None
