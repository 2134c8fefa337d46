"""The tasks' books: their states derived from their jobs, their ranks, cancels.

    derive_task_states(catalog, planner, tasks)        # the tasks whose jobs changed
    update_ranks(catalog, inflight, rounds, params)    # every rank_interval s
    set_rank(catalog, task_id, 4.0); cancel_task(catalog, runner, inflight, task_id)
    drop_final(conn, inflight, runner)                 # what someone else ended

Rules:
- a task's state is ``states.apply_task``'s answer to which states its jobs are in (a
  count of 1 for each: the answer does not depend on how many, and a count by state read
  every job of the task, 16 ms a pass for 100,000 jobs, where one indexed look per state
  is 0.2 ms) and whether the planner will add jobs to it (``Planner.complete``; a task of
  no run is complete); a final task is left as it is; then the planner ends the runs
  whose tasks are all final;
- ranks follow ``states.next_rank``: rounds a task waited (its pool selectors' rounds
  since its last pick) and its retries since the last update raise its rank, within
  ``RankParams.cap``; a live rank change counts from the selector's next round;
- a rank is a number above 0; a task id that is not there is a ``SchedulerError``;
- cancelling a task ends it and every job of it that is not final ``cancelled``, its
  attempts in flight cancelled in the runner and ended in the catalog (a final task
  refuses: ``states.TransitionError``);
- jobs in flight or waiting for a retry that the catalog says are final (someone else
  cancelled them: the REST API writes the catalog directly) are forgotten, their attempts
  cancelled in the runner; the jobs in flight are read only for a task whose count of
  ``running`` jobs is not its count in flight (a job cancelled is no longer running).
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import bindparam, exists, func, literal_column, select, union_all, update

from .. import states as S
from ..bulk import chunks
from ..models import JOB_STATES, Job, JobAttempt, Task, now
from ..runner import Runner
from . import SchedulerError
from .inflight import InFlight

__all__ = ["cancel_task", "derive_task_states", "drop_final", "set_rank", "update_ranks"]

# built once, not per call (``bulk``)
_TASK = select(Task.state, Task.run_id).where(Task.id == bindparam("task"))
# each state written into the statement, not bound: PostgreSQL's generic plan of a prepared
# statement (psycopg prepares one run 5 times) scanned the whole table for a bound state
_PRESENT = union_all(*(select(literal_column(f"'{state}'")).where(exists().where(
    Job.task_id == bindparam("task"), Job.state == literal_column(f"'{state}'"))) for state in JOB_STATES))
_TASK_STATE = update(Task).where(Task.id == bindparam("task")).values(state=bindparam("b_state"))


def derive_task_states(catalog, planner, tasks: set[int]) -> None:
    """Derive again the state of each of ``tasks``; then let the planner end finished runs
    (in the same transaction)."""
    with catalog.writing() as s:
        conn = s.connection()
        for task_id in sorted(tasks):
            task = conn.execute(_TASK, {"task": task_id}).first()
            if task is None or task.state in S.FINAL_STATES:
                continue
            counts = dict.fromkeys(conn.execute(_PRESENT, {"task": task_id}).scalars(), 1)
            complete = planner.complete(task_id) if (planner and task.run_id) else True
            tr = S.apply_task(S.Task(task_id, task.state), S.JobsChanged(counts, complete))
            if tr.record.state.value != task.state:
                conn.execute(_TASK_STATE, {"task": task_id, "b_state": tr.record.state.value})
        if planner is not None:
            planner.finish_runs(s)


def update_ranks(catalog, inflight: InFlight, rounds: dict[str, int], params: S.RankParams) -> None:
    """Every active task's rank, by ``next_rank`` (``rounds``: pool -> its selector's rounds)."""
    latest = max(rounds.values(), default=0)
    with catalog.writing() as s:
        rows = s.execute(select(Task.id, Task.rank).where(Task.state.not_in(S.FINAL_STATES))).all()
        for task_id, rank in rows:
            aging = max(0, latest - inflight.last_pick.get(task_id, latest) - 1)
            retries = inflight.retried.pop(task_id, 0)
            if aging or retries:
                new = S.next_rank(rank, aging, retries, params)
                if new != rank:
                    s.execute(update(Task).where(Task.id == task_id).values(rank=new))


def set_rank(catalog, task_id: int, rank: float) -> None:
    """A live rank change (counts from the selector's next round)."""
    if isinstance(rank, bool) or not isinstance(rank, int | float) or not 0 < rank < float("inf"):
        raise SchedulerError(f"a task's rank must be a number > 0, not {rank!r}")
    with catalog.writing() as s:
        if not s.execute(update(Task).where(Task.id == task_id).values(rank=float(rank))).rowcount:
            raise SchedulerError(f"no task with id {task_id}")


def cancel_task(catalog, runner: Runner, inflight: InFlight, task_id: int) -> None:
    """Cancel a task: it and every job of it that is not final end ``cancelled``."""
    live_by_job = inflight.live
    with catalog.writing() as s:
        task = s.get(Task, task_id)
        if task is None:
            raise SchedulerError(f"no task with id {task_id}")
        S.apply_task(S.Task(task_id, task.state), S.Cancel())  # refuses a final task
        task.state = "cancelled"
        live_ids = [j for j, live in live_by_job.items() if live.task == task_id]
        runner.cancel_many([(j, live_by_job[j].attempt) for j in live_ids])
        for job_id in live_ids:
            live = live_by_job.pop(job_id)
            s.execute(update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == live.attempt,
                                               JobAttempt.ended.is_(None))
                      .values(ended=now(), error_class="cancelled"))
        s.execute(update(Job).where(Job.task_id == task_id, Job.state.not_in(S.FINAL_STATES))
                  .values(state="cancelled", updated=now()))
    for job in [j for j in inflight.retry_due if j in live_ids]:
        del inflight.retry_due[job]


def drop_final(conn, inflight: InFlight, runner: Runner) -> None:
    """Forget jobs that someone else made final (the REST API's cancel writes the catalog):
    their attempts are cancelled in the runner, they leave the window and the retries."""
    mine = _maybe_ended(conn, inflight) + [job for job in inflight.retry_due if job not in inflight.live]
    final = []
    for chunk in chunks(mine):  # by primary key, the states tested here: not through the index on states
        final += [job for job, state in conn.execute(select(Job.id, Job.state).where(Job.id.in_(chunk)))
                  if state in S.FINAL_STATES]
    gone = []
    for job in final:
        live = inflight.live.pop(job, None)
        if live is not None:
            gone.append((job, live.attempt))
            inflight.dirty.add(live.task)
        inflight.retry_due.pop(job, None)
    runner.cancel_many(gone)


def _maybe_ended(conn, inflight: InFlight) -> list[int]:
    """The jobs in flight of the tasks whose count of ``running`` jobs in the catalog is not
    the count in flight: one small query by the index on (task, state) in the common case,
    where reading every job in flight (up to a window of 10,000) was a quarter of the loop."""
    live = Counter(entry.task for entry in inflight.live.values())
    running = {}
    for tasks in chunks(list(live)):
        running.update(conn.execute(select(Job.task_id, func.count()).where(Job.task_id.in_(tasks),
                                                                            Job.state == "running")
                                    .group_by(Job.task_id)).all())
    return [job for job, entry in inflight.live.items() if running.get(entry.task) != live[entry.task]]
