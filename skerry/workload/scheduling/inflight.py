"""What the scheduler keeps in memory between steps: the attempts in flight and what goes with them.

    inflight = InFlight(runner.pools)
    inflight.live[job] = Live(job, task, attempt, pool)      # from its dispatch's commit
    inflight.job_took(task, 0.4)                             # a worker's report

Rules:
- the catalog is the truth; this is the scheduler's own view, rebuilt from the catalog by
  ``recovery`` after a restart (the durations and the counts start over);
- ``live``: job -> its attempt handed to Dask, from the commit of its dispatch until its
  job is final or waits for a retry;
- ``retry_due``: job -> when (``time.monotonic()``) its retry is due;
- ``dirty``: the tasks whose jobs changed since their state was last derived;
- ``retried``: task -> retries since its rank was last updated; ``last_pick``: task ->
  its pool selector's round when one of its jobs was last picked (both for ``next_rank``);
- ``took``: task -> the running mean of its jobs' durations (s), ``TOOK_WEIGHT`` for the
  latest; ``ended``: pool -> (when, how many of its attempts ended) per step (its window);
- one ``InFlight`` per scheduler, shared by its parts; nothing here reads or writes the catalog.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from .. import states as S

__all__ = ["InFlight", "Live", "TOOK_WEIGHT"]

TOOK_WEIGHT = 0.2  # weight of the latest job in a task's running mean of job durations


@dataclass
class Live:
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

    def record(self) -> S.Job:
        """The job as the state machine sees it."""
        return S.Job(self.job, self.task, self.state, self.attempt, self.pool, self.worker, self.excluded,
                     self.error_class)


class InFlight:
    """The scheduler's memory (module docstring)."""

    def __init__(self, pools: Iterable[str]):
        self.live: dict[int, Live] = {}
        self.retry_due: dict[int, float] = {}
        self.dirty: set[int] = set()
        self.retried: dict[int, int] = defaultdict(int)
        self.last_pick: dict[int, int] = {}
        self.took: dict[int, float] = {}
        self.ended: dict[str, deque] = {pool: deque() for pool in pools}

    def job_took(self, task: int, seconds: float) -> None:
        """A job of ``task`` took ``seconds``: into the task's running mean."""
        took = self.took.get(task)
        self.took[task] = seconds if took is None else took + TOOK_WEIGHT * (seconds - took)
