"""A throw-away PostgreSQL server for the test run (initdb + pg_ctl, trust auth, loopback)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.stack import free_port


def postgres_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")
    return Path(found).parent


class PostgresServer:
    def __init__(self):
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="aipower-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        kwargs = {}
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            kwargs = {"user": user.pw_uid, "group": user.pw_gid}
        subprocess.run(command, check=True, capture_output=True, **kwargs)

    def start(self) -> PostgresServer:
        data = self.dir / "data"
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"),
            "-o", options, *extra, action,
        )  # fmt: skip

    def restart(self) -> None:
        """Crash-restart: every connection is cut, in-flight transactions are lost."""
        self._pg_ctl("restart", "-m", "immediate")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
