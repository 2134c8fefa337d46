"""What the scheduler reads of tasks and jobs: a task's facts, once; a job's inputs and excluded pools.

    tasks = TaskInfos(catalog, adaptors_of)
    info = tasks.of(task_id)                      # read on first use, then kept
    by_pin(info, job_inputs(s, [job])[job])       # {pin: [uri, ...]}
    excluded_pools(s, [job], policy)              # {job: frozenset of pools}

Rules:
- a task's facts (its module's spec, parameters, output location and dataset, pin, owner,
  the owner's adaptors) are read on first use and kept: none of them changes while the
  task runs;
- a task without an output dataset (or whose dataset has no location) "writes" to
  ``NO_OUTPUT``;
- the owner is the run's owner, else the input dataset's; with ``adaptors_of`` (owner ->
  configuration file, ``skerry.workload.owners``) each job carries its owner's adaptors, so
  it sees their storage; an owner whose adaptors cannot be set up gets none (a warning):
  their jobs fail on their storage, each with its own error and log;
- a job's files go to the run's pin for the task's step, else to its module's first input
  pin; files and no such pin: ``SchedulerError``;
- the pools a job may no longer go to are the retry policy's answer over its attempts so
  far (``RetryPolicy.excluded_pools``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import aliased

from ...errors import SkerryError
from ..bulk import chunks
from .. import states as S
from ..models import Dataset, File, JobAttempt, JobInput, Module, Run, Task
from . import SchedulerError

__all__ = ["NO_OUTPUT", "TaskInfo", "TaskInfos", "by_pin", "excluded_pools", "job_inputs"]

log = logging.getLogger("skerry.scheduler")
NO_OUTPUT = "memory://skerry-no-output"  # where a task without an output dataset "writes"


@dataclass
class TaskInfo:
    id: int
    run_id: int | None
    module: dict
    params: dict
    output: str
    output_dataset_id: int | None
    pin: str | None
    adaptors: str | None = None  # the owner's adaptor configuration, for the workers
    owner: str | None = None  # whose jobs they are (the run's owner, else the input dataset's)


_output, _input = aliased(Dataset), aliased(Dataset)
# a task's facts in one query (a dispatch's first job of a task waited on five lookups by key)
_FACTS = (select(Task.run_id, Task.step, Task.params, Task.output_dataset_id, Task.input_dataset_id, Module.spec,
                 _output.location, Run.params.label("run_params"), Run.owner.label("run_owner"),
                 _input.owner.label("input_owner"))
          .join(Module, Module.id == Task.module_id)
          .outerjoin(_output, _output.id == Task.output_dataset_id)
          .outerjoin(Run, Run.id == Task.run_id)
          .outerjoin(_input, _input.id == Task.input_dataset_id)
          .where(Task.id == bindparam("task_id")))


class TaskInfos:
    """The facts of each task the scheduler meets, read once (module docstring)."""

    def __init__(self, catalog, adaptors_of: Callable[[str], str] | None = None):
        self.catalog = catalog
        self.adaptors_of = adaptors_of  # owner -> their adaptor configuration file (``owners``)
        self._tasks: dict[int, TaskInfo] = {}

    def of(self, task_id: int) -> TaskInfo:
        info = self._tasks.get(task_id)
        if info is None:
            with self.catalog.session() as s:
                row = s.execute(_FACTS, {"task_id": task_id}).one()
            pin = ((row.run_params or {}).get("pins", {}).get(row.step)) if row.run_id is not None else None
            owner = row.run_owner if row.run_id is not None else None
            if not owner and row.input_dataset_id is not None:
                owner = row.input_owner
            info = TaskInfo(task_id, row.run_id, row.spec, dict(row.params or {}), row.location or NO_OUTPUT,
                            row.output_dataset_id, pin, self._adaptors(owner, task_id), owner)
            self._tasks[task_id] = info
        return info

    def _adaptors(self, owner: str | None, task_id: int) -> str | None:
        if self.adaptors_of is None or not owner:
            return None
        try:
            return self.adaptors_of(owner)
        except SkerryError as e:  # its jobs fail on their storage, each with its own error and log
            log.warning("task %d: the adaptors of %s cannot be set up: %s", task_id, owner, e)
            return None


# each file looked up by its key, sorted here: joined and sorted by the database,
# PostgreSQL read all of files and job_inputs for each 500 jobs
_INPUTS = select(JobInput.job_id, JobInput.position,
                 select(File.uri).where(File.id == JobInput.file_id).scalar_subquery()
                 ).where(JobInput.job_id.in_(bindparam("ids", expanding=True)))


def job_inputs(s, job_ids: list[int]) -> dict[int, list[str]]:
    """The input files' URIs of each job, in order (a job without inputs is absent)."""
    conn = s.connection()  # plain rows: the ORM's result handling cost more than the query
    rows = []
    for chunk in chunks(job_ids):
        rows += conn.execute(_INPUTS, {"ids": chunk}).all()
    rows.sort(key=lambda row: (row[0], row[1]))
    out: dict[int, list[str]] = defaultdict(list)
    for job_id, _, file_uri in rows:
        out[job_id].append(file_uri)
    return out


def by_pin(info: TaskInfo, uris: list[str]) -> dict[str, list[str]]:
    """A job's input files under their pin (module docstring)."""
    if not uris:
        return {}
    pin = info.pin or next((p["name"] for p in info.module.get("inputs", [])), None)
    if pin is None:
        raise SchedulerError(f"task {info.id}: its module has no input pin for the job's files")
    return {pin: uris}


def excluded_pools(s, job_ids: list[int], policy: S.RetryPolicy) -> dict[int, frozenset]:
    """The pools each job (with attempts) may no longer go to, by the retry policy."""
    rows = defaultdict(list)
    for chunk in chunks(job_ids):
        for job_id, pool, error_class in s.execute(
                select(JobAttempt.job_id, JobAttempt.pool, JobAttempt.error_class)
                .where(JobAttempt.job_id.in_(chunk))):
            rows[job_id].append((pool, error_class))
    return {job_id: policy.excluded_pools(attempts) for job_id, attempts in rows.items()}
