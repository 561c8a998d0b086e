"""The durable incident spool: a local SQLite file (WAL, synchronous=FULL,
so every commit is fsync'd before it returns) from which the controller
collects incident reports exactly once: pending() hands out reports in id
order, acknowledge(ids) retires them; a report handed out and not
acknowledged (the link broke) is handed out again."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
MIGRATIONS = {
    1: """
        CREATE TABLE incidents (
            id TEXT PRIMARY KEY,
            tenant_id INTEGER NOT NULL,
            check_name TEXT NOT NULL,
            threshold REAL NOT NULL,
            started_at REAL NOT NULL,
            peak_value REAL NOT NULL,
            peak_at REAL NOT NULL,
            ended_at REAL,
            interfaces TEXT NOT NULL
        );
        CREATE TABLE reports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id TEXT NOT NULL REFERENCES incidents(id),
            kind TEXT NOT NULL,            -- started | ended
            document TEXT NOT NULL,        -- JSON: the incident as of this report
            acknowledged INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX reports_pending ON reports(acknowledged, id);
    """,
}


class IncidentSpool:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        os.chmod(self.path, 0o600)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={target}")
            self._db.execute("COMMIT")

    def record(self, incident: dict, kind: str) -> int:
        """Stores the incident's current state and queues a report of it; durable on return."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO incidents (id, tenant_id, check_name, threshold, started_at, peak_value, peak_at, ended_at,"
                " interfaces) VALUES (:id, :tenant_id, :check, :threshold, :started_at, :peak_value, :peak_at,"
                " :ended_at, :interfaces_json) ON CONFLICT(id) DO UPDATE SET peak_value=excluded.peak_value,"
                " peak_at=excluded.peak_at, ended_at=excluded.ended_at, interfaces=excluded.interfaces",
                {**incident, "interfaces_json": json.dumps(incident.get("interfaces", []))})
            cursor = self._db.execute("INSERT INTO reports (incident_id, kind, document) VALUES (?, ?, ?)",
                                      (incident["id"], kind, json.dumps({**incident, "report": kind})))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return cursor.lastrowid

    def pending(self, limit: int = 1000) -> list[tuple[int, dict]]:
        rows = self._db.execute("SELECT id, document FROM reports WHERE acknowledged = 0 ORDER BY id LIMIT ?",
                                (limit,)).fetchall()
        return [(report_id, json.loads(document)) for report_id, document in rows]

    def acknowledge(self, report_ids) -> int:
        """Retires reports the controller has stored; unknown or repeated ids are ignored."""
        ids = [int(i) for i in report_ids]
        if not ids:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        done = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            done += self._db.execute(f"UPDATE reports SET acknowledged = 1 WHERE acknowledged = 0 AND id IN "
                                     f"({','.join('?' * len(chunk))})", chunk).rowcount
        self._db.execute("COMMIT")
        return done

    def incidents(self, open_only: bool = False) -> list[dict]:
        query = "SELECT id, tenant_id, check_name, threshold, started_at, peak_value, peak_at, ended_at, interfaces" \
                " FROM incidents" + (" WHERE ended_at IS NULL" if open_only else "") + " ORDER BY started_at"
        return [{"id": r[0], "tenant_id": r[1], "check": r[2], "threshold": r[3], "started_at": r[4],
                 "peak_value": r[5], "peak_at": r[6], "ended_at": r[7], "interfaces": json.loads(r[8])}
                for r in self._db.execute(query)]

    def db_mode(self) -> tuple[str, int]:
        """(journal_mode, synchronous): ("wal", 2) is WAL with synchronous=FULL."""
        return (self._db.execute("PRAGMA journal_mode").fetchone()[0],
                self._db.execute("PRAGMA synchronous").fetchone()[0])

    def close(self) -> None:
        self._db.close()
