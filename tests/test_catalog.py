"""The catalog on real databases: a SQLite file and a real PostgreSQL server (tests/postgres.py).

Every test runs on both, from an empty database migrated by ``Catalog.upgrade()``.
"""

import hashlib
import sqlite3
import threading

import pytest
from fsspec.implementations.local import LocalFileSystem
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.registry import LocalRootFileSystem
from skerry.errors import ConfigError, SkerryError
from skerry.workload.catalog import (AmbiguousDataset, BadFileEntry, BadMetadata, Catalog, CatalogError,
                                     DatasetExists, DatasetStateError, JobStateError, UnknownDataset, UnknownJob)
from skerry.workload.models import Base, File, Job, Task

@pytest.fixture
def catalog(catalog_url):
    cat = Catalog(catalog_url)
    cat.upgrade()
    yield cat
    cat.dispose()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def files(n, prefix="skerry://home/raw/f", start=0):
    return [{"uri": f"{prefix}{i}", "size": i, "checksum": md5(str(i).encode())} for i in range(start, start + n)]


def count_files(cat) -> int:
    with cat.session() as s:
        return len(s.execute(select(File.id)).all())


# ---- schema ----


def test_migrations_upgrade_an_empty_database_to_the_models(catalog_url):
    cat = Catalog(catalog_url)
    try:
        assert cat.revision() is None
        cat.upgrade()
        assert cat.revision() == "0004"
        cat.upgrade()  # already there: nothing to do
        assert cat.revision() == "0004"
        tables = set(inspect(cat.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        with cat.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        indexes = {i["name"]: i["column_names"] for i in inspect(cat.engine).get_indexes("jobs")}
        assert indexes["ix_jobs_task_state_id"] == ["task_id", "state", "id"]
    finally:
        cat.dispose()


# one row in each table, as revision 0001 wrote them: each refers to the rows before it
FIRST_ROWS = (
    "INSERT INTO datasets (id, name, owner, state, metadata, created, updated) "
    "VALUES (1, 'raw', 'alice', 'OPEN', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO modules (id, name, version, spec, created) VALUES (1, 'noop', '1', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO workflows (id, name, spec, created) VALUES (1, 'w', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO runs (id, workflow_id, input_dataset_id, state, params, owner, created, updated) "
    "VALUES (1, 1, 1, 'running', '{}', 'alice', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO tasks (id, run_id, step, module_id, input_dataset_id, state, rank, params, jobs_total, "
    "jobs_succeeded, jobs_failed, created, updated) "
    "VALUES (1, 1, 'noop', 1, 1, 'running', 1.0, '{}', 1, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO jobs (id, task_id, state, attempts, pool, resources, created, updated) "
    "VALUES (1, 1, 'running', 1, 'cpu', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO files (id, dataset_id, uri, size, state, job_id, created) "
    "VALUES (1, 1, 'skerry://home/raw/a', 1, 'AVAILABLE', 1, CURRENT_TIMESTAMP)",
    "INSERT INTO job_inputs (job_id, position, file_id) VALUES (1, 0, 1)",
    "INSERT INTO job_attempts (id, job_id, number, started) VALUES (1, 1, 1, CURRENT_TIMESTAMP)",
    "INSERT INTO file_problems (id, dataset_id, uri, problem, seen, first_seen) "
    "VALUES (1, 1, 'skerry://home/raw/b', 'dark', 1, CURRENT_TIMESTAMP)",
)
ALL_TABLES = ("datasets", "modules", "workflows", "runs", "tasks", "jobs", "files", "job_inputs", "job_attempts",
              "file_problems")


def test_an_upgrade_keeps_every_row_of_the_tables_it_copies_and_their_checks(catalog_url):
    # SQLite alters a table by copying it: with foreign keys on, dropping the old copy deleted
    # every row that refers to it (0002 copied ``datasets``: the files went with it)
    cat = Catalog(catalog_url)
    try:
        cat.upgrade("0001")
        with cat.writing() as s:
            for row in FIRST_ROWS:
                s.execute(text(row))
        cat.upgrade()
        with cat.session() as s:
            assert {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ALL_TABLES} \
                == dict.fromkeys(ALL_TABLES, 1)
            assert s.execute(text("SELECT job_id FROM files")).scalar_one() == 1
        for table, bad in (("jobs", "UPDATE jobs SET state = 'running '"), ("tasks", "UPDATE tasks SET state = 'x'"),
                           ("files", "UPDATE files SET state = 'available'"), ("runs", "UPDATE runs SET state = ''"),
                           ("datasets", "UPDATE datasets SET state = 'open'"),
                           ("file_problems", "UPDATE file_problems SET problem = 'gone'")):
            with pytest.raises(IntegrityError, match=f"ck_{table}_"), cat.writing() as s:
                s.execute(text(bad))
        with cat.writing() as s:  # every allowed value passes
            s.execute(text("UPDATE jobs SET state = 'lost'"))
            s.execute(text("UPDATE files SET state = 'DELETED'"))
        if cat.dialect == "sqlite":  # the pooled connections keep their foreign keys
            with cat.session() as s:
                assert s.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        cat.dispose()


def test_the_owners_migration_keeps_rows_and_makes_names_per_owner(catalog_url):
    cat = Catalog(catalog_url)
    try:
        cat.upgrade("0001")
        with cat.writing() as s:  # rows as revision 0001 wrote them (the models are newer)
            s.execute(text("INSERT INTO datasets (name, owner, state, metadata, created, updated) "
                           "VALUES ('raw', 'alice', 'OPEN', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            s.execute(text("INSERT INTO workflows (name, spec, created) VALUES ('old', '{}', CURRENT_TIMESTAMP)"))
        cat.upgrade()
        assert cat.revision() == "0004"
        assert cat.get_dataset("raw").owner == "alice"
        assert cat.get_workflow("old").owner == ""  # no owner known: it starts runs over ownerless datasets only
        cat.create_dataset("raw", owner="bob")  # the name is alice's, in her namespace only
        with pytest.raises(DatasetExists):
            cat.create_dataset("raw", owner="alice")
    finally:
        cat.dispose()


def test_sqlite_is_a_wal_file_with_foreign_keys_and_a_busy_timeout(tmp_path):
    cat = Catalog.for_data_dir(tmp_path / "data")
    cat.upgrade()
    assert (tmp_path / "data" / "catalog.sqlite").is_file()
    with cat.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    cat.dispose()
    # another program sees the same WAL database
    with sqlite3.connect(tmp_path / "data" / "catalog.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_platforms_catalog_is_at_skerry_catalog_url_where_it_is_set(catalog_url, tmp_path, monkeypatch):
    """On Kubernetes the chart sets SKERRY_CATALOG_URL (PostgreSQL, from a Secret); the data
    dir then holds no catalog of its own."""
    monkeypatch.setenv("SKERRY_CATALOG_URL", catalog_url)
    cat = Catalog.for_data_dir(tmp_path / "data")
    try:
        cat.upgrade()
        cat.create_dataset("where", owner="alice")
        other = Catalog(catalog_url)  # another process's view of the same database
        with other.session() as s:
            assert s.execute(text("SELECT name FROM datasets WHERE name = 'where'")).scalar() == "where"
        other.dispose()
        assert not (tmp_path / "data" / "catalog.sqlite").exists()
    finally:
        cat.dispose()


@pytest.mark.parametrize("url", ["mysql://x@localhost/db", "sqlite://", "sqlite:///:memory:", "not a url"])
def test_unsupported_urls_are_refused_with_a_sentence(url):
    with pytest.raises(ConfigError, match="catalog|SQLite"):
        Catalog(url)


# ---- datasets ----


def test_dataset_lifecycle(catalog):
    d = catalog.create_dataset("raw.run1", owner="alice", metadata={"detector": "spd", "run": 1},
                               location="skerry://home/raw/run1/")
    assert (d.name, d.state, d.owner, d.metadata) == ("raw.run1", "OPEN", "alice", {"detector": "spd", "run": 1})
    assert d.location == "skerry://home/raw/run1"
    catalog.create_dataset("other", owner="bob", metadata='{"from": "json text"}')
    assert catalog.get_dataset("other").metadata == {"from": "json text"}
    assert [x.name for x in catalog.list_datasets()] == ["raw.run1", "other"]
    assert [x.name for x in catalog.list_datasets(owner="bob")] == ["other"]

    assert catalog.close_dataset("raw.run1").state == "CLOSED"
    assert [x.name for x in catalog.list_datasets(state="CLOSED")] == ["raw.run1"]
    with pytest.raises(DatasetStateError, match="'raw.run1' is CLOSED and cannot become CLOSED"):
        catalog.close_dataset("raw.run1")
    assert catalog.mark_for_upload("raw.run1").state == "TO_UPLOAD"
    with pytest.raises(DatasetStateError, match=r"is TO_UPLOAD and cannot become CLOSED \(only from OPEN\)"):
        catalog.close_dataset("raw.run1")
    assert catalog.mark_uploaded("raw.run1").state == "CLOSED"
    with pytest.raises(DatasetStateError, match=r"is CLOSED and cannot become CLOSED \(only from TO_UPLOAD\)"):
        catalog.mark_uploaded("raw.run1")
    assert catalog.mark_for_upload("raw.run1").state == "TO_UPLOAD"
    assert catalog.delete_dataset("raw.run1").state == "TO_DELETE"
    with pytest.raises(DatasetStateError, match="cannot become TO_UPLOAD"):
        catalog.mark_for_upload("raw.run1")
    with pytest.raises(DatasetStateError, match="delete it first"):
        catalog.purge_dataset("other", LocalFileSystem())
    with pytest.raises(CatalogError, match="unknown dataset state"):
        catalog.list_datasets(state="GONE")


def test_purge_removes_the_files_from_storage_and_marks_everything_deleted(catalog, tmp_path):
    fs = SkerryFileSystem({"home": LocalRootFileSystem(str(tmp_path), LocalFileSystem())})
    (tmp_path / "ds").mkdir()
    for name in ("a", "b"):
        (tmp_path / "ds" / name).write_bytes(b"x")
    catalog.create_dataset("ds", location="skerry://home/ds")
    catalog.register_files("ds", [{"uri": "skerry://home/ds/a", "size": 1}, {"uri": "skerry://home/ds/b", "size": 1},
                                  {"uri": "skerry://home/ds/gone", "size": 1}])
    catalog.delete_dataset("ds")
    assert catalog.purge_dataset("ds", fs).state == "DELETED"
    assert list((tmp_path / "ds").iterdir()) == []
    assert {f.state for f in catalog.iter_files("ds")} == {"DELETED"}


def test_dataset_names_are_per_owner(catalog):
    alice = catalog.create_dataset("raw", owner="alice", location="skerry://home/a")
    bob = catalog.create_dataset("raw", owner="bob", location="skerry://home/b")
    assert alice.id != bob.id
    with pytest.raises(DatasetExists, match="a dataset named 'raw' already exists"):
        catalog.create_dataset("raw", owner="bob")
    catalog.register_files("raw", files(2, prefix="skerry://home/a/f"), owner="alice")
    catalog.register_files("raw", files(1, prefix="skerry://home/b/f"), owner="bob")
    assert [f.uri for f in catalog.iter_files("raw", owner="bob")] == ["skerry://home/b/f0"]
    assert catalog.get_dataset("raw", owner="alice").files == 2
    catalog.close_dataset("raw", owner="bob")
    assert catalog.get_dataset("raw", owner="alice").state == "OPEN"
    with pytest.raises(UnknownDataset, match="no dataset named 'raw'"):
        catalog.get_dataset("raw", owner="carol")
    # without an owner the name must be one dataset's: the refusal names nobody
    with pytest.raises(AmbiguousDataset, match="several users hold a dataset named 'raw'") as refused:
        catalog.get_dataset("raw")
    assert "alice" not in refused.value.message and "bob" not in refused.value.message
    with pytest.raises(AmbiguousDataset):
        catalog.register_files("raw", files(1, prefix="skerry://home/a/g"))
    assert catalog.get_dataset("raw", owner="alice").files == 2


def test_bad_dataset_input_is_refused_with_a_sentence_and_no_row(catalog):
    catalog.create_dataset("ds")
    with pytest.raises(DatasetExists, match="a dataset named 'ds' already exists"):
        catalog.create_dataset("ds")
    with pytest.raises(UnknownDataset, match="no dataset named 'nope'"):
        catalog.get_dataset("nope")
    for op in (catalog.close_dataset, catalog.delete_dataset, lambda n: catalog.register_files(n, files(1)),
               lambda n: catalog.list_files(n)):
        with pytest.raises(UnknownDataset, match="'nope'"):
            op("nope")
    bad_metadata = ['{"a": ', "[1, 2]", 42, {"x": float("nan")}, {"x": object()}, '"text"']
    for i, meta in enumerate(bad_metadata):
        with pytest.raises(BadMetadata, match="metadata"):
            catalog.create_dataset(f"m{i}", metadata=meta)
    for name in ("", "a/b", "../x", " lead", "x" * 300, None):
        with pytest.raises(CatalogError, match="dataset name"):
            catalog.create_dataset(name)
    with pytest.raises(BadFileEntry, match="location"):
        catalog.create_dataset("loc", location="/not/a/uri")
    assert [d.name for d in catalog.list_datasets()] == ["ds"]
    assert catalog.get_dataset("ds").owner == ""  # the refused duplicate changed nothing


# ---- files ----


def test_register_files_and_list_them_page_by_page(catalog):
    catalog.create_dataset("raw")
    batch = files(2500)
    batch[7]["checksum"] = batch[7]["checksum"].upper()
    assert catalog.register_files("raw", batch) == 2500
    info = catalog.get_dataset("raw")
    assert (info.files, info.size) == (2500, sum(range(2500)))

    pages, after = [], 0
    while after is not None:
        page = catalog.list_files("raw", after=after, limit=1000)
        pages.append(page.files)
        after = page.next_after
    assert [len(p) for p in pages] == [1000, 1000, 500]
    listed = [f for p in pages for f in p]
    assert [f.uri for f in listed] == [f["uri"] for f in batch]
    assert listed[7].checksum == md5(b"7")  # stored lower case
    assert {f.state for f in listed} == {"AVAILABLE"}
    assert [f.uri for f in catalog.iter_files("raw", page=300)] == [f["uri"] for f in batch]
    assert catalog.list_files("raw", after=listed[-1].id).files == []
    with pytest.raises(CatalogError, match="limit"):
        catalog.list_files("raw", limit=0)
    # the same URI may be in another dataset
    catalog.create_dataset("copy")
    assert catalog.register_files("copy", batch[:3]) == 3


BAD_ENTRIES = [
    ({"uri": "skerry://home/raw/f3", "size": 1}, r"file 5: skerry://home/raw/f3 is listed twice \(also file 3\)"),
    ({"uri": "/etc/passwd", "size": 1}, "file 5: '/etc/passwd' is not a skerry://"),
    ({"uri": "skerry://home/raw/../x", "size": 1}, r"file 5: .* '\.\.' segment"),
    ({"uri": "skerry://home//x", "size": 1}, "file 5: .*empty"),
    ({"uri": "skerry://home", "size": 1}, "file 5: 'skerry://home' is not"),
    ({"uri": "skerry://home/a\nb", "size": 1}, "file 5: .* is not a skerry://"),
    ({"uri": "skerry://home/x", "size": -1}, r"file 5 \(skerry://home/x\): size must be"),
    ({"uri": "skerry://home/x", "size": True}, "size must be"),
    ({"uri": "skerry://home/x", "size": "12"}, "size must be"),
    ({"uri": "skerry://home/x"}, "size must be"),
    ({"uri": "skerry://home/x", "size": 1, "checksum": "abc"}, "checksum must be an MD5"),
    ({"uri": "skerry://home/x", "size": 1, "owner": "me"}, r"file 5: unknown field\(s\) owner"),
    ("skerry://home/x", "file 5: expected an object"),
]


@pytest.mark.parametrize("bad, message", BAD_ENTRIES)
def test_one_bad_entry_refuses_the_whole_batch(catalog, bad, message):
    catalog.create_dataset("raw")
    batch = files(5) + [bad] + files(3, start=100)
    with pytest.raises(BadFileEntry, match=message):
        catalog.register_files("raw", batch)
    assert count_files(catalog) == 0


def test_a_uri_the_dataset_already_has_refuses_the_whole_batch(catalog):
    catalog.create_dataset("raw")
    catalog.register_files("raw", files(10))
    batch = files(25_000, start=10) + [files(1, start=4)[0]] + files(10, start=30_000)
    with pytest.raises(BadFileEntry, match=r"file 25000: dataset 'raw' already has skerry://home/raw/f4; "
                                           r"none of the 25011 files were registered"):
        catalog.register_files("raw", batch)
    assert count_files(catalog) == 10


def test_files_go_only_into_an_open_dataset(catalog):
    catalog.create_dataset("raw")
    catalog.close_dataset("raw")
    with pytest.raises(DatasetStateError, match="'raw' is CLOSED: files are registered only into an OPEN dataset"):
        catalog.register_files("raw", files(2))
    assert count_files(catalog) == 0


# ---- jobs: outputs registered exactly once ----


def make_jobs(catalog, n=1):
    catalog.create_dataset("in")
    catalog.register_files("in", files(n, prefix="skerry://home/in/f"))
    catalog.create_dataset("out")
    module = catalog.add_module("md5", "1.0", {"run": {"callable": "skerry.workload.builtins:md5"}})
    task = catalog.create_task(step="checksum", module_id=module, input_dataset="in", output_dataset="out", rank=2)
    ids = [f.id for f in catalog.iter_files("in")]
    return task, catalog.create_jobs(task, [[i] for i in ids])


def outputs(job_id):
    return [{"uri": f"skerry://home/out/{job_id}.md5", "size": 32, "checksum": md5(b"%d" % job_id)},
            {"uri": f"skerry://home/out/{job_id}.log", "size": 5}]


def test_outputs_are_registered_with_the_job_success_and_only_once(catalog):
    task, (job_id,) = make_jobs(catalog)
    assert catalog.start_attempt(job_id, worker="tcp://127.0.0.1:1") == 1
    assert catalog.register_outputs_and_succeed(job_id, outputs(job_id)) is True
    registered = catalog.list_files("out").files
    assert [(f.uri, f.job_id) for f in registered] == [(o["uri"], job_id) for o in outputs(job_id)]
    job = catalog.job(job_id)
    assert job.state == "succeeded" and job.attempts == 1
    assert [i.file_id for i in job.inputs] == [catalog.list_files("in").files[0].id]
    (attempt,) = job.attempt_rows
    assert attempt.exit_code == 0 and attempt.ended is not None and attempt.worker == "tcp://127.0.0.1:1"
    with catalog.session() as s:
        assert (s.get(Task, task).jobs_succeeded, s.get(Task, task).jobs_total) == (1, 1)

    # again (a late duplicate result, a recovered scheduler): nothing changes
    assert catalog.register_outputs_and_succeed(job_id, outputs(job_id)) is False
    assert catalog.register_outputs_and_succeed(job_id, [{"uri": "skerry://home/out/other", "size": 1}]) is False
    assert catalog.list_files("out").files == registered
    with catalog.session() as s:
        assert s.get(Task, task).jobs_succeeded == 1
    with pytest.raises(JobStateError, match="succeeded: a final state never changes"):
        catalog.start_attempt(job_id, worker="w")


def test_refused_outputs_leave_the_job_running_and_no_file(catalog):
    task, (job_id, other, failed) = make_jobs(catalog, 3)
    catalog.start_attempt(job_id, worker="w")
    catalog.register_files("out", [{"uri": "skerry://home/out/taken", "size": 1}])
    with pytest.raises(BadFileEntry, match="already has skerry://home/out/taken"):
        catalog.register_outputs_and_succeed(job_id, outputs(job_id) + [{"uri": "skerry://home/out/taken", "size": 1}])
    with pytest.raises(BadFileEntry, match="output 1: .* is listed twice"):
        catalog.register_outputs_and_succeed(job_id, outputs(job_id)[:1] * 2)
    with pytest.raises(BadFileEntry, match="not a skerry://"):
        catalog.register_outputs_and_succeed(job_id, [{"uri": "out/x", "size": 1}])
    assert catalog.job(job_id).state == "running"
    assert count_files(catalog) == 3 + 1
    with pytest.raises(UnknownJob, match="no job with id 999999"):
        catalog.register_outputs_and_succeed(999999, [])
    with catalog.writing() as s:
        s.get(Job, failed).state = "failed"
    with pytest.raises(JobStateError, match="failed: a final state never changes"):
        catalog.register_outputs_and_succeed(failed, outputs(failed))
    catalog.close_dataset("out")
    with pytest.raises(DatasetStateError, match="output dataset 'out' is CLOSED"):
        catalog.register_outputs_and_succeed(other, outputs(other))
    assert catalog.job(other).state == "queued"
    assert count_files(catalog) == 3 + 1


def test_two_threads_racing_for_the_same_job_register_its_outputs_once(catalog):
    n = 20
    task, jobs = make_jobs(catalog, n)
    for job_id in jobs:
        catalog.start_attempt(job_id, worker="w")
    results = {job_id: [] for job_id in jobs}
    errors = []
    barrier = threading.Barrier(2)

    def report(job_id):
        try:
            barrier.wait(timeout=30)
            results[job_id].append(catalog.register_outputs_and_succeed(job_id, outputs(job_id)))
        except Exception as e:  # noqa: BLE001 (collected and asserted below)
            errors.append(e)

    for job_id in jobs:
        threads = [threading.Thread(target=report, args=(job_id,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert all(sorted(r) == [False, True] for r in results.values())
    out = list(catalog.iter_files("out"))
    assert len(out) == 2 * n and len({f.uri for f in out}) == 2 * n
    with catalog.session() as s:
        assert s.get(Task, task).jobs_succeeded == n
        assert {j.state for j in s.execute(select(Job)).scalars()} == {"succeeded"}


# ---- consistency against storage ----


@pytest.fixture
def storage(tmp_path):
    root = tmp_path / "storage"
    (root / "ds").mkdir(parents=True)
    return root, SkerryFileSystem({"home": LocalRootFileSystem(str(root), LocalFileSystem())})


def test_consistency_check_reports_and_acts_past_the_threshold(catalog, storage):
    root, fs = storage
    content = {name: f"content of {name}".encode() for name in ("good", "missing", "resized", "rewritten")}
    for name, data in content.items():
        (root / "ds" / name).write_bytes(data)
    catalog.create_dataset("ds", location="skerry://home/ds")
    catalog.register_files("ds", [{"uri": f"skerry://home/ds/{n}", "size": len(d), "checksum": md5(d)}
                                  for n, d in content.items()])
    assert catalog.check("ds", fs).ok
    (root / "ds" / "missing").unlink()
    (root / "ds" / "resized").write_bytes(b"longer than it was when registered")
    (root / "ds" / "rewritten").write_bytes(b"CONTENT OF rewritten")  # same size, other bytes
    (root / "ds" / "sub").mkdir()
    (root / "ds" / "sub" / "dark").write_bytes(b"nobody registered me")

    first = catalog.check("ds", fs, threshold=2)
    assert not first.ok and first.checked == 4
    assert first.missing == ["skerry://home/ds/missing"]
    assert first.dark == ["skerry://home/ds/sub/dark"]
    assert {(m.uri, m.what) for m in first.mismatched} == {("skerry://home/ds/resized", "size"),
                                                            ("skerry://home/ds/rewritten", "checksum")}
    rewritten = next(m for m in first.mismatched if m.what == "checksum")
    assert (rewritten.catalog, rewritten.storage) == (md5(content["rewritten"]), md5(b"CONTENT OF rewritten"))
    assert first.actions == [] and set(first.pending.values()) == {1} and len(first.pending) == 4
    assert {f.state for f in catalog.iter_files("ds")} == {"AVAILABLE"}
    assert (root / "ds" / "sub" / "dark").exists()

    second = catalog.check("ds", fs, threshold=2, remove_dark=True)
    assert second.missing == first.missing and second.dark == first.dark and second.pending == {}
    assert sorted(second.actions) == sorted([
        "removed dark file skerry://home/ds/sub/dark from storage", "marked skerry://home/ds/missing MISSING",
        "marked skerry://home/ds/resized CORRUPT", "marked skerry://home/ds/rewritten CORRUPT"])
    assert not (root / "ds" / "sub" / "dark").exists()
    states = {f.uri.rsplit("/", 1)[1]: f.state for f in catalog.iter_files("ds")}
    assert states == {"good": "AVAILABLE", "missing": "MISSING", "resized": "CORRUPT", "rewritten": "CORRUPT"}

    # the missing file comes back: available again; the problems still there are not acted on twice
    (root / "ds" / "missing").write_bytes(content["missing"])
    third = catalog.check("ds", fs, threshold=2)
    assert third.missing == [] and third.dark == []
    assert third.actions == ["marked skerry://home/ds/missing AVAILABLE (found again)"]
    assert catalog.list_files("ds", state="MISSING").files == []


def test_a_problem_that_goes_away_starts_counting_again(catalog, storage):
    root, fs = storage
    catalog.create_dataset("ds", location="skerry://home/ds")
    (root / "ds" / "upload-in-flight").write_bytes(b"x")
    assert catalog.check("ds", fs, threshold=2).pending == {"skerry://home/ds/upload-in-flight": 1}
    catalog.register_files("ds", [{"uri": "skerry://home/ds/upload-in-flight", "size": 1}])  # registered in time
    report = catalog.check("ds", fs, threshold=2)
    assert report.ok and report.actions == [] and (root / "ds" / "upload-in-flight").exists()
    # a threshold of 1 acts at once; files outside the location are looked up one by one
    (root / "elsewhere").write_bytes(b"abc")
    catalog.register_files("ds", [{"uri": "skerry://home/elsewhere", "size": 3, "checksum": md5(b"abc")},
                                  {"uri": "skerry://home/lost", "size": 3}])
    report = catalog.check("ds", fs, threshold=1)
    assert report.missing == ["skerry://home/lost"] and report.actions == ["marked skerry://home/lost MISSING"]
    with pytest.raises(CatalogError, match="threshold"):
        catalog.check("ds", fs, threshold=0)


def test_errors_are_skerry_errors_with_a_code(catalog):
    with pytest.raises(SkerryError) as e:
        catalog.get_dataset("nope")
    assert e.value.code == "unknown_dataset" and str(e.value) == "no dataset named 'nope'"


# ---- modules, workflows, runs, tasks, jobs: the records the scheduler builds on ----


def test_modules_workflows_runs_tasks_and_jobs(catalog):
    from skerry.workload.catalog import ModuleExists, UnknownModule

    first = catalog.add_module("md5", "1.0", {"pins": {"in": "single"}})
    second = catalog.add_module("md5", "1.1", {"pins": {"in": "multiple"}})
    assert catalog.get_module("md5").id == second
    assert catalog.get_module("md5", "1.0").spec == {"pins": {"in": "single"}}
    with pytest.raises(ModuleExists, match="module md5 1.0 already exists"):
        catalog.add_module("md5", "1.0", {})
    with pytest.raises(UnknownModule, match="no module named 'nope'"):
        catalog.get_module("nope")
    with pytest.raises(BadMetadata, match="metadata is not valid JSON"):
        catalog.add_module("bad", "1", "{not json")
    catalog.add_workflow("checksums", {"steps": {"a": {"module": "md5"}}})
    assert catalog.get_workflow("checksums").spec == {"steps": {"a": {"module": "md5"}}}
    with pytest.raises(CatalogError, match="a workflow named 'checksums' already exists"):
        catalog.add_workflow("checksums", {})

    catalog.create_dataset("in")
    catalog.register_files("in", files(4, prefix="skerry://home/in/f"))
    catalog.create_dataset("elsewhere")
    catalog.register_files("elsewhere", files(1, prefix="skerry://home/x/f"))
    run = catalog.create_run("checksums", input_dataset="in", params={"p": 1}, owner="alice")
    with pytest.raises(CatalogError, match="no workflow named 'nope'"):
        catalog.create_run("nope")
    task = catalog.create_task(step="a", module_id=first, input_dataset="in", run_id=run, rank=4)
    for bad, message in [({"module_id": 999}, "no module with id 999"), ({"run_id": 999}, "no run with id 999"),
                         ({"rank": 0}, "rank must be a number > 0"), ({"step": ""}, "step must be a name"),
                         ({"input_dataset": "nope"}, "no dataset named 'nope'")]:
        with pytest.raises(CatalogError, match=message):
            catalog.create_task(**{"step": "a", "module_id": first, "input_dataset": "in", **bad})

    ids = [f.id for f in catalog.iter_files("in")]
    jobs = catalog.create_jobs(task, [ids[:2], ids[2:]], pool="gpu", resources={"GPU": 1})
    assert [[i.file_id for i in catalog.job(j).inputs] for j in jobs] == [ids[:2], ids[2:]]
    job = catalog.job(jobs[0])
    assert (job.state, job.pool, job.resources, job.attempts) == ("queued", "gpu", {"GPU": 1}, 0)
    foreign = catalog.list_files("elsewhere").files[0].id
    for inputs, kwargs, message in [([[foreign]], {}, f"file id {foreign} is not a file of task {task}'s input"),
                                    ([[ids[0]]], {"state": "done"}, "unknown job state 'done'"),
                                    ([["a"]], {}, "must be file ids"), ([[ids[0]]], {"pool": ""}, "pool must be")]:
        with pytest.raises(CatalogError, match=message):
            catalog.create_jobs(task, inputs, **kwargs)
    with catalog.session() as s:
        assert len(s.execute(select(Job)).all()) == 2
        assert s.get(Task, task).jobs_total == 2 and s.get(Task, task).run_id == run

    assert catalog.start_attempt(jobs[0], worker="tcp://w1", log="skerry://home/logs/1") == 1
    catalog.end_attempt(jobs[0], exit_code=1, error_class="WorkerLost", error="the worker died")
    with pytest.raises(JobStateError, match="no attempt in progress"):
        catalog.end_attempt(jobs[0], exit_code=1)
    assert catalog.start_attempt(jobs[0], worker="tcp://w2") == 2
    catalog.end_attempt(jobs[0], exit_code=137, error_class="Timeout", log="skerry://home/logs/2")
    assert catalog.start_attempt(jobs[0], worker="tcp://w3") == 3
    assert catalog.register_outputs_and_succeed(jobs[0], []) is True
    job = catalog.job(jobs[0])
    assert job.state == "succeeded" and job.error_class is None
    assert [(a.number, a.worker, a.pool, a.exit_code, a.error_class, a.log) for a in job.attempt_rows] == [
        (1, "tcp://w1", "gpu", 1, "WorkerLost", "skerry://home/logs/1"),
        (2, "tcp://w2", "gpu", 137, "Timeout", "skerry://home/logs/2"),
        (3, "tcp://w3", "gpu", 0, None, None)]
    assert all(a.ended is not None for a in job.attempt_rows)
    with pytest.raises(UnknownJob):
        catalog.start_attempt(999999, worker="w")


def test_the_next_queued_jobs_of_a_task_come_from_the_index(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cat.upgrade()
    with cat.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE task_id = 1 AND state = 'queued' ORDER BY id LIMIT 10"))
    cat.dispose()
    assert "USING COVERING INDEX ix_jobs_task_state_id" in plan and "TEMP B-TREE" not in plan


RACER = """
import json, sys
from skerry.workload.catalog import Catalog
url, jobs = sys.argv[1], json.loads(sys.argv[2])
cat = Catalog(url)
won = [j for j in jobs if cat.register_outputs_and_succeed(j, [
    {"uri": f"skerry://home/out/{j}.md5", "size": 32}, {"uri": f"skerry://home/out/{j}.log", "size": 5}])]
print(json.dumps(won))
"""


def test_two_processes_racing_over_the_same_jobs_register_each_output_once(catalog, catalog_url):
    import json
    import subprocess
    import sys

    n = 60
    task, jobs = make_jobs(catalog, n)
    for job_id in jobs:
        catalog.start_attempt(job_id, worker="w")
    racers = [subprocess.Popen([sys.executable, "-c", RACER, catalog_url, json.dumps(order)], stdout=subprocess.PIPE,
                               text=True)
              for order in (jobs, jobs[::-1])]
    won = [json.loads(p.communicate(timeout=120)[0]) for p in racers]
    assert all(p.returncode == 0 for p in racers)
    assert sorted(won[0] + won[1]) == sorted(jobs)  # each job succeeded by exactly one of them
    out = [f.uri for f in catalog.iter_files("out")]
    assert len(out) == len(set(out)) == 2 * n
    with catalog.session() as s:
        assert s.get(Task, task).jobs_succeeded == n


def test_dark_files_are_only_reported_unless_removal_is_asked_for(catalog, tmp_path):
    (tmp_path / "home" / "ds").mkdir(parents=True)
    (tmp_path / "home" / "ds" / "dark").write_bytes(b"somebody's data")
    fs = SkerryFileSystem({"home": LocalRootFileSystem(str(tmp_path / "home"), LocalFileSystem())})
    catalog.create_dataset("ds", location="skerry://home/ds")
    for _ in range(3):  # past any threshold: still only reported
        report = catalog.check("ds", fs, threshold=1)
        assert report.dark == ["skerry://home/ds/dark"] and report.actions == []
    assert (tmp_path / "home" / "ds" / "dark").exists()


def test_a_dark_file_on_a_read_only_adaptor_is_reported_not_removed(catalog, tmp_path):
    (tmp_path / "ro" / "ds").mkdir(parents=True)
    (tmp_path / "ro" / "ds" / "dark").write_bytes(b"x")
    fs = SkerryFileSystem({"archive": LocalRootFileSystem(str(tmp_path / "ro"), LocalFileSystem())},
                          read_only=["archive"])
    catalog.create_dataset("ds", location="skerry://archive/ds")
    report = catalog.check("ds", fs, threshold=1, remove_dark=True)
    assert report.dark == ["skerry://archive/ds/dark"]
    assert report.actions == ["could not remove dark file skerry://archive/ds/dark: adaptor 'archive' is read-only"]
    assert (tmp_path / "ro" / "ds" / "dark").exists()
