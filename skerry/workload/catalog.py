"""The catalog: datasets and their files, and the records the scheduler keeps in it.

``Catalog(url)`` opens a database (``sqlite:///path`` or ``postgresql+psycopg://...``;
``Catalog.for_data_dir(dir)`` is the default SQLite file of a platform) and
``upgrade()`` brings its schema to the newest Alembic revision. Then::

    cat.create_dataset("raw.run1", owner="alice", location="skerry://home/raw/run1")
    cat.get_dataset("raw.run1", owner="alice")          # names are per owner (see Rules)
    cat.register_files("raw.run1", [{"uri": "skerry://home/raw/run1/a", "size": 10,
                                     "checksum": "<md5 hex>"}, ...])
    cat.list_files("raw.run1", after=0, limit=1000)     # a page, ``next_after`` for the next
    cat.close_dataset("raw.run1")
    cat.check("raw.run1", fs)                           # catalog against storage
    cat.register_outputs_and_succeed(job_id, outputs)   # a job's outputs, exactly once

For the scheduler: ``add_module``/``get_module``, ``add_workflow``/``get_workflow``,
``create_run``, ``create_task``, ``create_jobs`` (bulk, inputs checked against the task's
input dataset), ``start_attempt``/``end_attempt``, ``job``; ``session()``/``writing()``
for its own queries (indexes: ``ix_jobs_task_state_id`` for the next queued jobs of a
task and jobs by task and state, ``ix_jobs_state_pool``).

Rules:
- every change is one transaction: bad input raises a ``CatalogError`` (a
  ``SkerryError``) with a sentence naming what is wrong, and leaves no row behind;
  a batch of files with one duplicate or bad entry registers none of them;
- a dataset's name is unique among its owner's datasets: two users may each hold one
  called ``raw``. Every call that names a dataset takes ``owner=``; without it the name
  must be one dataset's only (else ``AmbiguousDataset``, naming no owner), which is what
  single-user callers and admins who know the name rely on;
- datasets go ``OPEN -> CLOSED -> TO_UPLOAD``, any of those ``-> TO_DELETE -> DELETED``
  (``DATASET_MOVES``, read off the state machine of ``states``); files are registered only into an ``OPEN`` dataset;
- URIs are ``skerry://<adaptor>/<path>`` without empty, ``.`` or ``..`` segments;
  checksums are MD5, 32 hex digits;
- on SQLite (WAL, foreign keys on, a busy timeout), writing transactions start with
  ``BEGIN IMMEDIATE``, so two writers queue instead of failing on a lock upgrade; on
  PostgreSQL the job row is locked (``SELECT ... FOR UPDATE``);
- the consistency check reports every problem, but acts on one (missing file ->
  ``MISSING``, size/checksum mismatch -> ``CORRUPT``, dark file -> removed from storage
  only when the caller asks with ``remove_dark=True``: it is somebody's data) only once the
  same problem was seen in ``threshold`` checks in a row: an upload in flight or a storage
  hiccup is reported, never acted on.

Errors::

    SkerryError
     └── BadRequest (400)
          └── CatalogError          bad input for the catalog (``code`` names the case)
               ├── BadMetadata, BadFileEntry (a URI, size or checksum; a duplicate),
               │   UnknownModule (a spec names a module the catalog does not have)
               ├── also NotFound (404): UnknownDataset, UnknownJob
               └── also Conflict (409): DatasetExists, AmbiguousDataset, DatasetStateError,
                                        JobStateError, ModuleExists

    (``skerry.errors`` draws the kinds; each error's ``status`` is its kind's.)
"""

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator

from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import Session

from ..errors import BadRequest, ConfigError, Conflict, NotFound
from .bulk import Bulk
from .models import (DATASET_STATES, FINAL_JOB_STATES, JOB_STATES, Dataset, File, FileProblem, Job, JobAttempt,
                     JobInput, Module, Run, Task, Workflow, now)
from .states import DATASET_MOVES

__all__ = [
    "Catalog", "DatasetInfo", "FileInfo", "FilePage", "ConsistencyReport", "Mismatch",
    "CatalogError", "DatasetExists", "UnknownDataset", "DatasetStateError", "BadMetadata", "BadFileEntry",
    "UnknownJob", "JobStateError", "ModuleExists", "UnknownModule", "DATASET_MOVES",
]

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_S = 60
BATCH = 10_000  # rows per INSERT executemany in bulk registration
PAGE_MAX = 10_000
CHECK_THRESHOLD = 2  # checks in a row that must see a problem before it is acted on
HASH_BLOCK = 8 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}")
_URI = re.compile(r"skerry://[A-Za-z0-9][A-Za-z0-9._-]*/[^\x00-\x1f\x7f]+")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_FILE_FIELDS = {"uri", "size", "checksum"}


# ---- errors ---------------------------------------------------------------


_JOB_INPUTS = Bulk(insert(JobInput))


def insert_jobs(s: Session, task_id: int, inputs: list[list[int]], *, state: str, pool: str,
                resources: dict) -> list[int]:
    """Insert one job per item of ``inputs`` (file ids, checked by the caller) with their
    input links, in a few statements, and count them in the task; their ids."""
    stamp = now()
    conn = s.connection()  # Core, not the ORM's bulk path: a few times faster per row
    rows = [{"task_id": task_id, "state": state, "pool": pool, "resources": resources, "attempts": 0,
             "created": stamp, "updated": stamp} for _ in inputs]
    ids = list(conn.execute(insert(Job).returning(Job.id, sort_by_parameter_order=True), rows).scalars())
    links = [{"job_id": job_id, "position": i, "file_id": f}
             for job_id, files in zip(ids, inputs) for i, f in enumerate(files)]
    for start in range(0, len(links), BATCH):
        _JOB_INPUTS.run(conn, links[start:start + BATCH])
    conn.execute(update(Task).where(Task.id == task_id).values(jobs_total=Task.jobs_total + len(ids)))
    return ids


class CatalogError(BadRequest):
    code = "bad_catalog_request"


class DatasetExists(Conflict, CatalogError):
    code = "dataset_exists"


class UnknownDataset(NotFound, CatalogError):
    code = "unknown_dataset"


class AmbiguousDataset(Conflict, CatalogError):
    code = "ambiguous_dataset"


class DatasetStateError(Conflict, CatalogError):
    code = "dataset_state"


class BadMetadata(CatalogError):
    code = "bad_metadata"


class BadFileEntry(CatalogError):
    code = "bad_file"


class UnknownJob(NotFound, CatalogError):
    code = "unknown_job"


class JobStateError(Conflict, CatalogError):
    code = "job_state"


class ModuleExists(Conflict, CatalogError):
    code = "module_exists"


class UnknownModule(CatalogError):
    code = "unknown_module"


# ---- what the API returns (plain values, no open session behind them) -------


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    state: str
    owner: str
    location: str | None
    metadata: dict
    created: datetime
    files: int = 0  # files registered (any state)
    size: int = 0  # their total size in bytes


@dataclass(frozen=True)
class FileInfo:
    id: int
    uri: str
    size: int
    checksum: str | None
    state: str
    job_id: int | None = None


@dataclass(frozen=True)
class FilePage:
    files: list[FileInfo]
    next_after: int | None  # pass as ``after`` for the next page; None: this was the last


@dataclass(frozen=True)
class Mismatch:
    uri: str
    what: str  # "size" or "checksum"
    catalog: Any
    storage: Any


@dataclass
class ConsistencyReport:
    """What one check found; ``actions`` lists what it changed (past the threshold)."""

    dataset: str
    checked: int = 0  # catalog files compared with storage
    missing: list[str] = field(default_factory=list)
    dark: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # uri -> checks in a row, below the threshold
    actions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.dark or self.mismatched)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t  # SQLite keeps no time zone


def _dataset_info(d: Dataset, files: int = 0, size: int = 0) -> DatasetInfo:
    return DatasetInfo(d.id, d.name, d.state, d.owner, d.location, dict(d.meta or {}), _utc(d.created), files, size)


def _file_info(f) -> FileInfo:
    return FileInfo(f.id, f.uri, f.size, f.checksum, f.state, f.job_id)


# ---- input checks -----------------------------------------------------------


def check_uri(uri: Any, where: str) -> str:
    """``uri`` if it is a well-formed ``skerry://adaptor/path``, else ``BadFileEntry``."""
    if not isinstance(uri, str) or not _URI.fullmatch(uri):
        raise BadFileEntry(f"{where}: {uri!r} is not a skerry://<adaptor>/<path> URI")
    for part in uri[len("skerry://"):].split("/"):
        if part in ("", ".", ".."):
            raise BadFileEntry(f"{where}: {uri!r} has an empty, '.' or '..' segment")
    return uri


def _file_row(i: int, entry: Any) -> dict:
    where = f"file {i}"
    if not isinstance(entry, dict):
        raise BadFileEntry(f"{where}: expected an object with uri, size and checksum, got {type(entry).__name__}")
    unknown = set(entry) - _FILE_FIELDS
    if unknown:
        raise BadFileEntry(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                           f"(allowed: uri, size, checksum)")
    uri = check_uri(entry.get("uri"), where)
    size = entry.get("size")
    if type(size) is not int or size < 0:  # bool is an int: refused too
        raise BadFileEntry(f"{where} ({uri}): size must be a whole number of bytes >= 0, got {size!r}")
    checksum = entry.get("checksum")
    if checksum is not None:
        if not isinstance(checksum, str) or not _MD5.fullmatch(checksum):
            raise BadFileEntry(f"{where} ({uri}): checksum must be an MD5 of 32 hex digits, got {checksum!r}")
        checksum = checksum.lower()
    return {"uri": uri, "size": size, "checksum": checksum}


def _metadata(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise BadMetadata(f"metadata is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadMetadata(f"metadata must be a JSON object, got {type(value).__name__}")
    try:
        # round trip: what is stored is exactly what is read back
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise BadMetadata(f"metadata must be plain JSON (objects, lists, strings, numbers): {e}") from None


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CatalogError(f"{what} name {name!r} is not valid: use 1-255 letters, digits and . _ - @ +, "
                           f"starting with a letter or digit")
    return name


# ---- engines ---------------------------------------------------------------


def _make_engine(url: str) -> Engine:
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


# ---- the catalog --------------------------------------------------------------


class Catalog:
    """The catalog database: datasets, files, modules, workflows, runs, tasks and jobs.

    Thread-safe: every method opens its own transaction. ``session()`` and ``writing()``
    give the scheduler a session of its own for what this API does not cover.
    """

    def __init__(self, url: str, *, check_threshold: int = CHECK_THRESHOLD):
        self.url = url
        self.engine = _make_engine(url)
        self.dialect = self.engine.dialect.name
        # same pool; marks transactions that write (BEGIN IMMEDIATE on SQLite)
        self._write_engine = self.engine.execution_options(skerry_write=True)
        if type(check_threshold) is not int or check_threshold < 1:
            raise ConfigError(f"check_threshold must be a whole number >= 1, got {check_threshold!r}")
        self.check_threshold = check_threshold

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, **kwargs) -> "Catalog":
        """The platform's default catalog: ``DIR/catalog.sqlite``."""
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
        with self._write_engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

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

    # ---- datasets ----

    @staticmethod
    def dataset_row(s: Session, name: str, owner: str | None = None, lock: bool = False) -> Dataset:
        """The dataset ``name`` of ``owner`` (None: the only one by that name)."""
        query = select(Dataset).where(Dataset.name == name)
        if owner is not None:
            query = query.where(Dataset.owner == owner)
        if lock:
            query = query.with_for_update()
        found = s.execute(query.limit(2)).scalars().all()
        if not found:
            raise UnknownDataset(f"no dataset named {name!r}")
        if len(found) > 1:
            raise AmbiguousDataset(f"several users hold a dataset named {name!r}: say whose (owner)")
        return found[0]

    def create_dataset(self, name: str, *, owner: str = "", metadata: Any = None,
                       location: str | None = None) -> DatasetInfo:
        """A new ``OPEN`` dataset; ``location`` (``skerry://...`` folder) is where its files live."""
        _check_name(name, "dataset")
        meta = _metadata(metadata)
        if not isinstance(owner, str):
            raise CatalogError(f"owner must be a user name, got {owner!r}")
        if location is not None:
            location = check_uri(location.rstrip("/") if isinstance(location, str) else location, "location")
        try:
            with self.writing() as s:
                if s.execute(select(Dataset.id).where(Dataset.name == name, Dataset.owner == owner)).first():
                    raise DatasetExists(f"a dataset named {name!r} already exists")
                dataset = Dataset(name=name, owner=owner, meta=meta, location=location, state="OPEN")
                s.add(dataset)
                s.flush()
                return _dataset_info(dataset)
        except IntegrityError:  # created by someone else between our check and our insert
            raise DatasetExists(f"a dataset named {name!r} already exists") from None

    def get_dataset(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        with self.session() as s:
            dataset = self.dataset_row(s, name, owner)
            files, size = s.execute(select(func.count(File.id), func.coalesce(func.sum(File.size), 0))
                                    .where(File.dataset_id == dataset.id)).one()
            return _dataset_info(dataset, files, int(size))

    def list_datasets(self, *, owner: str | None = None, state: str | None = None) -> list[DatasetInfo]:
        query = select(Dataset).order_by(Dataset.id)
        if owner is not None:
            query = query.where(Dataset.owner == owner)
        if state is not None:
            if state not in DATASET_STATES:
                raise CatalogError(f"unknown dataset state {state!r} (states: {', '.join(DATASET_STATES)})")
            query = query.where(Dataset.state == state)
        with self.session() as s:
            return [_dataset_info(d) for d in s.execute(query).scalars()]

    def _move(self, name: str, to: str, only_from: str | None = None, owner: str | None = None) -> DatasetInfo:
        with self.writing() as s:
            dataset = self.dataset_row(s, name, owner, lock=True)
            if to not in DATASET_MOVES[dataset.state] or only_from not in (None, dataset.state):
                raise DatasetStateError(f"dataset {name!r} is {dataset.state} and cannot become {to}"
                                        + (f" (only from {only_from})" if only_from else ""))
            dataset.state = to
            s.flush()
            return _dataset_info(dataset)

    def close_dataset(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """``OPEN -> CLOSED``: complete; no more files are registered into it."""
        return self._move(name, "CLOSED", only_from="OPEN", owner=owner)

    def mark_for_upload(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """``CLOSED -> TO_UPLOAD``: to be copied to external storage."""
        return self._move(name, "TO_UPLOAD", owner=owner)

    def mark_uploaded(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """``TO_UPLOAD -> CLOSED``: the upload is done."""
        return self._move(name, "CLOSED", only_from="TO_UPLOAD", owner=owner)

    def delete_dataset(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """Mark for deletion (``TO_DELETE``); ``purge_dataset`` removes the files."""
        return self._move(name, "TO_DELETE", owner=owner)

    def purge_dataset(self, name: str, fs, *, owner: str | None = None) -> DatasetInfo:
        """Remove a ``TO_DELETE`` dataset's files from storage (``fs``), then mark it ``DELETED``.

        Files already gone count as removed; the rows stay, in state ``DELETED``.
        """
        with self.session() as s:
            dataset = self.dataset_row(s, name, owner)
            if dataset.state != "TO_DELETE":
                raise DatasetStateError(f"dataset {name!r} is {dataset.state}: delete it first (TO_DELETE)")
            uris = s.execute(select(File.uri).where(File.dataset_id == dataset.id,
                                                    File.state != "DELETED")).scalars().all()
        for uri in uris:
            try:
                fs.rm_file(_path(uri))
            except FileNotFoundError:
                pass
        with self.writing() as s:
            dataset = self.dataset_row(s, name, owner, lock=True)
            s.execute(update(File).where(File.dataset_id == dataset.id).values(state="DELETED"))
            dataset.state = "DELETED"
            s.flush()
            return _dataset_info(dataset)

    # ---- files ----

    def register_files(self, name: str, files: Iterable[dict], *, owner: str | None = None) -> int:
        """Register ``files`` (``{"uri", "size", "checksum"}``) in an ``OPEN`` dataset: all or none.

        Returns how many were registered. A bad entry, a URI listed twice or a URI the
        dataset already has refuses the whole list (``BadFileEntry`` naming it).
        """
        rows, seen = [], {}
        for i, entry in enumerate(files):
            row = _file_row(i, entry)
            first = seen.setdefault(row["uri"], i)
            if first != i:
                raise BadFileEntry(f"file {i}: {row['uri']} is listed twice (also file {first})")
            rows.append(row)
        try:
            with self.writing() as s:
                dataset = self.dataset_row(s, name, owner, lock=True)
                if dataset.state != "OPEN":
                    raise DatasetStateError(f"dataset {name!r} is {dataset.state}: files are registered only "
                                            f"into an OPEN dataset")
                self._insert_files(s, dataset.id, rows)
        except IntegrityError:
            raise BadFileEntry(self._duplicate_sentence(name, owner, rows)) from None
        return len(rows)

    @staticmethod
    def _insert_files(s: Session, dataset_id: int, rows: list[dict], job_id: int | None = None) -> None:
        stamp = now()
        extra = {"dataset_id": dataset_id, "state": "AVAILABLE", "created": stamp, "job_id": job_id}
        for start in range(0, len(rows), BATCH):
            s.execute(insert(File), [{**row, **extra} for row in rows[start:start + BATCH]])

    def _duplicate_sentence(self, name: str, owner: str | None, rows: list[dict]) -> str:
        """Which of ``rows`` the dataset already has (after the refused insert was rolled back)."""
        with self.session() as s:
            dataset = self.dataset_row(s, name, owner)
            index = {row["uri"]: i for i, row in enumerate(rows)}
            uris = list(index)
            for start in range(0, len(uris), 500):
                found = s.execute(select(File.uri).where(File.dataset_id == dataset.id,
                                                         File.uri.in_(uris[start:start + 500]))).scalars().first()
                if found:
                    return (f"file {index[found]}: dataset {name!r} already has {found}; "
                            f"none of the {len(rows)} files were registered")
        return f"dataset {name!r} refused the files (a concurrent change); none were registered"

    def list_files(self, name: str, *, after: int = 0, limit: int = 1000, state: str | None = None,
                   owner: str | None = None) -> FilePage:
        """A page of a dataset's files in registration order: those with ``id > after``."""
        if type(limit) is not int or not 1 <= limit <= PAGE_MAX:
            raise CatalogError(f"limit must be between 1 and {PAGE_MAX}, got {limit!r}")
        if type(after) is not int or after < 0:
            raise CatalogError(f"after must be a file id >= 0, got {after!r}")
        with self.session() as s:
            dataset = self.dataset_row(s, name, owner)
            query = (select(File.id, File.uri, File.size, File.checksum, File.state, File.job_id)
                     .where(File.dataset_id == dataset.id, File.id > after).order_by(File.id).limit(limit + 1))
            if state is not None:
                query = query.where(File.state == state)
            rows = s.execute(query).all()
        files = [_file_info(r) for r in rows[:limit]]
        return FilePage(files, files[-1].id if len(rows) > limit else None)

    def iter_files(self, name: str, *, state: str | None = None, page: int = PAGE_MAX,
                   owner: str | None = None) -> Iterator[FileInfo]:
        """Every file of a dataset, page by page."""
        after = 0
        while after is not None:
            result = self.list_files(name, after=after, limit=page, state=state, owner=owner)
            yield from result.files
            after = result.next_after

    # ---- consistency ----

    def check(self, name: str, fs, *, threshold: int | None = None, checksums: bool = True,
              remove_dark: bool = False, owner: str | None = None) -> ConsistencyReport:
        """Compare a dataset's catalog with storage (``fs``: an fsspec filesystem of ``skerry://`` paths).

        Missing: registered but not in storage. Dark: in the dataset's ``location`` but not
        registered. Mismatch: sizes differ, or (``checksums``) the MD5 of the content differs
        from the registered one. Each problem is acted on once seen in ``threshold`` checks
        in a row (default: the catalog's ``check_threshold``); dark files are removed from
        storage then only with ``remove_dark`` (by default they are reported, never deleted).
        """
        threshold = self.check_threshold if threshold is None else threshold
        if type(threshold) is not int or threshold < 1:
            raise CatalogError(f"threshold must be a whole number >= 1, got {threshold!r}")
        with self.session() as s:
            dataset = self.dataset_row(s, name, owner)
            dataset_id, location = dataset.id, dataset.location
            catalog = {r.uri: r for r in s.execute(
                select(File.id, File.uri, File.size, File.checksum, File.state)
                .where(File.dataset_id == dataset_id, File.state != "DELETED"))}
        report = ConsistencyReport(name, checked=len(catalog))
        listing = {}
        if location:
            try:
                found = fs.find(_path(location), detail=True)
            except FileNotFoundError:
                found = {}
            listing = {"skerry://" + p.strip("/"): info for p, info in found.items() if info.get("type") == "file"}
        problems, back = {}, []
        for uri, row in catalog.items():
            info = listing.get(uri)
            if info is None and not _under(uri, location):
                try:
                    info = fs.info(_path(uri))
                except FileNotFoundError:
                    info = None
            if info is None or info.get("type") == "directory":
                report.missing.append(uri)
                problems[uri] = "missing"
                continue
            size = info.get("size")
            if size != row.size:
                report.mismatched.append(Mismatch(uri, "size", row.size, size))
                problems[uri] = "mismatch"
            elif checksums and row.checksum and (digest := _md5(fs, uri)) != row.checksum:
                report.mismatched.append(Mismatch(uri, "checksum", row.checksum, digest))
                problems[uri] = "mismatch"
            elif row.state != "AVAILABLE":
                back.append(uri)  # found again, and right: available again
        for uri in listing.keys() - catalog.keys():
            report.dark.append(uri)
            problems[uri] = "dark"
        report.missing.sort()
        report.dark.sort()
        due = self._record_problems(dataset_id, problems, threshold, report)
        if not remove_dark:
            due = {uri: problem for uri, problem in due.items() if problem != "dark"}
        self._act(name, dataset_id, due, back, fs, report)
        return report

    def _record_problems(self, dataset_id: int, problems: dict[str, str], threshold: int,
                         report: ConsistencyReport) -> dict[str, str]:
        """Count each problem's checks in a row; the ones due for action (seen >= threshold)."""
        due = {}
        with self.writing() as s:
            rows = s.execute(select(FileProblem).where(FileProblem.dataset_id == dataset_id)).scalars()
            known = {p.uri: p for p in rows}
            for uri, p in known.items():
                if problems.get(uri) != p.problem:
                    s.delete(p)  # gone, or a different problem now: the count starts again
            s.flush()
            for uri, problem in problems.items():
                p = known.get(uri)
                if p is not None and p.problem == problem:
                    p.seen += 1
                else:
                    p = FileProblem(dataset_id=dataset_id, uri=uri, problem=problem, seen=1)
                    s.add(p)
                if p.seen >= threshold:
                    due[uri] = problem
                else:
                    report.pending[uri] = p.seen
        return due

    def _act(self, name: str, dataset_id: int, due: dict[str, str], back: list[str], fs,
             report: ConsistencyReport) -> None:
        removed = []
        for uri in sorted(u for u, p in due.items() if p == "dark"):
            try:
                fs.rm_file(_path(uri))
            except FileNotFoundError:
                pass
            except OSError as e:  # a read-only adaptor, a permission: reported, tried again next check
                report.actions.append(f"could not remove dark file {uri}: {e.strerror or e}")
                continue
            removed.append(uri)
            report.actions.append(f"removed dark file {uri} from storage")
        with self.writing() as s:
            for uri, problem in sorted(due.items()):
                if problem == "dark":
                    continue
                state = "MISSING" if problem == "missing" else "CORRUPT"
                changed = s.execute(update(File).where(File.dataset_id == dataset_id, File.uri == uri,
                                                       File.state != state).values(state=state)).rowcount
                if changed:
                    report.actions.append(f"marked {uri} {state}")
            for uri in back:
                s.execute(update(File).where(File.dataset_id == dataset_id, File.uri == uri).values(state="AVAILABLE"))
                report.actions.append(f"marked {uri} AVAILABLE (found again)")
            if removed:
                s.execute(delete(FileProblem).where(FileProblem.dataset_id == dataset_id,
                                                    FileProblem.uri.in_(removed)))

    # ---- modules, workflows, runs, tasks, jobs (records; their specs are checked elsewhere) ----

    def add_module(self, name: str, version: str, spec: dict) -> int:
        """Store a module's spec (validated by ``skerry.workload.modules``); its id."""
        _check_name(name, "module")
        if not isinstance(version, str) or not version or len(version) > 64:
            raise CatalogError(f"module {name!r}: version must be a non-empty string, got {version!r}")
        spec = _metadata(spec)
        try:
            with self.writing() as s:
                if s.execute(select(Module.id).where(Module.name == name, Module.version == version)).first():
                    raise ModuleExists(f"module {name} {version} already exists")
                module = Module(name=name, version=version, spec=spec)
                s.add(module)
                s.flush()
                return module.id
        except IntegrityError:
            raise ModuleExists(f"module {name} {version} already exists") from None

    def get_module(self, name: str, version: str | None = None) -> Module:
        """A module at ``version`` (default: the one added last), detached from any session."""
        query = select(Module).where(Module.name == name).order_by(Module.id.desc())
        if version is not None:
            query = query.where(Module.version == version)
        with self.session() as s:
            module = s.execute(query).scalars().first()
        if module is None:
            raise UnknownModule(f"no module named {name!r}" + (f" at version {version!r}" if version else ""))
        return module

    def add_workflow(self, name: str, spec: dict, *, owner: str = "") -> int:
        """Store a workflow's spec (checked by ``skerry.workload.workflows``) for ``owner``; its id."""
        _check_name(name, "workflow")
        spec = _metadata(spec)
        try:
            with self.writing() as s:
                if s.execute(select(Workflow.id).where(Workflow.name == name)).first():
                    raise CatalogError(f"a workflow named {name!r} already exists")
                workflow = Workflow(name=name, owner=owner, spec=spec)
                s.add(workflow)
                s.flush()
                return workflow.id
        except IntegrityError:
            raise CatalogError(f"a workflow named {name!r} already exists") from None

    def get_workflow(self, name: str) -> Workflow:
        """A workflow by name, detached from any session."""
        with self.session() as s:
            workflow = s.execute(select(Workflow).where(Workflow.name == name)).scalar_one_or_none()
        if workflow is None:
            raise CatalogError(f"no workflow named {name!r}")
        return workflow

    def create_run(self, workflow: str, *, input_dataset: str | None = None, params: dict | None = None,
                   owner: str = "") -> int:
        """A run (state ``running``) of a workflow over ``input_dataset``; its id."""
        params = _metadata(params)
        with self.writing() as s:
            found = s.execute(select(Workflow.id).where(Workflow.name == workflow)).scalar_one_or_none()
            if found is None:
                raise CatalogError(f"no workflow named {workflow!r}")
            run = Run(workflow_id=found, params=params, owner=owner, state="running",
                      input_dataset_id=self.dataset_row(s, input_dataset).id if input_dataset else None)
            s.add(run)
            s.flush()
            return run.id

    def create_task(self, *, step: str, module_id: int, input_dataset: str | None = None,
                    output_dataset: str | None = None, run_id: int | None = None, rank: float = 1.0,
                    params: dict | None = None) -> int:
        """A task (state ``defined``) of one step over ``input_dataset``; its id."""
        if not isinstance(step, str) or not step or len(step) > 255:
            raise CatalogError(f"a task's step must be a name of 1-255 characters, got {step!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not 0 < rank < float("inf"):
            raise CatalogError(f"a task's rank must be a number > 0, got {rank!r}")
        params = _metadata(params)
        with self.writing() as s:
            if s.get(Module, module_id) is None:
                raise UnknownModule(f"no module with id {module_id}")
            if run_id is not None and s.get(Run, run_id) is None:
                raise CatalogError(f"no run with id {run_id}")
            task = Task(step=step, module_id=module_id, run_id=run_id, rank=float(rank),
                        params=params, state="defined",
                        input_dataset_id=self.dataset_row(s, input_dataset).id if input_dataset else None,
                        output_dataset_id=self.dataset_row(s, output_dataset).id if output_dataset else None)
            s.add(task)
            s.flush()
            return task.id

    def create_jobs(self, task_id: int, inputs: Iterable[Iterable[int]], *, state: str = "queued",
                    pool: str = "cpu", resources: dict | None = None) -> list[int]:
        """One job per item of ``inputs`` (the file ids of that job, in order); their ids."""
        if state not in JOB_STATES:
            raise JobStateError(f"unknown job state {state!r} (states: {', '.join(JOB_STATES)})")
        if not isinstance(pool, str) or not pool or len(pool) > 64:
            raise CatalogError(f"a job's pool must be a name of 1-64 characters, got {pool!r}")
        inputs = [list(ids) for ids in inputs]
        for i, ids in enumerate(inputs):
            if not all(type(f) is int for f in ids):
                raise CatalogError(f"job {i}: input files must be file ids (whole numbers), got {ids!r}")
        resources = _metadata(resources)
        with self.writing() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise CatalogError(f"no task with id {task_id}")
            if not inputs:
                return []
            self._check_inputs(s, task, inputs)
            return insert_jobs(s, task_id, inputs, state=state, pool=pool, resources=resources)

    @staticmethod
    def _check_inputs(s: Session, task: Task, inputs: list[list[int]]) -> None:
        """Every input file id is a file of the task's input dataset."""
        wanted = sorted({f for ids in inputs for f in ids})
        if wanted and task.input_dataset_id is None:
            raise CatalogError(f"task {task.id} ({task.step}) has no input dataset for its jobs' input files")
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            found = set(s.execute(select(File.id).where(File.dataset_id == task.input_dataset_id,
                                                        File.id.in_(chunk))).scalars())
            if len(found) < len(chunk):
                missing = next(f for f in chunk if f not in found)
                raise CatalogError(f"file id {missing} is not a file of task {task.id}'s input dataset")

    def start_attempt(self, job_id: int, *, worker: str, pool: str | None = None, log: str | None = None) -> int:
        """Record a new attempt of a job on ``worker`` and mark the job ``running``; its number.

        The scheduler checks the transition (``skerry.workload.states``) before calling this.
        """
        with self.writing() as s:
            job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
            if job is None:
                raise UnknownJob(f"no job with id {job_id}")
            if job.state in FINAL_JOB_STATES:
                raise JobStateError(f"job {job_id} is {job.state}: a final state never changes")
            job.attempts += 1
            job.state = "running"
            s.add(JobAttempt(job_id=job_id, number=job.attempts, worker=worker, pool=pool or job.pool, log=log))
            return job.attempts

    def end_attempt(self, job_id: int, *, exit_code: int | None, error_class: str | None = None,
                    error: str | None = None, log: str | None = None) -> None:
        """Record how a job's latest attempt ended (the job's state is the scheduler's to set)."""
        with self.writing() as s:
            job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
            if job is None:
                raise UnknownJob(f"no job with id {job_id}")
            values = {"ended": now(), "exit_code": exit_code, "error_class": error_class, "error": error}
            if log is not None:
                values["log"] = log
            changed = s.execute(update(JobAttempt).where(JobAttempt.job_id == job_id,
                                                         JobAttempt.number == job.attempts,
                                                         JobAttempt.ended.is_(None)).values(**values)).rowcount
            if not changed:
                raise JobStateError(f"job {job_id} has no attempt in progress")
            if error_class is not None:
                job.error_class = error_class

    def job(self, job_id: int) -> Job:
        """A job with its inputs and attempts loaded, detached from any session."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise UnknownJob(f"no job with id {job_id}")
            job.inputs, job.attempt_rows  # noqa: B018 (loads them before the session ends)
            return job

    def register_outputs_and_succeed(self, job_id: int, outputs: Iterable[dict]) -> bool:
        """Register a job's output files in its task's output dataset and mark it ``succeeded``.

        One transaction: either the files are registered and the job succeeded, or
        nothing changed. Called again for a job already ``succeeded`` (a retried result,
        a recovered scheduler, two racing callers), it changes nothing and returns False;
        True when this call did it. A job in another final state is refused (``JobStateError``).
        """
        rows, seen = [], set()
        for i, entry in enumerate(outputs):
            row = _file_row(i, entry)
            if row["uri"] in seen:
                raise BadFileEntry(f"output {i}: {row['uri']} is listed twice")
            seen.add(row["uri"])
            rows.append(row)
        try:
            with self.writing() as s:
                job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
                if job is None:
                    raise UnknownJob(f"no job with id {job_id}")
                if job.state == "succeeded":
                    return False
                if job.state in FINAL_JOB_STATES:
                    raise JobStateError(f"job {job_id} is {job.state}: a final state never changes")
                task = s.get(Task, job.task_id)
                if rows:
                    if task.output_dataset_id is None:
                        raise CatalogError(f"job {job_id}: task {task.id} ({task.step}) has no output dataset "
                                           f"for its {len(rows)} output file(s)")
                    dataset = s.get(Dataset, task.output_dataset_id)
                    if dataset.state != "OPEN":
                        raise DatasetStateError(f"job {job_id}: output dataset {dataset.name!r} is {dataset.state}, "
                                                f"not OPEN")
                    self._insert_files(s, dataset.id, rows, job_id=job_id)
                stamp = now()
                job.state, job.error_class, job.updated = "succeeded", None, stamp
                s.execute(update(Task).where(Task.id == task.id).values(jobs_succeeded=Task.jobs_succeeded + 1))
                s.execute(update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == job.attempts,
                                                   JobAttempt.ended.is_(None)).values(ended=stamp, exit_code=0))
                return True
        except IntegrityError:
            with self.session() as s:
                task = s.get(Task, s.get(Job, job_id).task_id)
                out = s.get(Dataset, task.output_dataset_id)
            raise BadFileEntry(f"job {job_id}: " + self._duplicate_sentence(out.name, out.owner, rows)) from None


def _path(uri: str) -> str:
    """The federation path of a ``skerry://`` URI (what ``SkerryFileSystem`` takes)."""
    return uri[len("skerry://"):] if uri.startswith("skerry://") else uri


def _under(uri: str, location: str | None) -> bool:
    return bool(location) and uri.startswith(location + "/")


def _md5(fs, uri: str) -> str:
    digest = hashlib.md5()
    with fs.open(_path(uri), "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
