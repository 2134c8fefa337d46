"""One statement, many rows, fast: the catalog's per-job and per-file writes; many ids, few lists.

    ENDS = Bulk(update(JobAttempt).where(...).values(...), datetimes=("b_ended",))
    ENDS.run(conn, [{"b_job": 1, ...}, ...])     # in the caller's transaction
    for ids in chunks(job_ids): ...              # one IN (...) list each

SQLAlchemy's ``executemany`` spends about five times SQLite's own time per row on
building and converting parameters, and the scheduler writes several rows per job
(its attempt, its end, its outputs). On SQLite a ``Bulk`` statement is compiled once,
with named parameters, and its rows go to the DB-API's ``executemany`` as they are. On
PostgreSQL an insert's rows go in one ``COPY ... FROM STDIN`` (an ``INSERT`` per row
costs the server about ten times more than a row of ``COPY``).

The statements the scheduler runs on every step (and the service on every run request)
are built once, as module constants with ``bindparam``s, not per call: building a
``select(...).where(...)`` cost SQLAlchemy 0.25-0.33 ms, running it once built 0.04 ms
(SQLite, a lookup by key), and a one-job run went through about forty of them (in
process, from 44 to 24-30 ms).

Rules:
- SQLite: the driver's ``executemany``; PostgreSQL (psycopg): inserts by ``COPY``, other
  statements by ``conn.execute(statement, rows)``, as on any other database;
- PostgreSQL: once ``ANALYZE_ROWS`` rows went into a table of a database in bulk (by a
  ``Bulk`` insert not made with ``analyze=False``, or by whoever calls ``analyzed``), and
  again each time as many as all before, the table is ``ANALYZE``d in the same
  transaction: the server plans against its statistics, and those of a table filled in
  bulk still describe it empty until autovacuum comes (a minute later: a 100,000-job
  run's lookups of 500 jobs took 20 ms each by sequential scans, 0.6 ms by index after).
  Not SQLite: statistics taken in the middle of a run describe it ever after (a dataset's
  files looked like all the files there are, and a one-job run's lookups of its files
  read every file);
- ``unindexed(column)``: a filter on it never steers a lookup by primary key to the
  column's index. SQLite, without statistics, looked up ``id IN (500 ids) AND state =
  'queued'`` through the index on the state, reading every queued job for each 500
  (dispatching 100,000 jobs: 0.87 s of updates, 0.21 s by primary key);
- rows are dicts by bind name (column name for an insert), all with the same keys;
  values are passed as they are, except the keys named in ``datetimes``, which are
  turned into SQLite's text form by the catalog's own ``DateTime`` type (the same text
  SQLAlchemy writes), and those named in ``jsons``, turned into what the column's own
  type binds (each distinct object once: rows usually share one), on either database;
- a statement that needs a parameter the rows do not give (a column default computed
  in Python) runs through SQLAlchemy instead, so nothing is left unfilled;
- ``chunks`` cuts a list of ids into lists of at most ``CHUNK``, one ``IN (...)`` list
  each (far from any database's limit on parameters).
"""

from __future__ import annotations

from sqlalchemy import JSON, DateTime
from sqlalchemy.exc import DBAPIError

__all__ = ["Bulk", "CHUNK", "chunks", "analyzed", "unindexed"]

CHUNK = 500  # ids per IN (...) list
ANALYZE_ROWS = 10_000  # rows put into a table in bulk before its first ANALYZE (then doubling)
_added: dict[tuple, list[int]] = {}  # (database, table) -> [rows put in bulk by this process, next ANALYZE at]


def analyzed(conn, table: str, rows: int) -> None:
    """Count ``rows`` put into ``table`` in bulk; ``ANALYZE`` it at the thresholds on
    PostgreSQL (module docstring)."""
    if conn.dialect.name != "postgresql":
        return
    added = _added.setdefault((str(conn.engine.url), table), [0, ANALYZE_ROWS])
    added[0] += rows
    if added[0] >= added[1]:
        conn.exec_driver_sql(f'ANALYZE "{table}"')
        added[1] = 2 * added[0]


class Bulk:
    """A statement run with many rows (module docstring)."""

    def __init__(self, statement, *, datetimes: tuple[str, ...] = (), jsons: tuple[str, ...] = (),
                 analyze: bool = True):
        self.statement = statement
        self.analyze = analyze and statement.is_insert  # counted towards ``analyzed``
        self.datetimes = datetimes
        self.jsons = jsons
        self._compiled: dict[tuple, tuple[str | None, object]] = {}  # (dialect, keys) -> (sql, to text)

    def run(self, conn, rows: list[dict]) -> None:
        if not rows:
            return
        dialect = conn.dialect
        if dialect.name not in ("sqlite", "postgresql") or (dialect.name == "postgresql"
                                                            and not self.statement.is_insert):
            conn.execute(self.statement, rows)
            return
        keys = tuple(rows[0])
        sql, to_text = self._sql(dialect, keys)
        if sql is None:
            conn.execute(self.statement, rows)
            return
        if self.jsons:  # the column's own type: SQLite's JSON text, psycopg's Json (COPY writes it too)
            as_json = JSON().dialect_impl(dialect).bind_processor(dialect)
            converted = {}  # id of an object -> its form (rows usually share one)
            for row in rows:
                for key in self.jsons:
                    value = row[key]
                    done = converted.get(id(value))
                    if done is None:
                        done = converted[id(value)] = as_json(value)
                    row[key] = done
        if dialect.name == "postgresql":
            self._copy(conn, keys, rows)
            return
        if self.datetimes:
            seen = {}  # most rows share their stamps: each is turned into text once
            for row in rows:
                for key in self.datetimes:
                    value = row[key]
                    if value is not None:
                        text = seen.get(value)
                        if text is None:
                            text = seen[value] = to_text(value)
                        row[key] = text
        conn.exec_driver_sql(sql, rows)

    def _copy(self, conn, keys: tuple, rows: list[dict]) -> None:
        """The rows of an insert, by ``COPY`` in the caller's transaction (PostgreSQL)."""
        table = self.statement.table.name
        columns = ", ".join(f'"{key}"' for key in keys)
        cursor = conn.connection.driver_connection.cursor()
        sql = f'COPY "{table}" ({columns}) FROM STDIN'
        try:
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row([row[key] for key in keys])
        except conn.dialect.dbapi.Error as e:  # as SQLAlchemy raises it (IntegrityError for a duplicate...)
            raise DBAPIError.instance(sql, None, e, conn.dialect.dbapi.Error) from e
        if self.analyze:
            analyzed(conn, table, len(rows))

    def _sql(self, dialect, keys: tuple) -> tuple[str | None, object]:
        found = self._compiled.get((id(dialect), keys))
        if found is None:
            named = type(dialect)(paramstyle="named")
            compiled = self.statement.compile(dialect=named, column_keys=list(keys))
            to_text = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
            found = (compiled.string if set(compiled.binds) <= set(keys) else None, to_text)
            self._compiled[(id(dialect), keys)] = found
        return found


def chunks(ids: list, n: int = CHUNK):
    """``ids`` in consecutive lists of at most ``n``."""
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


def unindexed(column):
    """``column`` (a string column) as an expression no index serves (module docstring)."""
    return column + ""  # column || '': the same value on both databases
