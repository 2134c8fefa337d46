"""New jobs in bulk, made inside the database: a page of files becomes jobs in a few statements.

    made = plan_jobs(s, task_id, files, size=1, whole_only=False, ...)   # the planner
    ids = insert_jobs(s, task_id, [[f1], [f2, f3]], state="queued", ...)  # given inputs

The planner's jobs (``plan_jobs``) are staged in ``skerry_planned``, a temporary table of
the connection (made on its first use), one row per file numbered ``i`` in the order they
go into jobs, so that the file numbered ``i`` is in job ``(i - lo) // size + 1`` at
position ``(i - lo) % size``. On SQLite job ``g``'s id is ``first + g`` (``first``: the
largest id), so the jobs and their input links are written straight from the staged
rows; PostgreSQL's ids come from its sequence, staged in ``skerry_planned_ids`` (job
number ``g`` -> id) and joined. The jobs, their links and the task's ``jobs_total`` are
written with one ``INSERT ... SELECT`` each. When the planner's files are chosen by a
query (no name pattern to test in Python), no file passes through Python at all: a
25,000-file page is a handful of statements whatever its size (the planner alone, on
SQLite: 100,000 jobs in 0.36-0.51 s of CPU; 0.43-0.70 with the ids staged and joined
there too, 1.35 s with the rows built in Python and sent by ``executemany``). Given
inputs (``insert_jobs``) get their ids staged, and their links by one bulk insert.

Rules:
- ``files`` is a ``Select`` of file ids in the order they go into jobs (it may carry a
  ``LIMIT``), or a list of file ids; ``size`` files per job, ``None`` for one job of all;
  with ``whole_only`` a last job short of ``size`` files is not made (its files wait);
- ``insert_jobs``: a job may have no file;
- SQLite numbers the staged rows itself (a table's rowid, with no window function: that
  cost more than the jobs' insert), PostgreSQL by ``row_number()``;
- ids increase with ``g``: SQLite takes the ids after the largest (the writing
  transaction holds the file, and SQLite would choose the same), PostgreSQL reserves k
  values of the jobs' sequence and hands them out sorted;
- the task's ``jobs_total`` is raised first: on SQLite that write takes the file's write
  lock before the ids are chosen;
- the jobs and their links count towards ``bulk.analyzed`` (a table filled in bulk is
  ``ANALYZE``d as it grows);
- the caller checks that the files belong to the task's input dataset.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Column, Integer, MetaData, String, Table, bindparam, func, insert, literal,
                        select, update)
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

from ..bulk import Bulk, analyzed
from ..models import Job, JobInput, Task, now

__all__ = ["plan_jobs", "insert_jobs"]

_TEMP = MetaData()  # tables of a connection's own, created on first use (``_staging``)
_OWN = {"prefixes": ["TEMPORARY"], "postgresql_on_commit": "DELETE ROWS"}
PLANNED = Table("skerry_planned", _TEMP, Column("i", Integer, primary_key=True, autoincrement=False),
                Column("file_id", BigInteger), **_OWN)
PLANNED_IDS = Table("skerry_planned_ids", _TEMP, Column("g", Integer, primary_key=True), Column("id", BigInteger),
                    **_OWN)
_STAGE = Bulk(insert(PLANNED), analyze=False)  # a list of files: executemany on SQLite, COPY on PostgreSQL
_LINKS = Bulk(insert(JobInput))  # given inputs, with their jobs' ids
ONE_JOB = 2**31 - 1  # the ``size`` of "every file in one job"

# the statements of every page: built once, not per call (``bulk``)
_CREATE = {table: CreateTable(table, if_not_exists=True) for table in (PLANNED, PLANNED_IDS)}
_EMPTY = {table: table.delete() for table in (PLANNED, PLANNED_IDS)}
_STAGED = select(func.min(PLANNED.c.i), func.count(), func.max(PLANNED.c.file_id))
_SHORT = PLANNED.delete().where(PLANNED.c.i >= bindparam("end"))
_SIZE = bindparam("size", type_=Integer)
_NUMBER = (PLANNED.c.i - bindparam("lo", type_=Integer)).self_group()  # from 0, in the order of ``files``
_GROUP = _NUMBER.op("/")(_SIZE) + 1  # the job's number g
_PLANNED_LINKS = insert(JobInput).from_select(
    ["job_id", "position", "file_id"],
    select(PLANNED_IDS.c.id, _NUMBER % _SIZE, PLANNED.c.file_id)
    .join_from(PLANNED, PLANNED_IDS, PLANNED_IDS.c.g == _GROUP))
# SQLite: the ids are the largest one's successors, so job g's is first + g: no ids to stage or join
_FIRST = bindparam("first", type_=Integer)
_PLANNED_LINKS_SQLITE = insert(JobInput).from_select(
    ["job_id", "position", "file_id"], select(_FIRST + _GROUP, _NUMBER % _SIZE, PLANNED.c.file_id))
_TOTAL = update(Task).where(Task.id == bindparam("task")).values(jobs_total=Task.jobs_total + bindparam("k"))
_LARGEST = select(func.coalesce(func.max(Job.id), 0))
_K = bindparam("k", type_=Integer)
_numbers = select(literal(1).label("g")).cte("numbers", recursive=True)  # 1..k (a job may have no file)
_numbers = _numbers.union_all(select(_numbers.c.g + 1).where(_numbers.c.g < _K))
_IDS_SQLITE = insert(PLANNED_IDS).from_select(["g", "id"], select(_numbers.c.g, _numbers.c.g + _FIRST))
_reserved = (select(func.nextval(func.pg_get_serial_sequence("jobs", "id")).label("id"))
             .select_from(func.generate_series(1, _K)).subquery())
_IDS_POSTGRESQL = insert(PLANNED_IDS).from_select(
    ["g", "id"], select(func.row_number().over(order_by=_reserved.c.id), _reserved.c.id))
_STAMP = bindparam("stamp", type_=Job.__table__.c.created.type)
_JOB_ROW = (bindparam("task", type_=Integer), bindparam("state", type_=String), bindparam("pool", type_=String),
            bindparam("resources", type_=JSON), literal(0), _STAMP, _STAMP)
_JOB_COLUMNS = ["id", "task_id", "state", "pool", "resources", "attempts", "created", "updated"]
_NEW_JOBS = insert(Job).from_select(_JOB_COLUMNS, select(PLANNED_IDS.c.id, *_JOB_ROW).order_by(PLANNED_IDS.c.g))
_PLANNED_JOBS_SQLITE = insert(Job).from_select(  # one per group's first staged file
    _JOB_COLUMNS, select(_FIRST + _GROUP, *_JOB_ROW).where(_NUMBER % _SIZE == 0).order_by(PLANNED.c.i))


def plan_jobs(s: Session, task_id: int, files, *, size: int | None, whole_only: bool, state: str, pool: str,
              resources: dict, params: dict | None = None) -> tuple[int, int, int | None]:
    """Jobs of ``size`` files each from ``files`` (module docstring; ``params``: the values
    of its ``bindparam``s): (jobs made, files looked at, the largest file id looked at)."""
    conn = _staging(s, PLANNED, PLANNED_IDS)
    size = size or ONE_JOB
    if isinstance(files, list):
        _STAGE.run(conn, [{"i": i, "file_id": f} for i, f in enumerate(files, 1)])
    elif conn.dialect.name == "postgresql":
        chosen = files.subquery()
        conn.execute(insert(PLANNED).from_select(
            ["i", "file_id"], select(func.row_number().over(order_by=chosen.c.id), chosen.c.id)), params)
    else:  # the rows are numbered in the query's order
        conn.execute(insert(PLANNED).from_select(["file_id"], files), params)
    lo, seen, last = conn.execute(_STAGED).one()
    links = seen - seen % size if whole_only and size != ONE_JOB else seen  # a short last job waits
    if links == 0:
        return 0, seen, last
    if links < seen:
        conn.execute(_SHORT, {"end": lo + links})
    groups = -(-links // size)
    numbers = {"lo": lo, "size": size}
    row = {"task": task_id, "state": state, "pool": pool, "resources": resources, "stamp": now()}
    if conn.dialect.name == "postgresql":
        _jobs(conn, task_id, groups, **row)
        conn.execute(_PLANNED_LINKS, numbers)
    else:  # straight from the staged rows
        first = _count(conn, task_id, groups)
        conn.execute(_PLANNED_JOBS_SQLITE, {**numbers, **row, "first": first})
        conn.execute(_PLANNED_LINKS_SQLITE, {**numbers, "first": first})
        analyzed(conn, "jobs", groups)
    analyzed(conn, "job_inputs", links)
    return groups, seen, last


def insert_jobs(s: Session, task_id: int, inputs: list[list[int]], *, state: str, pool: str,
                resources: dict) -> list[int]:
    """One job per item of ``inputs`` (file ids) with their input links; their ids, in the
    order of ``inputs`` (increasing)."""
    conn = _staging(s, PLANNED_IDS)  # the files go straight to their links
    _jobs(conn, task_id, len(inputs), state=state, pool=pool, resources=resources, stamp=now())
    ids = list(conn.execute(select(PLANNED_IDS.c.id).order_by(PLANNED_IDS.c.g)).scalars())
    _LINKS.run(conn, [{"job_id": job, "position": i, "file_id": f}
                      for job, files in zip(ids, inputs, strict=True) for i, f in enumerate(files)])
    return ids


def _staging(s: Session, *tables: Table):
    """The session's connection, ``tables`` there and empty."""
    conn = s.connection()
    for table in tables:
        conn.execute(_CREATE[table])
        conn.execute(_EMPTY[table])
    return conn


def _count(conn, task_id: int, k: int) -> int | None:
    """Raise the task's ``jobs_total`` by ``k``; on SQLite, the largest job id (the new jobs'
    ids follow it: the write lock is taken by the update, before the ids are chosen)."""
    conn.execute(_TOTAL, {"task": task_id, "k": k})
    return conn.execute(_LARGEST).scalar_one() if conn.dialect.name == "sqlite" else None


def _jobs(conn, task_id: int, k: int, **row) -> None:
    """``k`` new jobs of the task, numbered 1..k in ``skerry_planned_ids`` with their ids, and the task's count."""
    if k == 0:
        return
    first = _count(conn, task_id, k)
    if first is None:
        conn.execute(_IDS_POSTGRESQL, {"k": k})
    else:
        conn.execute(_IDS_SQLITE, {"k": k, "first": first})
    conn.execute(_NEW_JOBS, {"task": task_id, **row})
    analyzed(conn, "jobs", k)
