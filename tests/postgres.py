"""A real PostgreSQL server for tests: ``initdb`` into a temporary folder, ``pg_ctl start``
on a free port of 127.0.0.1, trust authentication, stopped and removed by ``stop()``.

Run as root, the server runs as the ``postgres`` user (``runuser``): PostgreSQL refuses
to run as root. The binaries come from the Debian package (``apt-get install postgresql``:
``/usr/lib/postgresql/<version>/bin``) or ``$PATH``; ``binaries()`` is None without them.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import psycopg

from helpers import free_port


def binaries() -> str | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl and shutil.which("initdb") else None


class Postgres:
    """``start()``, then ``create_database(name)`` gives a SQLAlchemy URL of a new, empty database."""

    def __init__(self):
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is missing: apt-get install -y postgresql")
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.base = tempfile.mkdtemp(prefix="skerry-pg-")
        self.data = os.path.join(self.base, "data")
        self.started = False

    def _run(self, *args, **kwargs):
        command = [os.path.join(self.bin, args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)

    def start(self) -> "Postgres":
        if self.user:
            user = pwd.getpwnam(self.user)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off "
                   f"-c max_connections=100")
        try:
            self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", os.path.join(self.base, "log"),
                      "-o", options)
        except subprocess.CalledProcessError as e:
            log = open(os.path.join(self.base, "log")).read() if os.path.exists(os.path.join(self.base, "log")) else ""
            raise RuntimeError(f"pg_ctl start failed: {e.stderr}\n{log}") from e
        self.started = True
        return self

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data)
            except subprocess.CalledProcessError:
                self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", self.data)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)
