"""Dispatch: each pool's window filled with the next queued jobs, chosen fairly by rank, in batches.

    dispatcher = Dispatcher(runner, config, inflight, tasks)
    with catalog.writing() as s:
        dispatched = dispatcher.refill(s)     # picked, moved to running, attempts written
    dispatcher.submit(dispatched)             # committed: now they are in flight

``refill`` pulls the next queued jobs of each pool with room from the catalog at this
moment; the task of each is chosen by the pool's ``InterleavedRoundRobin`` over the active
tasks' ranks (read from the catalog, so a rank change counts from the selector's next
round); the dispatches (``queued -> running``) and their attempt rows are written in the
caller's transaction. ``submit``, after the commit, puts them in flight and hands them to
the runner, short ones in batches.

Rules:
- a pool's window is ``max(window x slots, jobs it finished in the last horizon s)``, at
  most ``MAX_WINDOW``: a pool of short jobs is never starved by the loop's round trips,
  while a job still waits at most about ``horizon`` s in Dask, so rank changes and
  cancels take effect that fast; a pool with attempts in flight that are all short waits
  for room for a whole batch before it refills, and a queue less than a batch longer than
  the room goes in the refill whole (the window overfilled by less than a batch of short
  jobs, never by a job not measured short);
- when every task with jobs in flight or queued in a pool is measured short, the window
  is at least what its slots get through in ``horizon`` s at the slowest of their
  durations (``slots x horizon / duration``; a duration is the time the job held its
  worker, the work around it in its batch included), growing at most fourfold a refill:
  a run of short jobs reaches its full rate a few steps after its first jobs are
  measured, not only as finished jobs pile up; a task not measured short (new, or long)
  brings the window back to the rule above at once. On a machine whose cores the workers
  share with others, they get through less than that: the wait in Dask is then longer
  than ``horizon`` (about 1 s for 10,000 no-op jobs on 2 shared cores);
- batches: each task's job duration is a running mean of what its workers report; a job
  of a task whose jobs take ``batch_time`` s or more, or are not measured yet, is a Dask
  task of its own, shorter ones share Dask tasks of about ``batch_time`` s of work, at
  most ``MAX_BATCH`` jobs, and at most an even share of a refill per slot. Every job of a
  batch keeps its own attempt, start, timeout, end and retry (the runner reports each);
  a cancel drops only its job, a hung job's followers move to a batch of their own, a
  lost batch loses only the jobs not reported yet (``runner``); ``batch_time=0``: none;
- dispatch order is the order of ``job_attempts.id`` (the fairness record);
- a task's next queued jobs of a pool are read from after the last one it dispatched or
  moved away (``id > after``), not from its first job: a task's queued jobs have ids
  above that (the planner makes them in the scheduler's own loop, each page above every
  job before), except ones queued again (a retry due, a job moved to another pool), which
  make it read from the start once (``forget``). PostgreSQL, with statistics taken while
  a run's jobs were all queued, read a task's jobs by primary key from its first one and
  passed over every ended job on each read (89 ms at 60,000 of 100,000 ended; a few ms
  read from where it left off);
- a job whose pool the retry policy now excludes goes to another pool of the same kind
  (GPU or not), or fails with ``no_pool`` when none is left; a queued job whose pool the
  runner does not have fails with ``no_pool`` (``fail_poolless``);
- each job carries its task's module, parameters, output, owner and the owner's adaptors
  (``tasks``), and its input files by pin.
"""

from __future__ import annotations

import time
from collections import defaultdict

from sqlalchemy import bindparam, insert, select, update

from .. import states as S
from ..bulk import Bulk, chunks, unindexed
from ..models import Job, JobAttempt, Task, now
from ..runner import JobSpec, Runner
from ..schedulerconfig import SchedulerConfig
from .inflight import InFlight, Live
from .tasks import TaskInfos, by_pin, excluded_pools, job_inputs

__all__ = ["Dispatcher", "MAX_BATCH", "MAX_WINDOW", "fail_poolless"]

MAX_WINDOW = 10_000  # jobs a pool's window holds at most, however fast its jobs finish
MAX_BATCH = 100  # attempts one Dask task carries at most

_ATTEMPTS = Bulk(insert(JobAttempt), datetimes=("started",))  # compiled once, many rows each (``bulk``)
# built once, not per call (``bulk``: building a statement costs more than running it)
_RANKS = select(Task.id, Task.rank).where(Task.state.not_in(S.FINAL_STATES)).order_by(Task.id)
# by (task, state, id): SQLite, without statistics, otherwise read a pool's queued jobs of every task
_QUEUED = (select(Job.id, Job.attempts).where(Job.task_id == bindparam("task"), Job.state == "queued",
                                               unindexed(Job.pool) == bindparam("pool"), Job.id > bindparam("after"))
           .order_by(Job.id).limit(bindparam("free")))
_RUNNING = (update(Job).where(Job.id.in_(bindparam("ids", expanding=True)), unindexed(Job.state) == "queued")
            .values(state="running", attempts=Job.attempts + 1, updated=bindparam("stamp")))


class Dispatcher:
    """Fills the pools' windows (module docstring)."""

    def __init__(self, runner: Runner, config: SchedulerConfig, inflight: InFlight, tasks: TaskInfos):
        self.runner, self.config, self.inflight, self.tasks = runner, config, inflight, tasks
        self.selectors = {pool: S.InterleavedRoundRobin() for pool in runner.pools}
        self._measured: dict[str, int] = {}  # pool -> its measured window at the last refill
        self._after: dict[tuple[int, str], int] = {}  # (task, pool) -> its last job that left the queue
        self._read: dict[tuple[int, str], int] = {}  # the same, from the refill not committed yet

    def forget(self, tasks) -> None:
        """Read the queued jobs of ``tasks`` from their first one again: some were queued again."""
        if tasks:
            self._after = {key: job for key, job in self._after.items() if key[0] not in tasks}
            self._read = {key: job for key, job in self._read.items() if key[0] not in tasks}

    # ---- windows ----

    def base_window(self, pool: str) -> int:
        """The attempts ``pool`` may have in flight however slowly its jobs finish."""
        return int(self.config.window * self.runner.slots(pool))

    def window_of(self, pool: str) -> int:
        """How many attempts ``pool`` may have in flight now (the module docstring's rule)."""
        return max(self._window(pool), self._measured.get(pool, 0))

    def _window(self, pool: str) -> int:
        """The window without the measured term: the base, or what finished in ``horizon`` s."""
        ended = self.inflight.ended[pool]
        since = time.monotonic() - self.config.horizon
        while ended and ended[0][0] < since:
            ended.popleft()
        recent = sum(n for _, n in ended)
        return min(MAX_WINDOW, max(self.base_window(pool), recent))

    def _slowest_short(self, tasks: set[int]) -> float | None:
        """The longest of ``tasks``' job durations when every one is measured short (less
        than ``batch_time``); None when one is not, or there is none."""
        took = [self.inflight.took.get(task) for task in tasks]
        batch_time = self.config.batch_time
        if not took or not batch_time or any(t is None or t >= batch_time for t in took):
            return None
        return max(max(took), 1e-6)

    def measured_window(self, pool: str, tasks: set[int]) -> int:
        """The jobs ``pool``'s slots get through in ``horizon`` s when every one of ``tasks`` is
        measured short (its jobs take less than ``batch_time``); else 0."""
        slowest = self._slowest_short(tasks)
        return 0 if slowest is None else min(MAX_WINDOW, int(self.runner.slots(pool) * self.config.horizon / slowest))

    def _least(self, pool: str, tasks: set[int]) -> int:
        """Free places a pool with attempts in flight waits for before it refills: a whole
        batch while the jobs in flight are all short (at most half the window then)."""
        slowest = self._slowest_short(tasks)
        return 1 if slowest is None else max(1, min(self.batch_cap(pool), int(self.config.batch_time / slowest)))

    # ---- picking and writing the dispatches ----

    def refill(self, s) -> list[tuple[Live, JobSpec]]:
        """Dispatch the next jobs of every pool with room; what to submit after the commit."""
        submit: list[tuple[Live, JobSpec]] = []
        ranks = None
        in_flight = defaultdict(int)
        tasks = defaultdict(set)
        for live in self.inflight.live.values():
            in_flight[live.pool] += 1
            tasks[live.pool].add(live.task)
        conn = s.connection()
        self._read = {}
        for pool, selector in self.selectors.items():
            free = self.window_of(pool) - in_flight[pool]
            if free <= 0 or (in_flight[pool] and free < self._least(pool, tasks[pool])):
                continue
            if ranks is None:
                ranks = dict(conn.execute(_RANKS).all())
                self._after = {key: job for key, job in self._after.items() if key[0] in ranks}
            queued = {}
            limit = free + MAX_BATCH - 1  # a queue less than a batch longer than the room is read whole
            for task_id in ranks:
                rows = conn.execute(_QUEUED, {"task": task_id, "pool": pool, "free": limit,
                                              "after": self._after.get((task_id, pool), 0)}).all()
                if rows:
                    queued[task_id] = rows
            # measured afresh over the tasks that may be picked now: one not measured short
            # (new, or long) brings the window back to the base one at once; it grows at most
            # fourfold a refill (a new task's picks are not behind a sudden flood)
            self._measured[pool] = min(self.measured_window(pool, set(queued) | tasks[pool]),
                                       4 * self.window_of(pool))
            free = min(free, self.window_of(pool) - in_flight[pool])
            if not queued or free <= 0:
                continue
            # what is left of a run's queue goes now when it is less than a batch: it would wait
            # for room for a whole batch while the pool ran dry (the last 7 of 100,000 started
            # 0.26 s after the rest)
            waiting = sum(len(rows) for rows in queued.values())
            if all(len(rows) < limit for rows in queued.values()) \
                    and waiting - free < self._least(pool, set(queued) | tasks[pool]):
                free = waiting
            picks = selector.take({t: (ranks[t], len(rows)) for t, rows in queued.items()}, free)
            order = []
            position = defaultdict(int)
            for task_id in picks:
                job, attempts = queued[task_id][position[task_id]]
                order.append((job, task_id, attempts))
                position[task_id] += 1
                self._read[task_id, pool] = job  # picks take a task's jobs in id order
                self.inflight.last_pick[task_id] = selector.rounds
            submit += self._dispatch(s, pool, order)
        return submit

    def _dispatch(self, s, pool: str, order: list[tuple[int, int, int]]) -> list[tuple[Live, JobSpec]]:
        """Dispatch ``order`` ((job, task, attempts so far), queued, read in this transaction)."""
        stamp = now()
        retried = [job for job, _, attempts in order if attempts]
        excluded = excluded_pools(s, retried, self.config.retry) if retried else {}
        go, refused = [], []
        for job, task, attempts in order:
            live = Live(job, task, attempts, pool, excluded.get(job, frozenset()), state=S.JobState.QUEUED)
            try:
                tr = S.apply_job(live.record(), S.Dispatch(pool), self.config.retry)
            except S.TransitionError:
                refused.append((job, task, live.excluded))  # the retry policy excludes this pool
                continue
            live.state, live.attempt = tr.record.state, tr.record.attempts
            go.append(live)
        conn = s.connection()
        for chunk in chunks(go):  # one statement per chunk
            conn.execute(_RUNNING, {"ids": [live.job for live in chunk], "stamp": stamp})
        if go:  # in pick order (the fairness record)
            _ATTEMPTS.run(conn, [{"job_id": live.job, "number": live.attempt, "pool": pool, "started": stamp}
                                 for live in go])
        for job, task, excluded in refused:
            # another pool of the same kind (GPU or not) takes it; with none left it fails
            kind = bool(self.runner.pools[pool].needs)
            other = next((p for p, q in self.runner.pools.items()
                          if p not in excluded and p != pool and bool(q.needs) == kind), None)
            values = {"pool": other} if other else {"state": "failed", "error_class": S.ERROR_NO_POOL}
            conn.execute(update(Job).where(Job.id == job).values(updated=stamp, **values))
            self.inflight.dirty.add(task)
            self.forget({task})  # queued again in the other pool, maybe below where it reads from
        if not go:
            return []
        inputs = job_inputs(s, [live.job for live in go])
        submit = []
        for live in go:
            info = self.tasks.of(live.task)
            submit.append((live, JobSpec(live.job, live.attempt, info.module, by_pin(info, inputs.get(live.job, [])),
                                         info.output, info.params, self.config.job_timeout, self.config.heartbeat,
                                         info.adaptors, info.owner)))
        return submit

    # ---- handing them to the runner ----

    def submit(self, dispatched: list[tuple[Live, JobSpec]]) -> None:
        """After the dispatches' commit: they are in flight; the runner gets them in batches."""
        self._after.update(self._read)  # committed: those jobs left the queue
        self._read = {}
        by_pool = defaultdict(list)
        for live, spec in dispatched:
            self.inflight.live[live.job] = live
            self.inflight.dirty.add(live.task)
            by_pool[live.pool].append((live, spec))
        for pool, items in by_pool.items():
            self.runner.submit_batches(pool, self.batches(pool, items))

    def batches(self, pool: str, items: list[tuple[Live, JobSpec]]) -> list[list[JobSpec]]:
        """Split a pool's dispatches (in pick order) into Dask tasks: a job whose task's jobs
        took ``batch_time`` s or more (or are not measured yet) alone, shorter ones together
        up to about ``batch_time`` s of work, at most ``batch_cap`` jobs."""
        cap = self.batch_cap(pool)
        batch_time = self.config.batch_time
        batches, batch, work = [], [], 0.0
        for live, spec in items:
            took = self.inflight.took.get(live.task)
            if took is None or took >= batch_time:
                batches.append([spec])
                continue
            batch.append(spec)
            work += took
            if len(batch) >= cap or work >= batch_time:
                batches.append(batch)
                batch, work = [], 0.0
        if batch:
            batches.append(batch)
        return batches

    def batch_cap(self, pool: str) -> int:
        """Most jobs in one batch of ``pool`` now: at least two batches in flight per slot."""
        return max(1, min(MAX_BATCH, self.window_of(pool) // (2 * max(1, self.runner.slots(pool)))))


# the pools of queued jobs, one index probe each (``ix_jobs_state_pool``): a loose index scan, since
# PostgreSQL's DISTINCT read every queued job's entry (up to 47 ms at 100,000 queued, every 5 s)
_lowest = select(Job.pool).where(Job.state == "queued").order_by(Job.pool).limit(1)  # of all, or above the last
_pools = select(_lowest.scalar_subquery().label("pool")).cte("queued_pools", recursive=True)
_pools = _pools.union_all(select(_lowest.where(Job.pool > _pools.c.pool).scalar_subquery())
                          .where(_pools.c.pool.is_not(None)))
_QUEUED_POOLS = select(_pools.c.pool).where(_pools.c.pool.is_not(None))


def fail_poolless(catalog, runner: Runner) -> set[int]:
    """Fail (``no_pool``) the queued jobs whose pool the runner does not have; their tasks."""
    with catalog.writing() as s:
        pools = s.execute(_QUEUED_POOLS).scalars().all()
        unknown = [p for p in pools if p not in runner.pools]
        if not unknown:
            return set()
        tasks = s.execute(select(Job.task_id).where(Job.state == "queued", Job.pool.in_(unknown))
                          .distinct()).scalars().all()
        s.execute(update(Job).where(Job.state == "queued", Job.pool.in_(unknown))
                  .values(state="failed", error_class=S.ERROR_NO_POOL, updated=now()))
        return set(tasks)
