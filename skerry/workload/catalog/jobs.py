"""Runs, tasks, jobs and their attempts: the records the scheduler keeps in the catalog.

``Jobs`` is the part of ``Catalog`` that creates runs, tasks and jobs, records
attempts, and registers a job's outputs with its success.

Rules:
- the scheduler decides every transition (``skerry.workload.states``); here a final job
  state never changes (``JobStateError``), and a job's row is locked while it changes
  (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the writing transaction holds the
  file);
- a job's input files are files of its task's input dataset, checked before any job is
  made; a task's ``jobs_total`` and ``jobs_succeeded`` change in the transaction that
  adds its jobs or marks one ``succeeded``;
- a job's outputs are registered exactly once, with its success, in one transaction:
  into its task's output dataset, which must be ``OPEN``; a second call for a job already
  ``succeeded`` changes nothing and returns False;
- what is read back (``job``) is detached from any session, its inputs and attempts loaded.
"""

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import (FINAL_JOB_STATES, JOB_STATES, Dataset, File, Job, JobAttempt, Module, Run, Task,
                      Workflow, now)
from .datasets import dataset_row
from .engine import Database
from .errors import BadFileEntry, CatalogError, DatasetStateError, JobStateError, UnknownJob, UnknownModule
from .files import duplicate_sentence, insert_files
from .inputs import check_metadata, file_row
from .newjobs import insert_jobs

__all__ = ["Jobs"]

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


def _locked_job(s: Session, job_id: int) -> Job:
    """The job's row, locked until the transaction ends; ``UnknownJob`` if there is none."""
    job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise UnknownJob(f"no job with id {job_id}")
    return job


class Jobs(Database):
    """The runs, tasks, jobs and attempts of the catalog (module docstring)."""

    def create_run(self, workflow: str, *, input_dataset: str | None = None, params: dict | None = None,
                   owner: str = "") -> int:
        """A run (state ``running``) of a workflow over ``input_dataset``; its id."""
        params = check_metadata(params)
        with self.writing() as s:
            found = s.execute(select(Workflow.id).where(Workflow.name == workflow)).scalar_one_or_none()
            if found is None:
                raise CatalogError(f"no workflow named {workflow!r}")
            run = Run(workflow_id=found, params=params, owner=owner, state="running",
                      input_dataset_id=dataset_row(s, input_dataset).id if input_dataset else None)
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
        params = check_metadata(params)
        with self.writing() as s:
            if s.get(Module, module_id) is None:
                raise UnknownModule(f"no module with id {module_id}")
            if run_id is not None and s.get(Run, run_id) is None:
                raise CatalogError(f"no run with id {run_id}")
            task = Task(step=step, module_id=module_id, run_id=run_id, rank=float(rank),
                        params=params, state="defined",
                        input_dataset_id=dataset_row(s, input_dataset).id if input_dataset else None,
                        output_dataset_id=dataset_row(s, output_dataset).id if output_dataset else None)
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
        resources = check_metadata(resources)
        with self.writing() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise CatalogError(f"no task with id {task_id}")
            if not inputs:
                return []
            _check_inputs(s, task, inputs)
            return insert_jobs(s, task_id, inputs, state=state, pool=pool, resources=resources)

    def start_attempt(self, job_id: int, *, worker: str, pool: str | None = None, log: str | None = None) -> int:
        """Record a new attempt of a job on ``worker`` and mark the job ``running``; its number.

        The scheduler checks the transition (``skerry.workload.states``) before calling this.
        """
        with self.writing() as s:
            job = _locked_job(s, job_id)
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
            job = _locked_job(s, job_id)
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
            row = file_row(i, entry)
            if row["uri"] in seen:
                raise BadFileEntry(f"output {i}: {row['uri']} is listed twice")
            seen.add(row["uri"])
            rows.append(row)
        try:
            with self.writing() as s:
                job = _locked_job(s, job_id)
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
                    insert_files(s, dataset.id, rows, job_id=job_id)
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
                sentence = duplicate_sentence(s, out.name, out.owner, rows)
            raise BadFileEntry(f"job {job_id}: " + sentence) from None
