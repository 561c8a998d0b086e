"""A throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary directory,
loopback only, trust auth) for the tests and benchmarks: started once, stopped
and removed at the end. Never touches the system's own clusters."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path(os.environ.get("EDGEWARDEN_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres"   # initdb refuses to run as root


class PostgresUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    def __init__(self):
        self.dir: Path | None = None
        self.port = 0
        self._as_user: list[str] = []

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg://{RUN_AS}@127.0.0.1:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def _run(self, *cmd: str) -> None:
        result = subprocess.run([*self._as_user, *cmd], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr or result.stdout}")

    def start(self) -> "ThrowawayPostgres":
        if not (PG_BIN / "initdb").exists():
            raise PostgresUnavailable(f"PostgreSQL server binaries not found in {PG_BIN}: "
                                      "apt-get install postgresql (make setup does)")
        self.dir = Path(tempfile.mkdtemp(prefix="edgewarden-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PostgresUnavailable(f"no {RUN_AS!r} system user to run the server as") from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        data = self.dir / "data"
        self._run(str(PG_BIN / "initdb"), "-D", str(data), "-U", RUN_AS, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        self.port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} " \
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "server.log"), "-o", options,
                  "-w", "-t", "60", "start")
        return self

    def create_database(self, name: str, template: str | None = None) -> str:
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={RUN_AS} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def stop(self) -> None:
        if self.dir is None:
            return
        if (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run([*self._as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                            "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
