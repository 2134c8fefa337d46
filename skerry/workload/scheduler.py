"""The scheduler loop: the catalog is the queue, Dask runs a bounded window of it.

    sched = Scheduler(catalog, runner, planner=Planner(catalog))   # config=SchedulerConfig(...): the tunables
    sched.run(until=lambda: sched.run_done(run_id), timeout=600)   # or sched.step() in a loop

Each ``step()``:
1. takes what the runner reports (started, heartbeats, finished attempts) and turns it
   into ``states.apply_job`` events; their new states, ended attempts, output files and
   task counters are written in one transaction for the whole batch (outputs with the
   move to ``succeeded``, which is final: each output is registered once); a job is
   written only if the catalog still has it at that attempt and not final (on SQLite one
   count checks the batch), a few statements per batch; an attempt that started and
   ended in the same batch is written once, with its start;
2. times out attempts: one that stopped beating for ``heartbeat_timeout`` s or ran past
   ``job_timeout`` s since it started is ``lost`` (``timeout``), cancelled, and its
   outputs are looked for (``CheckResult``); an attempt whose worker died is ``lost``
   (``worker_lost``) the same way: outputs found -> ``succeeded``, else the retry policy;
3. re-queues retries whose backoff is over;
4. every ``plan_interval`` s: forgets the jobs in flight or waiting for a retry that the
   catalog says are final (someone else cancelled them: the REST API writes the catalog
   directly), cancelling their attempts in the runner; lets the planner
   (``runs.Planner``) add the jobs whose input is now ready, and derives the state of
   every task whose jobs changed (``derive_task_state``);
5. fills each pool's window (``window_of``): the next jobs are pulled from the
   catalog at this moment, the task of each is chosen by the pool's
   ``InterleavedRoundRobin`` over the active tasks' ranks (read from the catalog, so a
   rank change counts from the selector's next round), the dispatches and their attempt
   rows are written in one transaction, then the attempts are submitted, short ones in
   batches (``_batches``).

Rules:
- a pool's window is ``max(window x slots, jobs it finished in the last horizon s)``, at
  most ``MAX_WINDOW``: a pool of short jobs is never starved by the loop's round trips,
  while a job still waits at most about ``horizon`` s in Dask, so rank changes and
  cancels take effect that fast; while the attempts in flight fill at least half of the
  windows (and twice the base), a step first lets reports gather for ``horizon / 4`` s
  (fewer, bigger batches);
- batches: each task's job duration is a running mean of what its workers report; a job
  of a task whose jobs take ``batch_time`` s or more, or are not measured yet, is a Dask
  task of its own, shorter ones share Dask tasks of about ``batch_time`` s of work, at
  most ``MAX_BATCH`` jobs, and at most an even share of a refill per slot. Every job of a
  batch keeps its own attempt, start, timeout, end and retry (the runner reports each);
  a cancel drops only its job, a hung job's followers move to a batch of their own, a
  lost batch loses only the jobs not reported yet (``runner``); ``batch_time=0``: none;
- one scheduler per catalog at a time; a new one (a restart) first recovers: jobs the
  catalog says are ``running`` or ``lost`` are treated as lost (their outputs found or
  the policy decides), ``retrying`` ones are due at once;
- a report about an attempt that is not the job's current one is dropped (``StaleEvent``);
- a queued job whose pool the runner does not have fails with ``no_pool``;
- ranks follow ``next_rank`` every ``rank_interval`` s: retried jobs and rounds a task
  waited raise its rank, within ``RankParams.cap``;
- dispatch order is the order of ``job_attempts.id`` (the fairness record);
- with ``adaptors_of`` (owner -> configuration file, ``skerry.workload.owners``), each
  job carries its owner's adaptors (the run's owner, else the input dataset's; written
  once per task the scheduler meets), so it sees their storage; a lost attempt's outputs
  are looked for there too.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, UTC
from collections.abc import Callable

from sqlalchemy import bindparam, func, insert, select, update

from ..errors import SkerryError
from . import states as S
from .bulk import Bulk
from .models import Dataset, File, Job, JobAttempt, JobInput, Module, Run, Task
from .runner import Beat, Finished, JobSpec, Runner, Started
from .schedulerconfig import SchedulerConfig

__all__ = ["Scheduler", "SchedulerError", "NO_OUTPUT"]

log = logging.getLogger("skerry.scheduler")
NO_OUTPUT = "memory://skerry-no-output"  # where a task without an output dataset "writes"
FINAL = S.FINAL_STATES  # plain strings, for queries
_CHUNK = 500  # ids per IN (...) list
MAX_WINDOW = 10_000  # jobs a pool's window holds at most, however fast its jobs finish
MAX_BATCH = 100  # attempts one Dask task carries at most
TOOK_WEIGHT = 0.2  # weight of the latest job in a task's running mean of job durations


# the per-job writes: compiled once, many rows each (``bulk``)
_ATTEMPTS = Bulk(insert(JobAttempt), datetimes=("started",))
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


class SchedulerError(SkerryError):
    code = "scheduler_error"


@dataclass
class _Live:
    """An attempt handed to Dask."""

    job: int
    task: int
    attempt: int
    pool: str
    excluded: frozenset = frozenset()
    started: float | None = None  # monotonic, when the worker said it started
    beat: float | None = None
    worker: str | None = None
    state: S.JobState = S.JobState.RUNNING
    error_class: str | None = None  # why it is lost (timeout, worker_lost)


@dataclass
class _TaskInfo:
    id: int
    run_id: int | None
    module: dict
    params: dict
    output: str
    output_dataset_id: int | None
    pin: str | None
    adaptors: str | None = None  # the owner's adaptor configuration, for the workers
    owner: str | None = None  # whose jobs they are (the run's owner, else the input dataset's)


@dataclass
class _Written:
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



def _utc_now() -> datetime:
    return datetime.now(UTC)


def _chunks(ids: list, n: int = _CHUNK):
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


class Scheduler:
    """Feeds the catalog's queued jobs to the runner's pools (see the module docstring)."""

    def __init__(self, catalog, runner: Runner, *, planner=None, config: SchedulerConfig = SchedulerConfig(),
                 adaptors_of: Callable[[str], str] | None = None):
        if not isinstance(config, SchedulerConfig):
            raise SchedulerError(f"the scheduler's settings must be a SchedulerConfig, not {config!r}")
        self.catalog, self.runner, self.planner = catalog, runner, planner
        self.config = config  # checked when it was made (``schedulerconfig``)
        self.policy, self.rank_params = config.retry, config.rank
        self.window, self.job_timeout = config.window, config.job_timeout
        self.heartbeat, self.heartbeat_timeout = config.heartbeat, config.heartbeat_timeout
        self.rank_interval, self.plan_interval = config.rank_interval, config.plan_interval
        self.horizon = config.horizon
        self.batch_time = config.batch_time
        self.adaptors_of = adaptors_of  # owner -> their adaptor configuration file (``owners``)
        self.live: dict[int, _Live] = {}
        self.retry_due: dict[int, float] = {}
        self.selectors = {pool: S.InterleavedRoundRobin() for pool in runner.pools}
        self._tasks: dict[int, _TaskInfo] = {}
        self._dirty: set[int] = set()  # tasks whose jobs changed since their state was derived
        self._retried: dict[int, int] = defaultdict(int)  # task -> retries since the last rank update
        self._last_pick: dict[int, int] = {}  # task -> selector round of its last pick
        self._took: dict[int, float] = {}  # task -> running mean of its jobs' durations (s)
        self._ended: dict[str, deque] = {pool: deque() for pool in runner.pools}  # (when, how many) ended
        self._recovered = False
        self._next_plan = self._next_rank = self._next_pools = self._next_tasks = 0.0
        self.dispatched = 0

    # ---- the loop ----

    def run(self, until: Callable[[], bool], timeout: float | None = None, wait: float = 0.02) -> None:
        """Step until ``until()`` is true; ``SchedulerError`` past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not until():
            if deadline is not None and time.monotonic() > deadline:
                raise SchedulerError(f"the scheduler did not get there within {timeout} s "
                                     f"({len(self.live)} attempts in flight)")
            self.step(wait)

    def step(self, wait: float = 0.0) -> None:
        if not self._recovered:
            self.recover()
        written: list[_Written] = []
        linger = self._linger()
        if linger:
            time.sleep(linger)
        starts = self._handle(self.runner.events(timeout=wait if self.live and not linger else 0.0), written)
        self._check_timeouts(written)
        now = time.monotonic()
        due = [job for job, at in self.retry_due.items() if at <= now]
        for w in written:  # an attempt that started and ended in this batch: its start goes in its end row
            start = starts.pop(w.job, None)
            if start is not None and start[0] == w.attempt:
                w.started = start[2]
        with self.catalog.writing() as s:  # one transaction for the whole batch
            self._write(s, written)
            if starts:
                self._write_starts(s.connection(), starts)
            if due:
                self._retries(s, due)
            if now >= self._next_plan:  # before the refill: what someone else ended frees the window now
                self._drop_final(s.connection())
            submit = self._refill(s)
        by_pool = defaultdict(list)
        for live, spec in submit:  # committed: now they are in flight
            self.live[live.job] = live
            self._dirty.add(live.task)
            by_pool[live.pool].append((live, spec))
        self.dispatched += len(submit)
        for pool, items in by_pool.items():
            self.runner.submit_batches(pool, self._batches(pool, items))
        if now >= self._next_plan:
            if self.planner is not None:
                self._dirty |= self.planner.advance()
            self._next_plan = now + self.plan_interval
        if self._dirty and now >= self._next_tasks:
            self._update_tasks()
            self._next_tasks = now + self.plan_interval
        if now >= self._next_rank:
            self._update_ranks()
            self._next_rank = now + self.rank_interval
        if now >= self._next_pools:
            self._fail_poolless()
            self._next_pools = now + 5.0
        if not self.live and wait:
            time.sleep(wait)

    def _linger(self) -> float:
        """Seconds to let reports gather before a step: a quarter of ``horizon`` while the
        attempts in flight fill at least half of the windows (bigger batches, fewer steps:
        the pools still hold work for longer than that), else none."""
        if len(self.live) < 2 * sum(int(self.window * self.runner.slots(p)) for p in self.selectors):
            return 0.0
        if 2 * len(self.live) < sum(self.window_of(p) for p in self.selectors):
            return 0.0
        return self.horizon / 4

    def close(self) -> None:
        """Stop: cancel the attempts in flight (the next scheduler recovers them)."""
        self.runner.cancel_many([(live.job, live.attempt) for live in self.live.values()])
        self.live.clear()

    # ---- recovery ----

    def recover(self) -> None:
        """Take over from a scheduler that stopped: see the module docstring."""
        self._recovered = True
        with self.catalog.session() as s:
            rows = s.execute(select(Job.id, Job.task_id, Job.state, Job.attempts, Job.pool)
                             .where(Job.state.in_(("running", "lost", "retrying")))).all()
        now = time.monotonic()
        batch = []
        for job_id, task_id, state, attempts, pool in rows:
            self._dirty.add(task_id)
            if state == "retrying":
                self.retry_due[job_id] = now
                continue
            live = _Live(job_id, task_id, attempts, pool, self._excluded([job_id]).get(job_id, frozenset()),
                         state=S.JobState(state))
            self.live[job_id] = live
            batch.append(live)
        written = []
        for live in batch:
            if live.state is S.JobState.RUNNING:
                self._apply(live, S.WorkerLost(), written)
            else:
                self._check_result(live, written)
        with self.catalog.writing() as s:
            self._write(s, written)

    # ---- events from the runner ----

    def _handle(self, events: list, written: list) -> dict[int, tuple]:
        """Turn the runner's reports into moves (``written``); the starts to record, by job:
        (attempt, worker, when)."""
        starts = {}
        now = time.monotonic()
        ended = defaultdict(int)
        for ev in events:
            live = self.live.get(ev.job)
            if live is None or live.attempt != ev.attempt:
                continue  # about an attempt that is no longer current: dropped
            if isinstance(ev, Started):
                live.started = live.beat = now
                live.worker = ev.worker
                starts[ev.job] = (ev.attempt, ev.worker, datetime.fromtimestamp(ev.at, UTC))
            elif isinstance(ev, Beat):
                live.beat = now
            elif isinstance(ev, Finished):
                live.worker = ev.worker or live.worker
                if ev.took is not None:
                    took = self._took.get(live.task)
                    self._took[live.task] = ev.took if took is None else took + TOOK_WEIGHT * (ev.took - took)
                ended[live.pool] += 1
                self._finished(live, ev, written)
        for pool, n in ended.items():
            self._ended[pool].append((now, n))
        return starts

    @staticmethod
    def _write_starts(conn, starts: dict[int, tuple]) -> None:
        """The worker and start time of attempts that started and did not end yet."""
        _STARTS.run(conn, [{"b_job": job, "b_n": n, "b_worker": worker, "b_at": at}
                           for job, (n, worker, at) in starts.items()])

    def _finished(self, live: _Live, ev: Finished, written: list) -> None:
        if ev.lost:
            if live.state is S.JobState.RUNNING:
                self._apply(live, S.WorkerLost(attempt=live.attempt), written, error=ev.error)
            return
        r = ev.result
        if r.ok:
            outputs = [{"uri": o.url, "size": o.size, "checksum": o.checksum} for o in r.outputs]
            self._apply(live, S.Succeed(attempt=live.attempt), written, outputs=outputs)
        elif live.state is S.JobState.RUNNING:  # a lost attempt counts only if it succeeded
            self._apply(live, S.Fail(r.error_class, r.exit_code, r.log_location, attempt=live.attempt),
                        written, error=r.error)

    def _job(self, live: _Live) -> S.Job:
        return S.Job(live.job, live.task, live.state, live.attempt, live.pool, live.worker, live.excluded,
                     live.error_class)

    def _apply(self, live: _Live, event, written: list, *, outputs=None, error=None) -> None:
        try:
            tr = S.apply_job(self._job(live), event, self.policy)
        except S.TransitionError:
            return  # stale or no longer allowed: dropped
        new = tr.record
        live.state, live.excluded, live.error_class = new.state, new.excluded_pools, new.error_class
        follow = None
        for action in tr.actions:
            if isinstance(action, S.CancelRun):
                self.runner.cancel(live.job, live.attempt)
            elif isinstance(action, S.ScheduleRetry):
                self.retry_due[live.job] = time.monotonic() + action.delay
                self._retried[live.task] += 1
            elif isinstance(action, S.CheckResult):
                follow = action
            elif isinstance(action, S.EndAttempt) and new.state is not S.JobState.SUCCEEDED:
                written.append(_Written(live.job, live.task, live.attempt, new.state.value, action.error_class,
                                        action.exit_code, error, action.log, live.worker))
            elif isinstance(action, S.RegisterOutputs):
                pass  # written below with the move to succeeded
        if new.state is S.JobState.SUCCEEDED:
            written.append(_Written(live.job, live.task, live.attempt, "succeeded", exit_code=0,
                                    worker=live.worker, outputs=outputs or []))
        if new.final or new.state is S.JobState.RETRYING:
            self.live.pop(live.job, None)
        if follow is not None:
            self._check_result(live, written)

    # ---- lost attempts: are their outputs there? ----

    def _check_result(self, live: _Live, written: list) -> None:
        found = self._outputs_written(live)
        if found is not None:
            self._apply(live, S.Succeed(), written, outputs=found)
        else:
            self._apply(live, S.ResultMissing(), written)

    def _outputs_written(self, live: _Live) -> list[dict] | None:
        """The complete outputs of the job if they are all in place, else None.

        Only modules whose outputs are all single pins with a ``file_name`` can be checked
        (their names are known in advance); a job of any other module is run again.
        """
        from fsspec.core import url_to_fs

        from .executors import JobContext, file_checksum
        from .modules import load_module
        from .owners import adaptors_of

        info = self._task(live.task)
        module = load_module(info.module)
        if not module.outputs or any(p.kind != "single" or not p.file_name for p in module.outputs):
            return None
        ctx = JobContext(module, self._inputs([live.job], info)[live.job], info.output,
                         module.resolve_params(info.params), str(live.job))
        found = []
        with adaptors_of(info.adaptors):  # the owner's storage, as the job saw it
            for pin in module.outputs:
                url = f"{info.output.rstrip('/')}/{ctx.output_name(pin.name)}"
                fs, path = url_to_fs(url)
                if not fs.isfile(path):
                    return None
                found.append({"uri": url, "size": fs.size(path), "checksum": file_checksum(url)})
        return found

    # ---- timeouts and retries ----

    def _check_timeouts(self, written: list) -> None:
        now = time.monotonic()
        for live in list(self.live.values()):
            if live.state is not S.JobState.RUNNING or live.started is None:
                continue
            hung = now - live.beat > self.heartbeat_timeout
            late = self.job_timeout is not None and now - live.started > self.job_timeout
            if hung or late:
                self._apply(live, S.HeartbeatTimeout(attempt=live.attempt), written)

    def _retries(self, s, due: list[int]) -> None:
        for job in due:
            del self.retry_due[job]
        for ids in _chunks(due):
            s.execute(update(Job).where(Job.id.in_(ids), Job.state == "retrying")
                      .values(state="queued", updated=_utc_now()))
            self._dirty.update(s.execute(select(Job.task_id).where(Job.id.in_(ids)).distinct()).scalars())

    def _fail_poolless(self) -> None:
        with self.catalog.writing() as s:
            pools = s.execute(select(Job.pool).where(Job.state == "queued").distinct()).scalars().all()
            unknown = [p for p in pools if p not in self.runner.pools]
            if unknown:
                tasks = s.execute(select(Job.task_id).where(Job.state == "queued", Job.pool.in_(unknown))
                                  .distinct()).scalars().all()
                s.execute(update(Job).where(Job.state == "queued", Job.pool.in_(unknown))
                          .values(state="failed", error_class=S.ERROR_NO_POOL, updated=_utc_now()))
                self._dirty.update(tasks)

    # ---- writing a batch of moves ----

    def _write(self, s, written: list[_Written]) -> None:
        """All moves of a batch, in the step's transaction (see the module docstring)."""
        if not written:
            return
        stamp = _utc_now()
        writable = self._writable(s, written)
        moves, files = [], []
        succeeded, failed = defaultdict(int), defaultdict(int)
        datasets = {}
        for w in written:
            if w.job not in writable:
                continue  # another scheduler moved it on, or it was cancelled: nothing to write
            if w.state == "succeeded" and w.outputs:
                info = self._task(w.task)
                if info.output_dataset_id is None:
                    w.state, w.error_class = "failed", "no_output_dataset"
                else:
                    datasets.setdefault(info.output_dataset_id, []).append(w)
            moves.append(w)
        self._check_outputs(s, datasets)
        jobs, ends = {}, {}
        for w in moves:
            if w.state == "succeeded":
                succeeded[w.task] += 1
                files += [{**o, "dataset_id": self._task(w.task).output_dataset_id, "job_id": w.job,
                           "state": "AVAILABLE", "created": stamp} for o in w.outputs]
            elif w.state == "failed":
                failed[w.task] += 1
            jobs[w.job] = w  # a job that moves twice in a batch (lost, then succeeded) ends in its last state
            ends.setdefault(w.job, w)  # and its attempt keeps its first end (why it was lost)
        if not moves:
            return
        conn = s.connection()
        groups = defaultdict(list)  # one statement per (state, error class), not one per job
        for w in jobs.values():
            groups[(w.state, w.error_class)].append(w.job)
        for (state, error_class), ids in groups.items():
            for chunk in _chunks(ids):
                conn.execute(update(Job).where(Job.id.in_(chunk))
                             .values(state=state, error_class=error_class, updated=stamp))
        self._end_attempts(conn, list(ends.values()), stamp)
        if files:
            _FILES.run(conn, files)
        for task, n in succeeded.items():
            conn.execute(update(Task).where(Task.id == task).values(jobs_succeeded=Task.jobs_succeeded + n))
        for task, n in failed.items():
            conn.execute(update(Task).where(Task.id == task).values(jobs_failed=Task.jobs_failed + n))
        self._dirty.update(w.task for w in moves)

    def _writable(self, s, written: list[_Written]) -> set[int]:
        """The jobs of ``written`` that the catalog still has at their attempt, not final.

        On SQLite (one writer at a time) one count says whether all are, the common case;
        the rows are read only when some are not. On PostgreSQL the rows are locked.
        """
        mine = {w.job: w.attempt for w in written}
        ids = list(mine)
        if self.catalog.dialect != "postgresql":
            by_attempt = defaultdict(list)
            for job, attempt in mine.items():
                by_attempt[attempt].append(job)
            conn = s.connection()
            still = sum(conn.execute(select(func.count()).where(Job.id.in_(chunk), Job.attempts == attempt,
                                                                Job.state.not_in(FINAL))).scalar_one()
                        for attempt, jobs in by_attempt.items() for chunk in _chunks(jobs))
            if still == len(ids):
                return set(ids)
        writable = set()
        for chunk in _chunks(ids):
            query = select(Job.id, Job.state, Job.attempts).where(Job.id.in_(chunk))
            if self.catalog.dialect == "postgresql":
                query = query.with_for_update()
            writable.update(r.id for r in s.execute(query) if r.state not in FINAL and r.attempts == mine[r.id])
        return writable

    @staticmethod
    def _end_attempts(conn, ends: list[_Written], stamp: datetime) -> None:
        """End the attempts of ``ends``: one that already ended (cancelled) keeps its end, a
        lost one ends now; an attempt whose start came in the same batch gets it here."""
        _ENDS.run(conn, [{"b_job": w.job, "b_n": w.attempt, "b_ended": stamp, "b_exit": w.exit_code,
                       "b_class": w.error_class, "b_error": w.error, "b_log": w.log, "b_worker": w.worker,
                       "b_started": w.started} for w in ends])

    def _check_outputs(self, s, datasets: dict[int, list[_Written]]) -> None:
        """A job whose output URI the dataset already has (another job wrote that name) fails."""
        for dataset_id, jobs in datasets.items():
            uris = [o["uri"] for w in jobs for o in w.outputs]
            taken = set()
            for chunk in _chunks(uris):
                taken.update(s.execute(select(File.uri).where(File.dataset_id == dataset_id,
                                                              File.uri.in_(chunk))).scalars())
            state = s.execute(select(Dataset.state).where(Dataset.id == dataset_id)).scalar_one()
            for w in jobs:
                mine = [o["uri"] for o in w.outputs]
                if state != "OPEN" or taken & set(mine) or len(set(mine)) != len(mine):
                    w.state, w.outputs = "failed", []
                    w.error_class = "duplicate_output" if state == "OPEN" else "dataset_closed"
                    w.error = (f"output dataset is {state}, not OPEN" if state != "OPEN"
                               else "an output file of this job is already registered by another job")
                taken.update(mine)

    # ---- tasks ----

    def _task(self, task_id: int) -> _TaskInfo:
        info = self._tasks.get(task_id)
        if info is None:
            with self.catalog.session() as s:
                task = s.get(Task, task_id)
                module = s.get(Module, task.module_id)
                output, pin, owner = NO_OUTPUT, None, None
                if task.output_dataset_id is not None:
                    output = s.get(Dataset, task.output_dataset_id).location or NO_OUTPUT
                if task.run_id is not None:
                    run = s.get(Run, task.run_id)
                    pin, owner = (run.params or {}).get("pins", {}).get(task.step), run.owner
                if not owner and task.input_dataset_id is not None:
                    owner = s.get(Dataset, task.input_dataset_id).owner
                info = _TaskInfo(task.id, task.run_id, module.spec, dict(task.params or {}), output,
                                 task.output_dataset_id, pin, self._adaptors(owner, task.id), owner)
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

    def _update_tasks(self) -> None:
        dirty, self._dirty = self._dirty, set()
        with self.catalog.writing() as s:
            for task_id in sorted(dirty):
                task = s.get(Task, task_id)
                if task is None or task.state in FINAL:
                    continue
                counts = dict(s.execute(select(Job.state, func.count()).where(Job.task_id == task_id)
                                        .group_by(Job.state)).all())
                complete = self.planner.complete(task_id) if (self.planner and task.run_id) else True
                tr = S.apply_task(S.Task(task_id, task.state), S.JobsChanged(counts, complete))
                if tr.record.state.value != task.state:
                    task.state = tr.record.state.value
        if self.planner is not None:
            self.planner.finish_runs()

    def _update_ranks(self) -> None:
        rounds = {pool: sel.rounds for pool, sel in self.selectors.items()}
        latest = max(rounds.values(), default=0)
        with self.catalog.writing() as s:
            rows = s.execute(select(Task.id, Task.rank).where(Task.state.not_in(FINAL))).all()
            for task_id, rank in rows:
                aging = max(0, latest - self._last_pick.get(task_id, latest) - 1)
                retries = self._retried.pop(task_id, 0)
                if aging or retries:
                    new = S.next_rank(rank, aging, retries, self.rank_params)
                    if new != rank:
                        s.execute(update(Task).where(Task.id == task_id).values(rank=new))

    def set_rank(self, task_id: int, rank: float) -> None:
        """A live rank change (counts from the selector's next round)."""
        if isinstance(rank, bool) or not isinstance(rank, int | float) or not 0 < rank < float("inf"):
            raise SchedulerError(f"a task's rank must be a number > 0, not {rank!r}")
        with self.catalog.writing() as s:
            if not s.execute(update(Task).where(Task.id == task_id).values(rank=float(rank))).rowcount:
                raise SchedulerError(f"no task with id {task_id}")

    def cancel_task(self, task_id: int) -> None:
        """Cancel a task: it and every job of it that is not final end ``cancelled``."""
        with self.catalog.writing() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise SchedulerError(f"no task with id {task_id}")
            S.apply_task(S.Task(task_id, task.state), S.Cancel())  # refuses a final task
            task.state = "cancelled"
            live_ids = [j for j, live in self.live.items() if live.task == task_id]
            self.runner.cancel_many([(j, self.live[j].attempt) for j in live_ids])
            for job_id in live_ids:
                live = self.live.pop(job_id)
                s.execute(update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == live.attempt,
                                                   JobAttempt.ended.is_(None))
                          .values(ended=_utc_now(), error_class="cancelled"))
            s.execute(update(Job).where(Job.task_id == task_id, Job.state.not_in(FINAL))
                      .values(state="cancelled", updated=_utc_now()))
        for job in [j for j in self.retry_due if j in live_ids]:
            del self.retry_due[job]

    def _drop_final(self, conn) -> None:
        """Forget jobs that someone else made final (the REST API's cancel writes the catalog):
        their attempts are cancelled in the runner, they leave the window and the retries."""
        mine = list(self.live) + [job for job in self.retry_due if job not in self.live]
        final = []
        for chunk in _chunks(mine):
            final += conn.execute(select(Job.id).where(Job.id.in_(chunk), Job.state.in_(FINAL))).scalars()
        gone = []
        for job in final:
            live = self.live.pop(job, None)
            if live is not None:
                gone.append((job, live.attempt))
                self._dirty.add(live.task)
            self.retry_due.pop(job, None)
        self.runner.cancel_many(gone)

    # ---- dispatch ----

    def _refill(self, s) -> list[tuple[_Live, JobSpec]]:
        """Dispatch the next jobs of every pool with room; what to submit after the commit."""
        submit: list[tuple[_Live, JobSpec]] = []
        ranks = None
        in_flight = defaultdict(int)
        tasks = defaultdict(set)
        for live in self.live.values():
            in_flight[live.pool] += 1
            tasks[live.pool].add(live.task)
        conn = s.connection()
        for pool, selector in self.selectors.items():
            free = self.window_of(pool) - in_flight[pool]
            if free <= 0 or (in_flight[pool] and free < self._least(pool, tasks[pool])):
                continue
            if ranks is None:
                ranks = dict(conn.execute(select(Task.id, Task.rank).where(Task.state.not_in(FINAL))
                                          .order_by(Task.id)).all())
            queued = {}
            for task_id in ranks:
                rows = conn.execute(select(Job.id, Job.attempts).where(Job.task_id == task_id, Job.state == "queued",
                                                                       Job.pool == pool)
                                    .order_by(Job.id).limit(free)).all()
                if rows:
                    queued[task_id] = rows
            if not queued:
                continue
            picks = selector.take({t: (ranks[t], len(rows)) for t, rows in queued.items()}, free)
            order = []
            position = defaultdict(int)
            for task_id in picks:
                job, attempts = queued[task_id][position[task_id]]
                order.append((job, task_id, attempts))
                position[task_id] += 1
                self._last_pick[task_id] = selector.rounds
            submit += self._dispatch(s, pool, order)
        return submit

    def _batches(self, pool: str, items: list[tuple[_Live, JobSpec]]) -> list[list[JobSpec]]:
        """Split a pool's dispatches (in pick order) into Dask tasks: a job whose task's jobs
        took ``batch_time`` s or more (or are not measured yet) alone, shorter ones together
        up to about ``batch_time`` s of work, at most ``_batch_cap`` jobs."""
        cap = self._batch_cap(pool)
        batches, batch, work = [], [], 0.0
        for live, spec in items:
            took = self._took.get(live.task)
            if took is None or took >= self.batch_time:
                batches.append([spec])
                continue
            batch.append(spec)
            work += took
            if len(batch) >= cap or work >= self.batch_time:
                batches.append(batch)
                batch, work = [], 0.0
        if batch:
            batches.append(batch)
        return batches

    def _batch_cap(self, pool: str) -> int:
        """Most jobs in one batch of ``pool`` now: at least two batches in flight per slot."""
        return max(1, min(MAX_BATCH, self.window_of(pool) // (2 * max(1, self.runner.slots(pool)))))

    def _least(self, pool: str, tasks: set[int]) -> int:
        """Free places a pool with attempts in flight waits for before it refills: a whole
        batch while the jobs in flight are all short (at most half the window then)."""
        took = [self._took.get(task) for task in tasks]
        if not self.batch_time or any(t is None or t >= self.batch_time for t in took):
            return 1
        return max(1, min(self._batch_cap(pool), int(self.batch_time / max(max(took), 1e-6))))

    def window_of(self, pool: str) -> int:
        """How many attempts ``pool`` may have in flight now (the module docstring's rule)."""
        ended = self._ended[pool]
        since = time.monotonic() - self.horizon
        while ended and ended[0][0] < since:
            ended.popleft()
        recent = sum(n for _, n in ended)
        return min(MAX_WINDOW, max(int(self.window * self.runner.slots(pool)), recent))

    def _excluded(self, job_ids: list[int], s=None) -> dict[int, frozenset]:
        if s is None:
            with self.catalog.session() as s:
                return self._excluded(job_ids, s)
        out = {}
        rows = defaultdict(list)
        for chunk in _chunks(job_ids):
            for job_id, pool, error_class in s.execute(
                    select(JobAttempt.job_id, JobAttempt.pool, JobAttempt.error_class)
                    .where(JobAttempt.job_id.in_(chunk))):
                rows[job_id].append((pool, error_class))
        for job_id, attempts in rows.items():
            out[job_id] = self.policy.excluded_pools(attempts)
        return out

    def _dispatch(self, s, pool: str, order: list[tuple[int, int, int]]) -> list[tuple[_Live, JobSpec]]:
        """Dispatch ``order`` ((job, task, attempts so far), queued, read in this transaction)."""
        stamp = _utc_now()
        retried = [job for job, _, attempts in order if attempts]
        excluded = self._excluded(retried, s) if retried else {}
        go, refused = [], []
        for job, task, attempts in order:
            live = _Live(job, task, attempts, pool, excluded.get(job, frozenset()), state=S.JobState.QUEUED)
            try:
                tr = S.apply_job(self._job(live), S.Dispatch(pool), self.policy)
            except S.TransitionError:
                refused.append((job, task, live.excluded))  # the retry policy excludes this pool
                continue
            live.state, live.attempt = tr.record.state, tr.record.attempts
            go.append(live)
        conn = s.connection()
        for chunk in _chunks(go):  # one statement per chunk
            conn.execute(update(Job).where(Job.id.in_([live.job for live in chunk]), Job.state == "queued")
                         .values(state="running", attempts=Job.attempts + 1, updated=stamp))
        if go:  # in pick order (the fairness record)
            _ATTEMPTS.run(conn, [{"job_id": live.job, "number": live.attempt, "pool": pool,
                                               "started": stamp} for live in go])
        for job, task, excluded in refused:
            # another pool of the same kind (GPU or not) takes it; with none left it fails
            kind = bool(self.runner.pools[pool].needs)
            other = next((p for p, q in self.runner.pools.items()
                          if p not in excluded and p != pool and bool(q.needs) == kind), None)
            values = {"pool": other} if other else {"state": "failed", "error_class": S.ERROR_NO_POOL}
            conn.execute(update(Job).where(Job.id == job).values(updated=stamp, **values))
            self._dirty.add(task)
        if not go:
            return []
        inputs = self._inputs([live.job for live in go], s=s)
        submit = []
        for live in go:
            info = self._task(live.task)
            submit.append((live, JobSpec(live.job, live.attempt, info.module,
                                         self._by_pin(info, inputs.get(live.job, [])),
                                         info.output, info.params, self.job_timeout, self.heartbeat,
                                         info.adaptors, info.owner)))
        return submit

    def _inputs(self, job_ids: list[int], info: _TaskInfo | None = None, s=None):
        if s is None:
            with self.catalog.session() as s:
                return self._inputs(job_ids, info, s)
        out: dict[int, list[str]] = defaultdict(list)
        for chunk in _chunks(job_ids):
            for job_id, uri in s.execute(select(JobInput.job_id, File.uri)
                                         .join(File, File.id == JobInput.file_id)
                                         .where(JobInput.job_id.in_(chunk))
                                         .order_by(JobInput.job_id, JobInput.position)):
                out[job_id].append(uri)
        if info is not None:
            return {j: self._by_pin(info, out.get(j, [])) for j in job_ids}
        return out

    @staticmethod
    def _by_pin(info: _TaskInfo, uris: list[str]) -> dict[str, list[str]]:
        if not uris:
            return {}
        pin = info.pin or next((p["name"] for p in info.module.get("inputs", [])), None)
        if pin is None:
            raise SchedulerError(f"task {info.id}: its module has no input pin for the job's files")
        return {pin: uris}

    # ---- questions ----

    def run_done(self, run_id: int) -> bool:
        with self.catalog.session() as s:
            return s.execute(select(Run.state).where(Run.id == run_id)).scalar_one() != "running"

    def tasks_done(self, task_ids) -> bool:
        with self.catalog.session() as s:
            states = s.execute(select(Task.state).where(Task.id.in_(list(task_ids)))).scalars().all()
        return all(state in FINAL for state in states)

    def idle(self) -> bool:
        """Nothing in flight, nothing waiting for a retry, nothing queued."""
        if self.live or self.retry_due:
            return False
        with self.catalog.session() as s:
            return s.execute(select(Job.id).where(Job.state == "queued").limit(1)).first() is None
