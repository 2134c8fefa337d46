"""A batch of moves written in the step's transaction: job states, ended attempts, outputs, task counters.

    fold_starts(moves, starts)                             # before the transaction
    with catalog.writing() as s:
        changed = write_moves(s, moves, tasks, catalog.dialect)   # the tasks whose jobs moved
        write_starts(s.connection(), starts)
        changed |= requeue(s, due)

Rules:
- a job is written only if the catalog still has it at that attempt and not final
  (otherwise another scheduler moved it on, or it was cancelled: nothing is written): on
  SQLite (one writer at a time) one count checks the whole batch and the rows are read
  only when some are not; on PostgreSQL the rows are read and locked;
- a success's outputs are written with its move to ``succeeded``, which is final: each
  output is registered once (``outputs.refuse_taken``); a success that reports outputs
  for a task without an output dataset becomes ``failed`` (``no_output_dataset``);
- a job that moves twice in a batch (lost, then succeeded) ends in its last state, and its
  attempt keeps its first end (why it was lost); an attempt that already ended (cancelled)
  keeps its end; an attempt that started and ended in the same batch is written once,
  its start in its end row (``fold_starts``);
- a few statements per batch: one per (state, error class) and chunk of ids, the ends,
  starts and files as ``Bulk`` rows, one counter update per task and outcome;
- ``requeue`` moves the jobs whose retry is due from ``retrying`` back to ``queued``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, update

from .. import states as S
from ..bulk import Bulk, chunks
from ..models import File, Job, JobAttempt, Task, now
from .outputs import refuse_taken
from .tasks import TaskInfos

__all__ = ["Move", "end_attempts", "fold_starts", "requeue", "writable", "write_moves", "write_starts"]


# the per-job writes: compiled once, many rows each (``bulk``)
_FILES = Bulk(insert(File), datetimes=("created",))
_STARTS = Bulk(update(JobAttempt).where(JobAttempt.job_id == bindparam("b_job"),
                                        JobAttempt.number == bindparam("b_n"))
               .values(worker=bindparam("b_worker"), started=bindparam("b_at")), datetimes=("b_at",))
_ENDS = Bulk(update(JobAttempt).where(JobAttempt.job_id == bindparam("b_job"), JobAttempt.number == bindparam("b_n"),
                                      JobAttempt.ended.is_(None))
             .values(ended=bindparam("b_ended"), exit_code=bindparam("b_exit"), error_class=bindparam("b_class"),
                     error=bindparam("b_error"), log=bindparam("b_log"),
                     worker=func.coalesce(bindparam("b_worker"), JobAttempt.worker),
                     started=func.coalesce(bindparam("b_started", type_=JobAttempt.started.type), JobAttempt.started)),
             datetimes=("b_ended", "b_started"))
# the per-batch statements: built once, not per call (``bulk``)
_MOVED = (update(Job).where(Job.id.in_(bindparam("ids", expanding=True)))
          .values(state=bindparam("b_state"), error_class=bindparam("b_class"), updated=bindparam("b_stamp")))
_SUCCEEDED = update(Task).where(Task.id == bindparam("b_task")).values(jobs_succeeded=Task.jobs_succeeded
                                                                       + bindparam("b_n"))
_FAILED = update(Task).where(Task.id == bindparam("b_task")).values(jobs_failed=Task.jobs_failed + bindparam("b_n"))
_STILL = select(func.count()).where(Job.id.in_(bindparam("ids", expanding=True)), Job.attempts == bindparam("b_n"),
                                    Job.state.not_in(S.FINAL_STATES))
_REQUEUED = (update(Job).where(Job.id.in_(bindparam("ids", expanding=True)), Job.state == "retrying")
             .values(state="queued", updated=bindparam("b_stamp")))
_TASKS_OF = select(Job.task_id).where(Job.id.in_(bindparam("ids", expanding=True))).distinct()


@dataclass
class Move:
    """One job's move, to be written in the batch."""

    job: int
    task: int
    attempt: int
    state: str
    error_class: str | None = None
    exit_code: int | None = None
    error: str | None = None
    log: str | None = None
    worker: str | None = None
    outputs: list = field(default_factory=list)
    started: datetime | None = None  # the worker's start, when it is reported in the same batch


def fold_starts(moves: list[Move], starts: dict[int, tuple]) -> None:
    """Move into its end the start of each attempt that started and ended in this batch
    (``starts``: job -> (attempt, worker, when); what is left there did not end)."""
    for w in moves:
        start = starts.pop(w.job, None)
        if start is not None and start[0] == w.attempt:
            w.started = start[2]


def write_moves(s, moves: list[Move], tasks: TaskInfos, dialect: str) -> set[int]:
    """All moves of a batch, in the step's transaction (module docstring); the tasks whose
    jobs moved."""
    if not moves:
        return set()
    stamp = now()
    mine = writable(s, moves, dialect)
    kept, files = [], []
    succeeded, failed = defaultdict(int), defaultdict(int)
    datasets = {}
    for w in moves:
        if w.job not in mine:
            continue  # another scheduler moved it on, or it was cancelled: nothing to write
        if w.state == "succeeded" and w.outputs:
            info = tasks.of(w.task)
            if info.output_dataset_id is None:
                w.state, w.error_class = "failed", "no_output_dataset"
            else:
                datasets.setdefault(info.output_dataset_id, []).append(w)
        kept.append(w)
    refuse_taken(s, datasets)
    jobs, ends = {}, {}
    for w in kept:
        if w.state == "succeeded":
            succeeded[w.task] += 1
            files += [{**o, "dataset_id": tasks.of(w.task).output_dataset_id, "job_id": w.job,
                       "state": "AVAILABLE", "created": stamp} for o in w.outputs]
        elif w.state == "failed":
            failed[w.task] += 1
        jobs[w.job] = w  # a job that moves twice in a batch (lost, then succeeded) ends in its last state
        ends.setdefault(w.job, w)  # and its attempt keeps its first end (why it was lost)
    if not kept:
        return set()
    conn = s.connection()
    groups = defaultdict(list)  # one statement per (state, error class), not one per job
    for w in jobs.values():
        groups[(w.state, w.error_class)].append(w.job)
    for (state, error_class), ids in groups.items():
        for chunk in chunks(ids):
            conn.execute(_MOVED, {"ids": chunk, "b_state": state, "b_class": error_class, "b_stamp": stamp})
    end_attempts(conn, list(ends.values()), stamp)
    if files:
        _FILES.run(conn, files)
    for task, n in succeeded.items():
        conn.execute(_SUCCEEDED, {"b_task": task, "b_n": n})
    for task, n in failed.items():
        conn.execute(_FAILED, {"b_task": task, "b_n": n})
    return {w.task for w in kept}


def writable(s, moves: list[Move], dialect: str) -> set[int]:
    """The jobs of ``moves`` that the catalog still has at their attempt, not final.

    On SQLite (one writer at a time) one count says whether all are, the common case;
    the rows are read only when some are not. On PostgreSQL the rows are locked.
    """
    mine = {w.job: w.attempt for w in moves}
    ids = list(mine)
    if dialect != "postgresql":
        by_attempt = defaultdict(list)
        for job, attempt in mine.items():
            by_attempt[attempt].append(job)
        conn = s.connection()
        still = sum(conn.execute(_STILL, {"ids": chunk, "b_n": attempt}).scalar_one()
                    for attempt, jobs in by_attempt.items() for chunk in chunks(jobs))
        if still == len(ids):
            return set(ids)
    found = set()
    for chunk in chunks(ids):
        query = select(Job.id, Job.state, Job.attempts).where(Job.id.in_(chunk))
        if dialect == "postgresql":
            query = query.with_for_update()
        found.update(r.id for r in s.execute(query) if r.state not in S.FINAL_STATES and r.attempts == mine[r.id])
    return found


def end_attempts(conn, ends: list[Move], stamp: datetime) -> None:
    """End the attempts of ``ends``: one that already ended (cancelled) keeps its end, a
    lost one ends now; an attempt whose start came in the same batch gets it here."""
    _ENDS.run(conn, [{"b_job": w.job, "b_n": w.attempt, "b_ended": stamp, "b_exit": w.exit_code,
                      "b_class": w.error_class, "b_error": w.error, "b_log": w.log, "b_worker": w.worker,
                      "b_started": w.started} for w in ends])


def write_starts(conn, starts: dict[int, tuple]) -> None:
    """The worker and start time of attempts that started and did not end yet
    (``starts``: job -> (attempt, worker, when))."""
    _STARTS.run(conn, [{"b_job": job, "b_n": n, "b_worker": worker, "b_at": at}
                       for job, (n, worker, at) in starts.items()])


def requeue(s, due: list[int]) -> set[int]:
    """Jobs whose retry is due: ``retrying`` -> ``queued``; the tasks they belong to."""
    tasks = set()
    conn = s.connection()
    for ids in chunks(due):
        conn.execute(_REQUEUED, {"ids": ids, "b_stamp": now()})
        tasks.update(conn.execute(_TASKS_OF, {"ids": ids}).scalars())
    return tasks
