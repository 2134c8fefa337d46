"""The runner's reports and the timeouts turned into moves, by the state machine.

    moves = []
    starts = transitions.handle(runner.events(), moves)   # job -> (attempt, worker, when)
    transitions.time_out(moves)
    # then ``writes`` writes ``moves`` and ``starts`` in the step's transaction

Each report or timeout is a ``states.apply_job`` event on the job's attempt in flight
(``inflight.Live``); the new state is kept in memory and its move appended to ``moves``
(a ``writes.Move``); the transition's actions are carried out here: ``CancelRun`` cancels
the attempt in the runner, ``ScheduleRetry`` sets when its retry is due, ``CheckResult``
looks for a lost attempt's outputs (``outputs.outputs_in_place``): found -> ``succeeded``,
else the retry policy decides.

Rules:
- a report about an attempt that is not the job's current one is dropped (``StaleEvent``),
  and so is an event the state machine refuses;
- an attempt that stopped beating for ``heartbeat_timeout`` s, or ran past ``job_timeout``
  s since it started, is ``lost`` (``timeout``); one whose worker died is ``lost``
  (``worker_lost``); a lost attempt's own later report counts only if it succeeded;
- a job leaves ``live`` when it is final or waits for a retry;
- each finished job's duration goes into its task's running mean and each ended attempt
  into its pool's count (``inflight``: the batches and the windows);
- nothing here writes the catalog (``writes`` does).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, UTC

from .. import states as S
from ..runner import Beat, Finished, Runner, Started
from ..schedulerconfig import SchedulerConfig
from .inflight import InFlight, Live
from .outputs import outputs_in_place
from .tasks import TaskInfos
from .writes import Move

__all__ = ["Transitions"]


class Transitions:
    """Reports and timeouts -> moves and actions (module docstring)."""

    def __init__(self, catalog, runner: Runner, config: SchedulerConfig, inflight: InFlight, tasks: TaskInfos):
        self.catalog, self.runner, self.config = catalog, runner, config
        self.inflight, self.tasks = inflight, tasks

    def handle(self, events: list, moves: list[Move]) -> dict[int, tuple]:
        """Turn the runner's reports into moves; the starts to record, by job:
        (attempt, worker, when)."""
        live_by_job, starts = self.inflight.live, {}
        now = time.monotonic()
        ended = defaultdict(int)
        for ev in events:
            live = live_by_job.get(ev.job)
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
                    self.inflight.job_took(live.task, ev.took)
                ended[live.pool] += 1
                self._finished(live, ev, moves)
        for pool, n in ended.items():
            self.inflight.ended[pool].append((now, n))
        return starts

    def time_out(self, moves: list[Move]) -> None:
        """Lose the attempts that stopped beating or ran too long (module docstring)."""
        now = time.monotonic()
        for live in list(self.inflight.live.values()):
            if live.state is not S.JobState.RUNNING or live.started is None:
                continue
            hung = now - live.beat > self.config.heartbeat_timeout
            late = self.config.job_timeout is not None and now - live.started > self.config.job_timeout
            if hung or late:
                self.apply(live, S.HeartbeatTimeout(attempt=live.attempt), moves)

    def _finished(self, live: Live, ev: Finished, moves: list[Move]) -> None:
        if ev.lost:
            if live.state is S.JobState.RUNNING:
                self.apply(live, S.WorkerLost(attempt=live.attempt), moves, error=ev.error)
            return
        r = ev.result
        if r.ok:
            outputs = [{"uri": o.url, "size": o.size, "checksum": o.checksum} for o in r.outputs]
            self.apply(live, S.Succeed(attempt=live.attempt), moves, outputs=outputs)
        elif live.state is S.JobState.RUNNING:  # a lost attempt counts only if it succeeded
            self.apply(live, S.Fail(r.error_class, r.exit_code, r.log_location, attempt=live.attempt),
                       moves, error=r.error)

    def apply(self, live: Live, event, moves: list[Move], *, outputs=None, error=None) -> None:
        """``event`` on the job of ``live``: its new state, its move, its actions."""
        try:
            tr = S.apply_job(live.record(), event, self.config.retry)
        except S.TransitionError:
            return  # stale or no longer allowed: dropped
        new = tr.record
        live.state, live.excluded, live.error_class = new.state, new.excluded_pools, new.error_class
        follow = None
        for action in tr.actions:
            if isinstance(action, S.CancelRun):
                self.runner.cancel(live.job, live.attempt)
            elif isinstance(action, S.ScheduleRetry):
                self.inflight.retry_due[live.job] = time.monotonic() + action.delay
                self.inflight.retried[live.task] += 1
            elif isinstance(action, S.CheckResult):
                follow = action
            elif isinstance(action, S.EndAttempt) and new.state is not S.JobState.SUCCEEDED:
                moves.append(Move(live.job, live.task, live.attempt, new.state.value, action.error_class,
                                  action.exit_code, error, action.log, live.worker))
            elif isinstance(action, S.RegisterOutputs):
                pass  # written with the move to succeeded, below
        if new.state is S.JobState.SUCCEEDED:
            moves.append(Move(live.job, live.task, live.attempt, "succeeded", exit_code=0,
                              worker=live.worker, outputs=outputs or []))
        if new.final or new.state is S.JobState.RETRYING:
            self.inflight.live.pop(live.job, None)
        if follow is not None:
            self.check_result(live, moves)

    def check_result(self, live: Live, moves: list[Move]) -> None:
        """A lost attempt: its outputs in place -> ``succeeded``, else ``ResultMissing``."""
        found = outputs_in_place(self.catalog, self.tasks.of(live.task), live.job)
        if found is not None:
            self.apply(live, S.Succeed(), moves, outputs=found)
        else:
            self.apply(live, S.ResultMissing(), moves)
