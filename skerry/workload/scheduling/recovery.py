"""Taking over from a scheduler that stopped: the jobs it left in flight, from the catalog.

    moves = take_over(catalog, inflight, transitions, policy)   # then written like a step's

Rules:
- one scheduler per catalog at a time; a new one (a restart) takes over before its first
  step;
- jobs the catalog says are ``running`` are lost (``worker_lost``); those and the ones it
  says are ``lost`` have their outputs looked for: found -> ``succeeded``, else the retry
  policy decides (their attempts' pools count for ``excluded_pools``);
- ``retrying`` jobs are due at once;
- every task with such a job has its state derived again.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from .. import states as S
from ..models import Job
from .inflight import InFlight, Live
from .tasks import excluded_pools
from .transitions import Transitions
from .writes import Move

__all__ = ["take_over"]


def take_over(catalog, inflight: InFlight, transitions: Transitions, policy: S.RetryPolicy) -> list[Move]:
    """Take the stopped scheduler's jobs into ``inflight``; the moves to write (module docstring)."""
    with catalog.session() as s:
        rows = s.execute(select(Job.id, Job.task_id, Job.state, Job.attempts, Job.pool)
                         .where(Job.state.in_(("running", "lost", "retrying")))).all()
        excluded = excluded_pools(s, [row.id for row in rows if row.state != "retrying"], policy)
    now = time.monotonic()
    batch = []
    for job_id, task_id, state, attempts, pool in rows:
        inflight.dirty.add(task_id)
        if state == "retrying":
            inflight.retry_due[job_id] = now
            continue
        live = Live(job_id, task_id, attempts, pool, excluded.get(job_id, frozenset()), state=S.JobState(state))
        inflight.live[job_id] = live
        batch.append(live)
    moves: list[Move] = []
    for live in batch:
        if live.state is S.JobState.RUNNING:
            transitions.apply(live, S.WorkerLost(), moves)
        else:
            transitions.check_result(live, moves)
    return moves
