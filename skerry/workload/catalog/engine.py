"""The catalog's database: its engine, its schema (Alembic migrations) and its transactions.

``make_engine(url)`` opens ``sqlite:///PATH`` or ``postgresql+psycopg://...`` (the hub's own
SQLite files use it too, ``hub/stores/sqlitefile.py``). ``Database`` is the base of every
part of ``Catalog``: ``session()`` reads, ``writing()`` writes, ``upgrade()`` migrates.

Rules:
- every change is one transaction (``writing()``): committed at its end, rolled back on
  any error, so a refused call leaves no row behind;
- on SQLite (WAL, foreign keys on, a busy timeout of ``BUSY_TIMEOUT_S``), writing
  transactions start with ``BEGIN IMMEDIATE``, so two writers queue instead of failing on
  a lock upgrade; the file is never in memory (a memory database is not shared);
- on PostgreSQL the driver is psycopg 3, and pooled connections are checked before use
  (psycopg prepares a statement run 5 times, and PostgreSQL may then plan it once for any
  values: a value the plan depends on is written into the statement, as the tasks' states
  query does in ``scheduling/bookkeeping.py``; planning every run for its values cost
  PostgreSQL 0.32 ms of CPU per job against 0.18, in a 10,000-job run each);
- the schema is Alembic's, from ``skerry/workload/migrations``, run in one connection with
  the pragmas above but SQLite's foreign keys off (its table copies would cascade),
  checked before the commit; the ``alembic`` command is never needed.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from ... import config
from ...errors import ConfigError, InternalError

__all__ = ["Database", "make_engine", "MIGRATIONS", "BUSY_TIMEOUT_S"]

MIGRATIONS = Path(__file__).parent.with_name("migrations")  # skerry/workload/migrations
BUSY_TIMEOUT_S = 60


def make_engine(url: str) -> Engine:
    """An engine for a catalog URL, set up as the Rules say; ``ConfigError`` for any other URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"catalog URL {url!r} is not a database URL "
                          "(sqlite:///PATH or postgresql+psycopg://...)") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
        return create_engine(parsed, pool_pre_ping=True)
    if backend != "sqlite":
        raise ConfigError(f"catalog URL {url!r}: only sqlite and postgresql are supported")
    if parsed.database in (None, "", ":memory:"):
        raise ConfigError("the SQLite catalog needs a file (sqlite:///PATH): an in-memory one is not shared")
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe in WAL mode: a crash loses no committed transaction
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        immediate = connection.get_execution_options().get("skerry_write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """The engine of one catalog URL and its transactions; the parts of ``Catalog`` build on it."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        # same pool; marks transactions that write (BEGIN IMMEDIATE on SQLite)
        self._write_engine = self.engine.execution_options(skerry_write=True)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, **kwargs) -> Self:
        """The platform's catalog: at ``SKERRY_CATALOG_URL`` where it is set (PostgreSQL, on
        Kubernetes), else the default, ``DIR/catalog.sqlite``."""
        url = config.CATALOG_URL.get()
        if url:
            return cls(url, **kwargs)
        path = Path(data_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path / 'catalog.sqlite'}", **kwargs)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # ---- schema ----

    def _alembic_config(self):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision`` (the newest by default); a no-op when there."""
        from alembic import command

        config = self._alembic_config()
        with self.engine.connect() as plain:
            # SQLite alters a table by copying it and dropping the old one, and a drop with
            # foreign keys on deletes the rows that refer to it (ON DELETE CASCADE): 0002's
            # copy of ``datasets`` took every file with it. The pragma is a no-op inside a
            # transaction, so it is set before; the keys are checked before the commit.
            sqlite = self.dialect == "sqlite"
            if sqlite:  # on the driver's connection: SQLAlchemy would begin a transaction first
                plain.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                with plain.execution_options(skerry_write=True).begin():
                    config.attributes["connection"] = plain
                    command.upgrade(config, revision)
                    broken = plain.exec_driver_sql("PRAGMA foreign_key_check").all() if sqlite else []
                    if broken:  # raised inside the transaction: nothing of the migration stays
                        raise InternalError(f"the catalog's migration to {revision} broke {len(broken)} "
                                            f"foreign keys (first: {tuple(broken[0])})")
            finally:
                if sqlite:
                    plain.connection.driver_connection.execute("PRAGMA foreign_keys=ON")

    def revision(self) -> str | None:
        """The schema's current Alembic revision (None: an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    # ---- sessions ----

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (committed at the end: may also write on PostgreSQL)."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A writing session: one transaction, committed at the end, rolled back on any error."""
        with Session(self._write_engine, expire_on_commit=False) as s, s.begin():
            yield s
