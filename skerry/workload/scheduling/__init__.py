"""The scheduler's parts, one concern each; ``skerry.workload.scheduler`` runs them in its loop.

- ``inflight``: what the scheduler keeps in memory between steps (the attempts in flight,
  the retries waiting, the tasks whose state is to be derived again, the jobs' durations);
- ``tasks``: what it reads once per task (module, parameters, output, pin, owner and the
  owner's adaptors) and each job's input files by pin;
- ``transitions``: the runner's reports and the timeouts turned into moves with
  ``states.apply_job``, and the actions they ask for (a cancel, a retry); writes nothing;
- ``writes``: a batch of moves written in the step's transaction (job states, ended
  attempts, outputs, task counters), the starts, the retries that are due;
- ``outputs``: a lost attempt's outputs looked for on storage; a success's outputs
  checked before they are registered;
- ``recovery``: taking over the jobs a scheduler that stopped left behind;
- ``dispatch``: each pool's window filled fairly by rank, the dispatches and their
  attempts written, the attempts submitted in batches;
- ``bookkeeping``: the tasks' states and ranks, cancels, jobs someone else made final.

Rules:
- the parts share the scheduler's one ``InFlight``; none of them loops or sleeps (the
  loop, its pace and its transactions are ``skerry.workload.scheduler``'s);
- dispatch writes only queued jobs and the new attempts; the moves of dispatched jobs
  are made by ``transitions`` and written by ``writes``;
- ``SchedulerError`` (here) is what the scheduler raises on purpose; nearly always the
  caller's input is wrong (a setting, a rank, a task id, a module's pins): a ``BadRequest``.
"""

from ...errors import BadRequest

__all__ = ["SchedulerError"]


class SchedulerError(BadRequest):
    """A bad setting, rank or task id, a module without an input pin, a ``run`` past its timeout."""

    code = "scheduler_error"
