"""``skerry.workload.bulk``: rows written straight to SQLite, or copied into a real
PostgreSQL server, read back as SQLAlchemy's own."""

from datetime import datetime, timedelta, UTC

import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from skerry.workload import bulk
from skerry.workload.builtins import BUILTINS
from skerry.workload.bulk import Bulk
from skerry.workload.catalog import Catalog
from skerry.workload.models import Job, JobAttempt

def jobs(url, n):
    cat = Catalog(url)
    cat.upgrade()
    module = cat.add_module("noop", "1", BUILTINS["noop"].model_dump(mode="json"))
    return cat, cat.create_jobs(cat.create_task(step="noop", module_id=module), [[] for _ in range(n)])


def test_bulk_rows_read_back_as_rows_written_by_sqlalchemy(catalog_url):
    cat, ids = jobs(catalog_url, 4)
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    rows = [{"job_id": j, "number": n, "pool": "cpu", "started": stamp + timedelta(seconds=j)}
            for j in ids for n in (1, 2)]
    with cat.writing() as s:
        Bulk(insert(JobAttempt), datetimes=("started",)).run(s.connection(), [dict(r) for r in rows[::2]])
        s.connection().execute(insert(JobAttempt), [dict(r) for r in rows[1::2]])
        ended = Bulk(update(JobAttempt).where(JobAttempt.job_id == bindparam("b_job"))
                     .values(ended=bindparam("b_ended"), worker=bindparam("b_worker")), datetimes=("b_ended",))
        ended.run(s.connection(), [{"b_job": ids[0], "b_ended": stamp, "b_worker": "w0"},
                                   {"b_job": ids[1], "b_ended": None, "b_worker": "w1"}])
    with cat.session() as s:
        got = s.execute(select(JobAttempt.job_id, JobAttempt.number, JobAttempt.started, JobAttempt.ended,
                               JobAttempt.worker).order_by(JobAttempt.job_id, JobAttempt.number)).all()
        text = s.connection().exec_driver_sql("SELECT started FROM job_attempts ORDER BY job_id, number").all()
    assert [(r.job_id, r.number) for r in got] == [(r["job_id"], r["number"]) for r in rows]
    assert [r.started.replace(tzinfo=UTC) for r in got] == [r["started"] for r in rows]
    assert text[0] == text[1]  # the same text in the file, whoever wrote it
    assert [(r.ended and r.ended.replace(tzinfo=UTC), r.worker) for r in got[:4]] == [
        (stamp, "w0"), (stamp, "w0"), (None, "w1"), (None, "w1")]


def test_a_statement_needing_a_value_the_rows_lack_goes_through_sqlalchemy(catalog_url):
    cat, ids = jobs(catalog_url, 2)
    with cat.writing() as s:  # no "started": the column's Python default fills it
        Bulk(insert(JobAttempt), datetimes=("started",)).run(s.connection(), [
            {"job_id": j, "number": 1, "pool": "cpu"} for j in ids])
    with cat.session() as s:
        started = s.execute(select(JobAttempt.started)).scalars().all()
    assert len(started) == 2 and all(isinstance(t, datetime) for t in started)


@pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)
def test_a_refused_copy_is_sqlalchemys_integrity_error_and_leaves_no_row(catalog_url):
    cat, ids = jobs(catalog_url, 1)
    rows = [{"job_id": ids[0], "number": 1, "pool": "cpu", "started": datetime.now(UTC)}] * 2  # one attempt twice
    with pytest.raises(IntegrityError, match="job_attempts"):
        with cat.writing() as s:
            Bulk(insert(JobAttempt), datetimes=("started",)).run(s.connection(), rows)
    with cat.session() as s:
        assert s.execute(select(JobAttempt.id)).all() == []


@pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)
def test_postgresql_analyzes_a_table_once_it_copied_analyze_rows_into_it_then_at_each_doubling(catalog_url,
                                                                                               monkeypatch):
    """Its planner's statistics must not describe the table empty after a bulk load."""
    monkeypatch.setattr(bulk, "ANALYZE_ROWS", 100)
    cat, ids = jobs(catalog_url, 500)
    attempts = Bulk(insert(JobAttempt), datetimes=("started",))
    stamp = datetime.now(UTC)

    def analyzed():
        with cat.session() as s:
            return s.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'job_attempts'")).scalar_one()

    seen = []
    for start in range(0, 500, 50):
        with cat.writing() as s:
            attempts.run(s.connection(), [{"job_id": j, "number": 1, "pool": "cpu", "started": stamp}
                                          for j in ids[start:start + 50]])
        seen.append(analyzed())
    # never analyzed (-1) before 100 rows; then at 100, 200 and 400 rows copied
    assert seen == [-1, 100, 100, 200, 200, 200, 200, 400, 400, 400]


def test_a_filter_on_an_unindexed_column_leaves_a_lookup_by_id_on_the_primary_key(tmp_path):
    """SQLite without statistics takes ``state = 'queued'`` through its index, over every
    queued job, rather than the 500 ids by primary key; ``unindexed`` leaves it no choice."""
    cat, ids = jobs(f"sqlite:///{tmp_path / 'catalog.sqlite'}", 600)

    def plan(state):
        query = select(Job.id).where(Job.id.in_(ids[:500]), state == "queued")
        sql = str(query.compile(dialect=cat.engine.dialect, compile_kwargs={"literal_binds": True}))
        with cat.session() as s:
            return " ".join(row[-1] for row in s.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))

    assert "ix_jobs_state_pool" in plan(Job.state)
    assert "PRIMARY KEY" in plan(bulk.unindexed(Job.state)) and "ix_jobs" not in plan(bulk.unindexed(Job.state))
