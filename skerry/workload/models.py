"""The catalog's tables (SQLAlchemy 2 declarative models).

    datasets ─┬─ files                      a dataset's files, ``skerry://`` URIs
              └─ file_problems              what consistency checks keep finding
    modules, workflows                      specs as JSON (validated by their own modules)
    runs ── tasks ── jobs ─┬─ job_inputs    the input file(s) of a job, in order
                           └─ job_attempts  one row per execution of a job

Rules:
- states are plain strings, checked by the database against the names below
  (``DATASET_STATES``, ``FILE_STATES``, ``JOB_STATES``, ``TASK_STATES``); the job, task
  and dataset names and the final sets are ``skerry.workload.states``'s, which owns the
  transitions (re-exported here for the catalog's users);
- a file's URI is unique within its dataset; a module is unique by (name, version);
  a dataset's name is unique among its owner's datasets (names are per owner: another
  user may hold the same name), a workflow's name is unique; a workflow has an owner,
  whose datasets alone its mask starts runs over;
- a file produced by a job keeps that job's id (``files.job_id``): outputs are
  registered once, with the job's success (see ``Catalog.register_outputs_and_succeed``);
- the schema is created and changed only by the Alembic migrations in ``migrations/``
  (a test checks that they and these models agree).
"""

from datetime import datetime, UTC

from sqlalchemy import (JSON, BigInteger, CheckConstraint, DateTime, Float, ForeignKey, Index,
                        MetaData, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .states import DATASET_STATES, FINAL_STATES, JOB_STATES

FILE_STATES = ("AVAILABLE", "MISSING", "CORRUPT", "DELETED")
TASK_STATES = JOB_STATES  # tasks and jobs share their states
FINAL_JOB_STATES = FINAL_STATES
RUN_STATES = ("running", *FINAL_STATES)  # a run goes on, then ends as its tasks did
PROBLEMS = ("missing", "dark", "mismatch")

# stable constraint names, so that migrations can refer to them on every database
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def now() -> datetime:
    return datetime.now(UTC)


def _one_of(column: str, names: tuple[str, ...], name: str) -> CheckConstraint:
    """``column`` is one of ``names``, as ORed equalities: SQLite evaluates an ``IN`` list in a
    CHECK at 1.5-2.5 us a row written (a 100,000-job plan spent 0.2 s on it), ORs at almost none."""
    return CheckConstraint(" OR ".join(f"{column} = {n!r}" for n in names), name=name)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}


class Dataset(Base):
    """A named set of files: ``OPEN`` while files arrive, ``CLOSED`` when complete."""

    __tablename__ = "datasets"
    # names are per owner: a refusal never tells one user what another user's datasets are called
    __table_args__ = (_one_of("state", DATASET_STATES, "state"), UniqueConstraint("owner", "name"))

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="OPEN")
    owner: Mapped[str] = mapped_column(String(255), default="")
    # the folder holding the dataset's files (``skerry://adaptor/path``): where dark files are looked for
    location: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict] = mapped_column("metadata", default=dict)
    created: Mapped[datetime] = mapped_column(default=now)
    updated: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    files: Mapped[list["File"]] = relationship(back_populates="dataset", passive_deletes=True)


class File(Base):
    """One file of a dataset: where it is (``skerry://`` URI), its size and checksum (MD5 hex)."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("dataset_id", "uri"),
        # a dataset's files in id order (the planner's pages, listings) without a sort
        Index("ix_files_dataset_id_id", "dataset_id", "id"),
        _one_of("state", FILE_STATES, "state"),
        CheckConstraint("size >= 0", name="size"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="AVAILABLE")
    # the job that wrote it (outputs only)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    created: Mapped[datetime] = mapped_column(default=now)

    dataset: Mapped[Dataset] = relationship(back_populates="files")


class FileProblem(Base):
    """A problem the consistency check found, and in how many checks in a row."""

    __tablename__ = "file_problems"
    __table_args__ = (UniqueConstraint("dataset_id", "uri"), _one_of("problem", PROBLEMS, "problem"))

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)
    problem: Mapped[str] = mapped_column(String(16))
    seen: Mapped[int] = mapped_column(default=1)
    first_seen: Mapped[datetime] = mapped_column(default=now)


class Module(Base):
    """A computation module (pins, parameters, resources, how to run) at one version."""

    __tablename__ = "modules"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict]
    created: Mapped[datetime] = mapped_column(default=now)


class Workflow(Base):
    """Steps over modules, wired output -> input (the spec); optionally a dataset name mask
    over its owner's datasets. Module versions are pinned in the stored spec (``name@version``)."""

    __tablename__ = "workflows"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    owner: Mapped[str] = mapped_column(String(255), default="", server_default="")
    spec: Mapped[dict]
    created: Mapped[datetime] = mapped_column(default=now)


class Run(Base):
    """One execution of a workflow over an input dataset: one task per step."""

    __tablename__ = "runs"
    __table_args__ = (_one_of("state", RUN_STATES, "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id"), index=True)
    input_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    state: Mapped[str] = mapped_column(String(16), default="running")
    params: Mapped[dict] = mapped_column(default=dict)
    owner: Mapped[str] = mapped_column(String(255), default="")
    created: Mapped[datetime] = mapped_column(default=now)
    updated: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    tasks: Mapped[list["Task"]] = relationship(back_populates="run")


class Task(Base):
    """One step of a run over one dataset, split into jobs; ``rank`` sets its share."""

    __tablename__ = "tasks"
    __table_args__ = (_one_of("state", TASK_STATES, "state"), Index("ix_tasks_state", "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[str] = mapped_column(String(255))
    module_id: Mapped[int] = mapped_column(ForeignKey("modules.id"))
    input_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    output_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    state: Mapped[str] = mapped_column(String(16), default="defined")
    rank: Mapped[float] = mapped_column(Float, default=1.0)
    params: Mapped[dict] = mapped_column(default=dict)
    jobs_total: Mapped[int] = mapped_column(default=0)
    jobs_succeeded: Mapped[int] = mapped_column(default=0)
    jobs_failed: Mapped[int] = mapped_column(default=0)
    created: Mapped[datetime] = mapped_column(default=now)
    updated: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    run: Mapped[Run | None] = relationship(back_populates="tasks")


class Job(Base):
    """One execution unit of a task: its input file(s), where it runs and how often it ran."""

    __tablename__ = "jobs"
    __table_args__ = (
        _one_of("state", JOB_STATES, "state"),
        # the scheduler's hot queries: next queued jobs of a task (in id order), jobs by task and state
        Index("ix_jobs_task_state_id", "task_id", "state", "id"),
        Index("ix_jobs_state_pool", "state", "pool"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default="defined")
    attempts: Mapped[int] = mapped_column(default=0)
    pool: Mapped[str] = mapped_column(String(64), default="cpu")
    resources: Mapped[dict] = mapped_column(default=dict)
    error_class: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(default=now)
    updated: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    inputs: Mapped[list["JobInput"]] = relationship(order_by="JobInput.position", passive_deletes=True)
    attempt_rows: Mapped[list["JobAttempt"]] = relationship(order_by="JobAttempt.number", passive_deletes=True)


class JobInput(Base):
    """An input file of a job (a job over a chunk of files has several, in order)."""

    __tablename__ = "job_inputs"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)


class JobAttempt(Base):
    """One execution of a job on a worker: when, how it ended, and where its log is."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int]
    worker: Mapped[str | None] = mapped_column(String(255))
    pool: Mapped[str | None] = mapped_column(String(64))
    started: Mapped[datetime] = mapped_column(default=now)
    ended: Mapped[datetime | None]
    exit_code: Mapped[int | None]
    error_class: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str | None] = mapped_column(Text)
