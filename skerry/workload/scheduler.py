"""The scheduler loop: the catalog is the queue, Dask runs a bounded window of it.

    sched = Scheduler(catalog, runner, planner=Planner(catalog))   # config=SchedulerConfig(...): the tunables
    sched.run(until=lambda: sched.run_done(run_id), timeout=600)   # or sched.step() in a loop

Each ``step()`` (its parts are in ``skerry.workload.scheduling``):
1. takes what the runner reports (started, heartbeats, finished attempts) and turns it
   into ``states.apply_job`` events (``transitions``); their new states, ended attempts,
   output files and task counters are written in one transaction for the whole batch
   (``writes``: outputs with the move to ``succeeded``, which is final; a job is written
   only if the catalog still has it at that attempt and not final);
2. times out attempts: one that stopped beating for ``heartbeat_timeout`` s or ran past
   ``job_timeout`` s since it started is ``lost`` (``timeout``), cancelled, and its
   outputs are looked for (``CheckResult``, ``outputs``); an attempt whose worker died is
   ``lost`` (``worker_lost``) the same way: outputs found -> ``succeeded``, else the retry
   policy;
3. re-queues retries whose backoff is over;
4. every ``plan_interval`` s: forgets the jobs in flight or waiting for a retry that the
   catalog says are final (someone else cancelled them: the REST API writes the catalog
   directly), cancelling their attempts in the runner; lets the planner
   (``runs.Planner``) add the jobs whose input is now ready, and derives the state of
   every task whose jobs changed (``bookkeeping``);
5. fills each pool's window with the next queued jobs, chosen fairly by rank, writes the
   dispatches and their attempts in the same transaction, then submits the attempts,
   short ones in batches (``dispatch``).

Rules:
- one scheduler per catalog at a time; a new one (a restart) first recovers
  (``recovery``): jobs the catalog says are ``running`` or ``lost`` are treated as lost
  (their outputs found or the policy decides), ``retrying`` ones are due at once;
- a step's moves, starts, retries, the cancels it saw and its dispatches are one
  transaction; the attempts are handed to the runner only after it commits;
- while the attempts in flight fill at least half of the windows (and twice the base
  windows), a step first lets reports gather for ``horizon / 4`` s (fewer, bigger
  batches: the pools still hold work for longer than that);
- ranks follow ``next_rank`` every ``rank_interval`` s; the tasks' states are derived at
  most every ``plan_interval`` s; queued jobs whose pool the runner does not have fail
  with ``no_pool`` (checked every 5 s);
- with nothing in flight, no interval is waited for: a new run (``Planner.news``, one
  small query a step) is planned first in that step and its jobs are dispatched by the
  same step's refill (the states of the tasks that got them wait until they are
  dispatched), and the tasks whose jobs ended get their state (and their run its end) in
  the step that saw the last one end: a one-job run takes about two Dask round trips,
  not two intervals;
- a planner behind (a big run's jobs planned a page at a time, in this loop) plans its
  next page at a step where the attempts in flight hold at least as much work as its
  last pass took (their tasks' measured job durations over the pools' slots), where
  nothing is in flight, or once ``RAMP_HOLD`` s have passed since it fell behind: a page
  planned while the workers hold a few ms of work leaves them idle for the page's time
  (on 2 cores, 100,000-file runs started 287-1,446 jobs in their first second that way,
  714-1,775 with the rule: README, Figures);
- with ``adaptors_of`` (owner -> configuration file, ``skerry.workload.owners``), each
  job carries its owner's adaptors (the run's owner, else the input dataset's), so it
  sees their storage; a lost attempt's outputs are looked for there too;
- ``run`` past its ``timeout`` raises ``SchedulerError``; ``close`` cancels the attempts
  in flight (the next scheduler recovers them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from . import states as S
from .models import Job, Run, Task
from .runner import Runner
from .schedulerconfig import SchedulerConfig
from .scheduling import SchedulerError, bookkeeping
from .scheduling.dispatch import Dispatcher, fail_poolless
from .scheduling.inflight import InFlight
from .scheduling.recovery import take_over
from .scheduling.tasks import NO_OUTPUT, TaskInfos
from .scheduling.transitions import Transitions
from .scheduling.writes import Move, fold_starts, requeue, write_moves, write_starts

# SchedulerError and NO_OUTPUT are defined in the parts; callers and tests import them from here
__all__ = ["Scheduler", "SchedulerError", "NO_OUTPUT"]

POOLS_INTERVAL = 5.0  # seconds between the checks for queued jobs of pools the runner does not have
RAMP_HOLD = 0.5  # seconds a planner behind may wait for the pools to hold enough work (``_plan``)


class Scheduler:
    """Feeds the catalog's queued jobs to the runner's pools (see the module docstring)."""

    def __init__(self, catalog, runner: Runner, *, planner=None, config: SchedulerConfig = SchedulerConfig(),
                 adaptors_of: Callable[[str], str] | None = None):
        if not isinstance(config, SchedulerConfig):
            raise SchedulerError(f"the scheduler's settings must be a SchedulerConfig, not {config!r}")
        self.catalog, self.runner, self.planner = catalog, runner, planner
        self.config = config  # checked when it was made (``schedulerconfig``)
        self.adaptors_of = adaptors_of  # owner -> their adaptor configuration file (``owners``)
        self.inflight = InFlight(runner.pools)
        self.live, self.retry_due = self.inflight.live, self.inflight.retry_due  # what the manager watches
        self.tasks = TaskInfos(catalog, adaptors_of)
        self.transitions = Transitions(catalog, runner, config, self.inflight, self.tasks)
        self.dispatcher = Dispatcher(runner, config, self.inflight, self.tasks)
        self.selectors = self.dispatcher.selectors
        self._recovered = False
        self._woken = threading.Event()
        self._next_plan = self._next_rank = self._next_pools = self._next_tasks = 0.0
        self._behind_since = float("inf")  # when the planner fell behind (a run planned a page at a time)
        self._page_time = 0.0  # seconds the planner's last pass took
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

    def wake(self) -> None:
        """End the current idle wait (from any thread): something to plan may have come."""
        self._woken.set()

    def step(self, wait: float = 0.0) -> None:
        """One round (the module docstring's 1-5); ``wait``: seconds to wait for reports, or to sleep when idle."""
        if not self._recovered:
            self.recover()
        moves: list[Move] = []
        linger = self._linger()
        if linger:
            time.sleep(linger)
        starts = self.transitions.handle(self.runner.events(timeout=wait if self.live and not linger else 0.0),
                                         moves)
        self.transitions.time_out(moves)
        now = time.monotonic()
        due = [job for job, at in self.retry_due.items() if at <= now]
        fold_starts(moves, starts)
        plan_due = now >= self._next_plan
        idle_start = not self.live  # nothing in flight: a new run's jobs are planned first, dispatched below
        planned = self._plan(now) if idle_start else set()
        with self.catalog.writing() as s:  # one transaction for the whole batch
            self.inflight.dirty |= write_moves(s, moves, self.tasks, self.catalog.dialect)
            if starts:
                write_starts(s.connection(), starts)
            if due:
                for job in due:
                    del self.retry_due[job]
                requeued = requeue(s, due)
                self.dispatcher.forget(requeued)  # their jobs are queued again below where it reads from
                self.inflight.dirty |= requeued
            if plan_due:  # before the refill: what someone else ended frees the window now
                bookkeeping.drop_final(s.connection(), self.inflight, self.runner)
            dispatched = self.dispatcher.refill(s)
        self.dispatched += len(dispatched)
        self.dispatcher.submit(dispatched)  # committed: now they are in flight
        if not idle_start:
            planned = self._plan(now)
        # with nothing in flight, the tasks whose jobs ended get their state now (their run may be over);
        # jobs just planned for an idle scheduler are dispatched first, their tasks' states come after
        idle = not self.live
        if self.inflight.dirty and not (idle and planned) and (now >= self._next_tasks or idle):
            tasks, self.inflight.dirty = self.inflight.dirty, set()
            bookkeeping.derive_task_states(self.catalog, self.planner, tasks)
            self._next_tasks = now + self.config.plan_interval
        if now >= self._next_rank:
            rounds = {pool: selector.rounds for pool, selector in self.selectors.items()}
            bookkeeping.update_ranks(self.catalog, self.inflight, rounds, self.config.rank)
            self._next_rank = now + self.config.rank_interval
        if now >= self._next_pools:
            self.inflight.dirty |= fail_poolless(self.catalog, self.runner)
            self._next_pools = now + POOLS_INTERVAL
        if not self.live and wait and not planned:  # jobs just planned are dispatched at once
            self._woken.wait(wait)  # ``wake`` ends it: a run started elsewhere
            self._woken.clear()

    def _plan(self, now: float) -> set[int]:
        """Let the planner add jobs, every ``plan_interval`` s, or now for a new run while
        nothing is in flight; the tasks that got jobs or became complete. A planner behind
        goes on at the next step where the pools hold work for as long as its last pass
        took, or hold nothing (the module docstring's rule)."""
        if now < self._next_plan and (self.live or self.planner is None or not self.planner.news()):
            return set()
        if self.planner is None:  # nothing to plan: the interval still paces ``plan_due``'s check of cancels
            self._next_plan = now + self.config.plan_interval
            return set()
        if self.planner.behind and self.live and now - self._behind_since < RAMP_HOLD \
                and self._work_in_flight() < self._page_time:
            return set()  # a page now would leave the workers idle while the loop plans
        began = time.monotonic()
        planned = self.planner.advance()
        self._page_time = time.monotonic() - began
        self.inflight.dirty |= planned
        # a planner behind (a run's jobs planned a page at a time) goes on at the next step
        if not self.planner.behind:
            self._behind_since = float("inf")
        elif self._behind_since == float("inf"):
            self._behind_since = now
        self._next_plan = now if self.planner.behind else now + self.config.plan_interval
        return planned

    def _work_in_flight(self) -> float:
        """Seconds the pools' slots take to run the attempts in flight, from their tasks'
        measured job durations (an attempt of a task not measured yet counts none)."""
        took, slots = self.inflight.took, {}
        work = 0.0
        for live in self.live.values():
            if live.pool not in slots:
                slots[live.pool] = max(1, self.runner.slots(live.pool))
            work += took.get(live.task, 0.0) / slots[live.pool]
        return work

    def _linger(self) -> float:
        """Seconds to let reports gather before a step (the module docstring's rule)."""
        if len(self.live) < 2 * sum(self.dispatcher.base_window(p) for p in self.selectors):
            return 0.0
        if 2 * len(self.live) < sum(self.window_of(p) for p in self.selectors):
            return 0.0
        return self.config.horizon / 4

    def window_of(self, pool: str) -> int:
        """How many attempts ``pool`` may have in flight now (``scheduling.dispatch``)."""
        return self.dispatcher.window_of(pool)

    def recover(self) -> None:
        """Take over from a scheduler that stopped: see the module docstring."""
        self._recovered = True
        moves = take_over(self.catalog, self.inflight, self.transitions, self.config.retry)
        with self.catalog.writing() as s:
            self.inflight.dirty |= write_moves(s, moves, self.tasks, self.catalog.dialect)

    def close(self) -> None:
        """Stop: cancel the attempts in flight (the next scheduler recovers them)."""
        self.runner.cancel_many([(live.job, live.attempt) for live in self.live.values()])
        self.live.clear()

    # ---- changes asked for ----

    def set_rank(self, task_id: int, rank: float) -> None:
        """A live rank change (counts from the selector's next round)."""
        bookkeeping.set_rank(self.catalog, task_id, rank)

    def cancel_task(self, task_id: int) -> None:
        """Cancel a task: it and every job of it that is not final end ``cancelled``."""
        bookkeeping.cancel_task(self.catalog, self.runner, self.inflight, task_id)

    # ---- questions ----

    def run_done(self, run_id: int) -> bool:
        with self.catalog.session() as s:
            return s.execute(select(Run.state).where(Run.id == run_id)).scalar_one() != "running"

    def tasks_done(self, task_ids) -> bool:
        with self.catalog.session() as s:
            states = s.execute(select(Task.state).where(Task.id.in_(list(task_ids)))).scalars().all()
        return all(state in S.FINAL_STATES for state in states)

    def idle(self) -> bool:
        """Nothing in flight, nothing waiting for a retry, nothing queued."""
        if self.live or self.retry_due:
            return False
        with self.catalog.session() as s:
            return s.execute(select(Job.id).where(Job.state == "queued").limit(1)).first() is None
