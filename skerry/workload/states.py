"""The states of jobs, tasks and datasets, and the events that move them: pure, no I/O.

Like dask's ``SchedulerState``, every legal move is one entry of a table
``(state, event name) -> handler``; a handler returns the new record and the *actions*
the caller must carry out (write the state, submit to Dask, cancel a run, ...). This module
never does any of them: no clock, no database, no Dask. The catalog writes the new state
and the actions' records in one transaction; the Dask runner turns the rest into calls.

    apply_job(job, event, policy)   -> Transition(record=new Job, actions=(...))
    apply_task(task, event)         -> Transition(record=new Task, actions=(...))
    apply_dataset(dataset, event)   -> Transition(record=new Dataset, actions=(...))

Rules:
- a (state, event) pair missing from the table raises ``TransitionError`` naming the
  object, its state and the event, and changes nothing (records are frozen);
- ``succeeded``, ``failed`` and ``cancelled`` are final for jobs and tasks, ``DELETED``
  for datasets: every event on them is refused;
- jobs: ``defined -enqueue-> queued -dispatch(pool)-> running``; a running job ends
  ``succeeded``, or on ``fail(error_class)`` goes to ``retrying`` or ``failed`` as the
  ``RetryPolicy`` says; ``heartbeat_timeout`` (hung) and ``worker_lost`` make it ``lost``:
  the caller looks for outputs already written (``CheckResult``) and answers ``succeed``
  (found: the job is not run again) or ``result_missing`` (the policy decides, with the
  error class ``timeout`` or ``worker_lost``); ``retrying -retry_due-> queued``;
  ``cancel`` ends any job that is not final; ``unschedulable`` fails a queued job that
  no pool may take (all excluded by the policy, or none with the resources it needs);
- while a job is ``lost`` only its success counts (outputs found, or the attempt finished
  after all): the runner drops any other report of that attempt (``TransitionError``);
- attempts are counted at ``dispatch``; a job runs at most ``1 + limit`` times, then
  fails with its last error class. Events about one attempt (start, heartbeat, succeed,
  fail, heartbeat_timeout, worker_lost) may name it; one naming an older attempt raises
  ``StaleEvent`` (a ``TransitionError``) which the runner drops;
- outputs are registered (``RegisterOutputs``) only by the move to ``succeeded``, which
  happens once per job since it is final: each output is registered exactly once;
- a task's state is derived from the counts of its jobs' states (``derive_task_state``);
  a task is final only when all its jobs are final and no more will be added, or when
  ``cancel`` ends it at once (``CancelJobs``: the caller cancels its live jobs);
- datasets: ``OPEN -close-> CLOSED -upload-> TO_UPLOAD -uploaded-> CLOSED``;
  ``OPEN|CLOSED|TO_UPLOAD -delete-> TO_DELETE -deleted-> DELETED``; files are added only
  while OPEN (``DATASET_MOVES``, derived from the table, is what the catalog checks);
- this module is the one definition of the state names and the final sets: the catalog's
  columns (``JOB_STATES``, ``DATASET_STATES``), queries (``FINAL_STATES``, plain strings),
  the CLI and the widgets all read them from here; ``run_outcome`` is how a run ends.

Ranks and fair sharing are pure too: ``next_rank`` is the SPD formula
``rank_{i+1} = α·aging + β·retries + γ·rank_i`` clamped to ``[floor, cap]``, and
``InterleavedRoundRobin`` picks which task dispatches next by interleaved weighted
round-robin over the active tasks' ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ..errors import BadRequest, Conflict

__all__ = [
    "JobState", "TaskState", "DatasetState", "FINAL", "Decision", "RetryPolicy",
    "JOB_STATES", "FINAL_STATES", "DATASET_STATES", "DATASET_FINAL", "DATASET_READABLE", "DATASET_MOVES", "run_outcome",
    "DEFAULT_RULES", "DEFAULT_POLICY",
    "ERROR_TIMEOUT", "ERROR_WORKER_LOST", "ERROR_NO_POOL",
    "Job", "Task", "Dataset", "Transition",
    "Enqueue", "Dispatch", "Start", "Heartbeat", "Succeed", "Fail", "HeartbeatTimeout",
    "WorkerLost", "ResultMissing", "Cancel", "RetryDue", "Unschedulable", "JobsChanged",
    "AddFiles", "Close", "Upload", "Uploaded", "Delete", "Deleted",
    "Submit", "RecordStart", "RecordHeartbeat", "RegisterOutputs", "EndAttempt",
    "CancelRun", "CheckResult", "ScheduleRetry", "CancelJobs",
    "DatasetClosed", "UploadFiles", "DeleteFiles",
    "JOB_TRANSITIONS", "TASK_TRANSITIONS", "DATASET_TRANSITIONS",
    "JOB_EVENTS", "TASK_EVENTS", "DATASET_EVENTS",
    "apply_job", "apply_task", "apply_dataset", "derive_task_state",
    "RankParams", "next_rank", "InterleavedRoundRobin",
    "TransitionError", "StaleEvent", "InvalidValue",
]


# ---- errors ----------------------------------------------------------------


class TransitionError(Conflict):
    """An event that the object's state does not allow: nothing was changed.

    ``kind`` ("job", "task", "dataset"), ``name`` (its id), ``state`` and ``event``
    say which; ``str(e)`` is the sentence.
    """

    code = "illegal_transition"

    def __init__(self, kind: str, name: Any, state: str, event: str, why: str = ""):
        self.kind, self.name, self.state, self.event = kind, name, str(state), event
        message = f"{kind} {name!r} is {state}: {event!r} is not allowed"
        super().__init__(f"{message} ({why})" if why else message)


class StaleEvent(TransitionError):
    """An event about an attempt that is no longer the job's current one: drop it."""

    code = "stale_event"


class InvalidValue(BadRequest, ValueError):
    """A bad argument (rank, count, pool, error class, policy field): nothing was changed."""

    code = "bad_value"


# ---- states ----------------------------------------------------------------


class JobState(StrEnum):
    """States of jobs and tasks (the values are what the catalog stores)."""

    DEFINED = "defined"      # created; its input may not be ready yet
    QUEUED = "queued"        # waiting for a slot in a pool
    RUNNING = "running"      # handed to a pool (an attempt is open)
    SUCCEEDED = "succeeded"  # final: outputs registered
    FAILED = "failed"        # final: no retry left or none allowed; error class kept
    RETRYING = "retrying"    # an attempt failed; waiting to be queued again
    CANCELLED = "cancelled"  # final: cancelled by a user
    LOST = "lost"            # its run vanished (hung, worker died): outputs being checked


TaskState = JobState  # a task has the same states, derived from its jobs'
FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
JOB_STATES = tuple(s.value for s in JobState)  # plain strings: what the catalog stores and queries
FINAL_STATES = tuple(s.value for s in JobState if s in FINAL)


class DatasetState(StrEnum):
    """States of datasets (upper case, as in the SPD data catalog)."""

    OPEN = "OPEN"            # files may be added
    CLOSED = "CLOSED"        # complete: no more files
    TO_UPLOAD = "TO_UPLOAD"  # marked for upload to external storage
    TO_DELETE = "TO_DELETE"  # marked for deletion of its files
    DELETED = "DELETED"      # final: files deleted


DATASET_STATES = tuple(s.value for s in DatasetState)
DATASET_FINAL = frozenset({DatasetState.DELETED})
DATASET_READABLE = frozenset({DatasetState.OPEN, DatasetState.CLOSED})  # what a run may read


def run_outcome(task_states: Iterable[str]) -> str | None:
    """The state a run ends in once all its tasks are final: ``failed`` if one failed, else
    ``cancelled`` if one was, else ``succeeded``; None while one is not final, or without tasks."""
    states = set(task_states)
    if not states or not states <= FINAL:
        return None
    for end in (JobState.FAILED, JobState.CANCELLED):
        if end in states:
            return end.value
    return JobState.SUCCEEDED.value


ERROR_TIMEOUT = "timeout"  # error class of an attempt whose heartbeat stopped
ERROR_WORKER_LOST = "worker_lost"  # error class of an attempt whose worker died
ERROR_NO_POOL = "no_pool"  # error class of a job that no pool may take


# ---- retry policy ----------------------------------------------------------


class Decision(StrEnum):
    """What a retry rule says about an error class."""

    RETRY = "retry"
    NO_RETRY = "no_retry"
    ANOTHER_POOL = "another_pool"  # retry, but never again on the pool that failed


DEFAULT_RULES = {
    ERROR_TIMEOUT: Decision.RETRY,
    ERROR_WORKER_LOST: Decision.RETRY,
    "memory": Decision.ANOTHER_POOL,
    "bad_input": Decision.NO_RETRY,
    "bad_module": Decision.NO_RETRY,
}


def _number(what: str, value: Any, *, low: float = 0.0, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidValue(f"{what} must be a finite number, not {value!r}")
    if value < low or (positive and value <= 0):
        raise InvalidValue(f"{what} must be {'above' if positive else 'at least'} {low}, not {value!r}")
    return value


def _count(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(f"{what} must be a whole number >= 0, not {value!r}")
    return value


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(f"{what} must be a non-empty string, not {value!r}")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """What to do when an attempt fails, as data.

    ``rules`` maps an error class to a ``Decision``; classes not listed get ``default``.
    A job is retried at most ``limit`` times (so it runs at most ``1 + limit`` times),
    waiting ``backoff * 2**(retries-1)`` seconds, at most ``max_backoff``, before each retry.
    """

    rules: Mapping[str, Decision] = field(default_factory=lambda: dict(DEFAULT_RULES))
    default: Decision = Decision.RETRY
    limit: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self):
        if not isinstance(self.rules, Mapping):
            raise InvalidValue(f"retry rules must map error classes to decisions, not {self.rules!r}")
        rules = {_name("an error class", k): _decision(f"the rule for {k!r}", v)
                 for k, v in self.rules.items()}
        object.__setattr__(self, "rules", MappingProxyType(rules))
        object.__setattr__(self, "default", _decision("the default rule", self.default))
        _count("the retry limit", self.limit)
        _number("the retry backoff", self.backoff)
        _number("the longest retry backoff", self.max_backoff)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """From configuration: ``{"limit": 3, "rules": {"memory": "another_pool"}, ...}``.

        The rules given are added to the default rules (``"rules": {}`` keeps them).
        """
        if not isinstance(data, Mapping):
            raise InvalidValue(f"a retry policy must be a mapping, not {data!r}")
        unknown = set(data) - {"rules", "default", "limit", "backoff", "max_backoff"}
        if unknown:
            raise InvalidValue(f"unknown retry policy field(s): {', '.join(sorted(map(str, unknown)))}")
        fields = dict(data)
        if "rules" in fields:
            if not isinstance(fields["rules"], Mapping):
                rules = fields["rules"]
                raise InvalidValue(f"retry rules must map error classes to decisions, not {rules!r}")
            fields["rules"] = {**DEFAULT_RULES, **fields["rules"]}
        return cls(**fields)

    def decide(self, error_class: str) -> Decision:
        return self.rules.get(error_class, self.default)

    def excluded_pools(self, attempts: Iterable[tuple[str | None, str | None]]) -> frozenset[str]:
        """The pools a job may not use again, from its attempts' ``(pool, error_class)``:
        what ``Job.excluded_pools`` is after them (so the catalog need not store it)."""
        return frozenset(pool for pool, error_class in attempts
                         if pool and error_class and self.decide(error_class) is Decision.ANOTHER_POOL)

    def delay(self, retries: int) -> float:
        """Seconds to wait before retry number ``retries`` (1 for the first)."""
        return min(self.max_backoff, self.backoff * 2 ** max(0, retries - 1))


def _decision(what: str, value: Any) -> Decision:
    try:
        return Decision(value)
    except ValueError:
        choices = ", ".join(d.value for d in Decision)
        raise InvalidValue(f"{what} must be one of {choices}, not {value!r}") from None


# ---- records ---------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What the state machine knows of a job (the catalog row holds more).

    ``attempts`` counts dispatches; ``pool``/``worker`` are those of the current attempt;
    ``excluded_pools`` are pools the policy said not to use again; ``error_class`` is the
    last failure's; ``retry_limit`` overrides the policy's limit for this job.
    """

    id: Hashable
    task: Hashable = None
    state: JobState = JobState.DEFINED
    attempts: int = 0
    pool: str | None = None
    worker: str | None = None
    excluded_pools: frozenset[str] = frozenset()
    error_class: str | None = None
    retry_limit: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "state", _state(JobState, "job", self.id, self.state))
        _count(f"attempts of job {self.id!r}", self.attempts)
        if self.retry_limit is not None:
            _count(f"retry limit of job {self.id!r}", self.retry_limit)
        if isinstance(self.excluded_pools, str):  # frozenset("cpu") would be its letters
            raise InvalidValue(f"excluded pools of job {self.id!r} must be a set of names, not a string")
        object.__setattr__(self, "excluded_pools", frozenset(self.excluded_pools))

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class Task:
    id: Hashable
    state: JobState = JobState.DEFINED

    def __post_init__(self):
        object.__setattr__(self, "state", _state(JobState, "task", self.id, self.state))

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class Dataset:
    name: str
    state: DatasetState = DatasetState.OPEN

    def __post_init__(self):
        object.__setattr__(self, "state", _state(DatasetState, "dataset", self.name, self.state))

    @property
    def final(self) -> bool:
        return self.state is DatasetState.DELETED


def _state(enum: type[StrEnum], kind: str, name: Any, value: Any):
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(s.value for s in enum)
        raise InvalidValue(f"{kind} {name!r} has an unknown state {value!r} (one of {choices})") from None


# ---- events ----------------------------------------------------------------
# ``attempt`` (optional) names the attempt an event is about; an older one is stale.


@dataclass(frozen=True)
class Enqueue:
    """The job's input is ready: put it in the queue."""
    name = "enqueue"


@dataclass(frozen=True)
class Dispatch:
    """The scheduler hands the job to ``pool``: a new attempt opens."""
    pool: str
    name = "dispatch"


@dataclass(frozen=True)
class Start:
    """A worker began running the attempt."""
    worker: str
    attempt: int | None = None
    name = "start"


@dataclass(frozen=True)
class Heartbeat:
    attempt: int | None = None
    name = "heartbeat"


@dataclass(frozen=True)
class Succeed:
    """The attempt finished with all its outputs written (or, when lost, they were found)."""
    attempt: int | None = None
    name = "succeed"


@dataclass(frozen=True)
class Fail:
    """The attempt failed with ``error_class`` (a key of the retry rules)."""
    error_class: str
    exit_code: int | None = None
    log: str | None = None
    attempt: int | None = None
    name = "fail"


@dataclass(frozen=True)
class HeartbeatTimeout:
    attempt: int | None = None
    name = "heartbeat_timeout"


@dataclass(frozen=True)
class WorkerLost:
    """The attempt's worker died, or the platform restarted while the job was running."""
    attempt: int | None = None
    name = "worker_lost"


@dataclass(frozen=True)
class ResultMissing:
    """Answer to ``CheckResult``: the lost attempt's outputs are not (all) there."""
    name = "result_missing"


@dataclass(frozen=True)
class Cancel:
    name = "cancel"


@dataclass(frozen=True)
class RetryDue:
    name = "retry_due"


@dataclass(frozen=True)
class Unschedulable:
    """No pool may take this queued job: it fails finally with ``error_class``."""
    error_class: str = ERROR_NO_POOL
    name = "unschedulable"


@dataclass(frozen=True)
class JobsChanged:
    """A task's jobs now have these ``counts`` by state; ``complete``: no more will be added."""
    counts: Mapping[Any, int]
    complete: bool = True
    name = "jobs_changed"


@dataclass(frozen=True)
class AddFiles:
    name = "add_files"


@dataclass(frozen=True)
class Close:
    name = "close"


@dataclass(frozen=True)
class Upload:
    name = "upload"


@dataclass(frozen=True)
class Uploaded:
    name = "uploaded"


@dataclass(frozen=True)
class Delete:
    name = "delete"


@dataclass(frozen=True)
class Deleted:
    name = "deleted"


# ---- actions: what the caller must do ------------------------------------------


@dataclass(frozen=True)
class Submit:
    """Record attempt ``attempt`` (pool, start) and hand the job to ``pool``."""
    job: Hashable
    attempt: int
    pool: str


@dataclass(frozen=True)
class RecordStart:
    job: Hashable
    attempt: int
    worker: str


@dataclass(frozen=True)
class RecordHeartbeat:
    job: Hashable
    attempt: int


@dataclass(frozen=True)
class RegisterOutputs:
    """Register the attempt's output files, in the same transaction as ``succeeded``."""
    job: Hashable
    attempt: int


@dataclass(frozen=True)
class EndAttempt:
    """Close the attempt's record: end time, ``outcome`` and error details."""
    job: Hashable
    attempt: int
    outcome: JobState
    error_class: str | None = None
    exit_code: int | None = None
    log: str | None = None


@dataclass(frozen=True)
class CancelRun:
    """Stop the attempt if it still runs (hung or cancelled); its outputs are ignored."""
    job: Hashable
    attempt: int


@dataclass(frozen=True)
class CheckResult:
    """Look for the complete outputs of a lost attempt; answer ``Succeed`` or ``ResultMissing``."""
    job: Hashable
    attempt: int


@dataclass(frozen=True)
class ScheduleRetry:
    """Send ``RetryDue`` to the job after ``delay`` seconds (drop it if the job moved on)."""
    job: Hashable
    delay: float


@dataclass(frozen=True)
class CancelJobs:
    """Send ``Cancel`` to every job of the task that is not final."""
    task: Hashable


@dataclass(frozen=True)
class DatasetClosed:
    """The dataset is complete: create the runs of matching workflow templates, finish tasks."""
    dataset: str


@dataclass(frozen=True)
class UploadFiles:
    dataset: str


@dataclass(frozen=True)
class DeleteFiles:
    dataset: str


@dataclass(frozen=True)
class Transition:
    """One move: the new ``record`` (to write) and the ``actions`` to carry out, in order."""
    kind: str
    start: str
    finish: str
    event: str
    record: Any
    actions: tuple = ()


# ---- job transitions ---------------------------------------------------------

_S = JobState
Handler = Callable[..., tuple[Any, tuple]]


def _evolve(job: Job, **changes) -> Job:
    """``replace`` without a second check: the handlers give only checked values (the
    scheduler moves every job through here, twice or more)."""
    new = object.__new__(Job)
    new.__dict__.update(job.__dict__, **changes)
    return new


def _enqueue(job: Job, ev, policy):
    return _evolve(job, state=_S.QUEUED), ()


def _dispatch(job: Job, ev: Dispatch, policy):
    pool = _name("the pool", ev.pool)
    if pool in job.excluded_pools:
        raise TransitionError("job", job.id, job.state, ev.name,
                              f"the retry policy says not to run it on pool {pool!r} again")
    attempt = job.attempts + 1
    new = _evolve(job, state=_S.RUNNING, attempts=attempt, pool=pool, worker=None)
    return new, (Submit(job.id, attempt, pool),)


def _start(job: Job, ev: Start, policy):
    worker = _name("the worker", ev.worker)
    return _evolve(job, worker=worker), (RecordStart(job.id, job.attempts, worker),)


def _heartbeat(job: Job, ev, policy):
    return job, (RecordHeartbeat(job.id, job.attempts),)


def _succeed(job: Job, ev, policy):
    # outputs first: the catalog applies both in the transaction that writes ``succeeded``
    return _evolve(job, state=_S.SUCCEEDED), (
        RegisterOutputs(job.id, job.attempts), EndAttempt(job.id, job.attempts, _S.SUCCEEDED))


def _retry_or_fail(job: Job, error_class: str, policy: RetryPolicy, end: EndAttempt):
    decision = policy.decide(error_class)
    limit = policy.limit if job.retry_limit is None else job.retry_limit
    retries = job.attempts  # the retry about to be granted would be number ``attempts``
    if decision is Decision.NO_RETRY or retries > limit:
        return _evolve(job, state=_S.FAILED, error_class=error_class), (end,)
    excluded = job.excluded_pools
    if decision is Decision.ANOTHER_POOL and job.pool is not None:
        excluded = excluded | {job.pool}
    new = _evolve(job, state=_S.RETRYING, error_class=error_class, excluded_pools=excluded)
    return new, (end, ScheduleRetry(job.id, policy.delay(retries)))


def _fail(job: Job, ev: Fail, policy):
    error_class = _name("the error class", ev.error_class)
    end = EndAttempt(job.id, job.attempts, _S.FAILED, error_class, ev.exit_code, ev.log)
    return _retry_or_fail(job, error_class, policy, end)


def _heartbeat_timeout(job: Job, ev, policy):
    # the run may still be hung somewhere: stop it before looking at what it wrote
    new = _evolve(job, state=_S.LOST, error_class=ERROR_TIMEOUT)
    return new, (CancelRun(job.id, job.attempts), CheckResult(job.id, job.attempts))


def _worker_lost(job: Job, ev, policy):
    new = _evolve(job, state=_S.LOST, error_class=ERROR_WORKER_LOST)
    return new, (CheckResult(job.id, job.attempts),)


def _result_missing(job: Job, ev, policy):
    error_class = job.error_class or ERROR_WORKER_LOST
    end = EndAttempt(job.id, job.attempts, _S.LOST, error_class)
    return _retry_or_fail(job, error_class, policy, end)


def _cancel(job: Job, ev, policy):
    actions: tuple = ()
    if job.state in (_S.RUNNING, _S.LOST):
        actions = (CancelRun(job.id, job.attempts), EndAttempt(job.id, job.attempts, _S.CANCELLED))
    return _evolve(job, state=_S.CANCELLED), actions


def _retry_due(job: Job, ev, policy):
    return _evolve(job, state=_S.QUEUED), ()


def _unschedulable(job: Job, ev: Unschedulable, policy):
    return _evolve(job, state=_S.FAILED, error_class=_name("the error class", ev.error_class)), ()


JOB_TRANSITIONS: Mapping[tuple[JobState, str], Handler] = MappingProxyType({
    (_S.DEFINED, "enqueue"): _enqueue,
    (_S.DEFINED, "cancel"): _cancel,
    (_S.QUEUED, "dispatch"): _dispatch,
    (_S.QUEUED, "cancel"): _cancel,
    (_S.QUEUED, "unschedulable"): _unschedulable,
    (_S.RUNNING, "start"): _start,
    (_S.RUNNING, "heartbeat"): _heartbeat,
    (_S.RUNNING, "succeed"): _succeed,
    (_S.RUNNING, "fail"): _fail,
    (_S.RUNNING, "heartbeat_timeout"): _heartbeat_timeout,
    (_S.RUNNING, "worker_lost"): _worker_lost,
    (_S.RUNNING, "cancel"): _cancel,
    (_S.LOST, "succeed"): _succeed,
    (_S.LOST, "result_missing"): _result_missing,
    (_S.LOST, "cancel"): _cancel,
    (_S.RETRYING, "retry_due"): _retry_due,
    (_S.RETRYING, "cancel"): _cancel,
})

JOB_EVENTS = (Enqueue, Dispatch, Start, Heartbeat, Succeed, Fail, HeartbeatTimeout,
              WorkerLost, ResultMissing, Cancel, RetryDue, Unschedulable)

DEFAULT_POLICY = RetryPolicy()


def apply_job(job: Job, event, policy: RetryPolicy = DEFAULT_POLICY) -> Transition:
    """The move ``event`` makes ``job`` do, or ``TransitionError`` (nothing changes)."""
    _check_event(event, JOB_EVENTS, "job", job)
    attempt = getattr(event, "attempt", None)
    if attempt is not None:
        _count("the attempt", attempt)
        if attempt < job.attempts:
            raise StaleEvent("job", job.id, job.state, event.name,
                             f"it is about attempt {attempt}, the current one is {job.attempts}")
        if attempt > job.attempts:
            raise TransitionError("job", job.id, job.state, event.name,
                                  f"attempt {attempt} was never dispatched; the last is {job.attempts}")
    return _apply("job", job.id, job, event, JOB_TRANSITIONS, FINAL, policy)


def _check_event(event, allowed: tuple, kind: str, record) -> None:
    if not isinstance(event, allowed):
        names = ", ".join(e.name for e in allowed)
        raise InvalidValue(f"{event!r} is not a {kind} event (one of {names})")


def _apply(kind: str, name, record, event, table: Mapping, final, *args) -> Transition:
    handler = table.get((record.state, event.name))
    if handler is None:
        if record.state in final:
            why = f"{record.state} is final"
        else:
            legal = sorted(e for (s, e) in table if s == record.state)
            why = f"allowed now: {', '.join(legal)}" if legal else "no event is allowed now"
        raise TransitionError(kind, name, record.state, event.name, why)
    new, actions = handler(record, event, *args)
    return Transition(kind, str(record.state), str(new.state), event.name, new, tuple(actions))


# ---- tasks -------------------------------------------------------------------


def derive_task_state(counts: Mapping[Any, int], complete: bool = True) -> JobState:
    """The state of a task whose jobs have these ``counts`` by state.

    ``complete``: no more jobs will be added (its input is closed and all jobs created).
    The answer depends only on which states have jobs, not on how many (the scheduler
    passes 1 for each state present: ``bookkeeping``).
    - final only when complete and every job is final: ``failed`` if any job failed
      (one bad file does not stop the others), else ``cancelled`` if any was, else
      ``succeeded`` (a complete task without jobs has nothing to do: succeeded);
    - otherwise ``running`` while any job runs or is lost; ``retrying`` when the only
      jobs left are waiting for a retry; ``running`` once any job has started or ended;
      ``queued`` when jobs wait and none has started; else ``defined``.
    """
    if not isinstance(counts, Mapping):
        raise InvalidValue(f"job counts must map states to numbers, not {counts!r}")
    n = {state: 0 for state in JobState}
    for state, value in counts.items():
        if state not in n:
            choices = ", ".join(s.value for s in JobState)
            raise InvalidValue(f"job counts name an unknown state {state!r} (one of {choices})")
        n[JobState(state)] += _count(f"the count of {state} jobs", value)
    live = sum(v for s, v in n.items() if s not in FINAL)
    if complete and not live:
        if n[_S.FAILED]:
            return _S.FAILED
        return _S.CANCELLED if n[_S.CANCELLED] else _S.SUCCEEDED
    if n[_S.RUNNING] or n[_S.LOST]:
        return _S.RUNNING
    if live and n[_S.RETRYING] == live:
        return _S.RETRYING
    if n[_S.RETRYING] or any(n[s] for s in FINAL):
        return _S.RUNNING
    return _S.QUEUED if n[_S.QUEUED] else _S.DEFINED


def _jobs_changed(task: Task, ev: JobsChanged):
    return replace(task, state=derive_task_state(ev.counts, bool(ev.complete))), ()


def _cancel_task(task: Task, ev):
    return replace(task, state=_S.CANCELLED), (CancelJobs(task.id),)


TASK_TRANSITIONS: Mapping[tuple[JobState, str], Handler] = MappingProxyType({
    **{(s, "jobs_changed"): _jobs_changed for s in JobState if s not in FINAL},
    **{(s, "cancel"): _cancel_task for s in JobState if s not in FINAL},
})

TASK_EVENTS = (JobsChanged, Cancel)


def apply_task(task: Task, event) -> Transition:
    """Derive the task's new state from its jobs, or cancel it; final tasks refuse both."""
    _check_event(event, TASK_EVENTS, "task", task)
    return _apply("task", task.id, task, event, TASK_TRANSITIONS, FINAL)


# ---- datasets ------------------------------------------------------------------

_D = DatasetState


def _to(state: DatasetState, *actions: type) -> Handler:
    def move(dataset: Dataset, ev):
        return replace(dataset, state=state), tuple(a(dataset.name) for a in actions)
    return move


DATASET_TRANSITIONS: Mapping[tuple[DatasetState, str], Handler] = MappingProxyType({
    (_D.OPEN, "add_files"): _to(_D.OPEN),
    (_D.OPEN, "close"): _to(_D.CLOSED, DatasetClosed),
    (_D.OPEN, "delete"): _to(_D.TO_DELETE, DeleteFiles),
    (_D.CLOSED, "upload"): _to(_D.TO_UPLOAD, UploadFiles),
    (_D.CLOSED, "delete"): _to(_D.TO_DELETE, DeleteFiles),
    (_D.TO_UPLOAD, "uploaded"): _to(_D.CLOSED),
    (_D.TO_UPLOAD, "delete"): _to(_D.TO_DELETE, DeleteFiles),  # the upload is abandoned
    (_D.TO_DELETE, "deleted"): _to(_D.DELETED),
})

DATASET_EVENTS = (AddFiles, Close, Upload, Uploaded, Delete, Deleted)


def apply_dataset(dataset: Dataset, event) -> Transition:
    """Files are added only while OPEN; a delete abandons an upload not yet done."""
    _check_event(event, DATASET_EVENTS, "dataset", dataset)
    return _apply("dataset", dataset.name, dataset, event, DATASET_TRANSITIONS, DATASET_FINAL)


def _dataset_moves() -> dict[str, tuple[str, ...]]:
    """{state: the states it may move to}, read off ``DATASET_TRANSITIONS``."""
    moves: dict[str, list[str]] = {s.value: [] for s in DatasetState}
    for (state, _event), handler in DATASET_TRANSITIONS.items():
        after = handler(Dataset("-", state), None)[0].state
        if after != state and after.value not in moves[state.value]:
            moves[state.value].append(after.value)
    return {state: tuple(targets) for state, targets in moves.items()}


DATASET_MOVES: Mapping[str, tuple[str, ...]] = MappingProxyType(_dataset_moves())


# ---- ranks -------------------------------------------------------------------


@dataclass(frozen=True)
class RankParams:
    """``rank_{i+1} = alpha·aging + beta·retries + gamma·rank_i``, kept within ``[floor, cap]``.

    With the defaults a rank stays as set while its task gets its share, grows by
    ``alpha`` per round it waited without a job and by ``beta`` per retried job, and never
    passes ``cap``: a poisoned task cannot climb forever. ``floor`` keeps every active task
    served at least once per round.
    """

    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 1.0
    floor: float = 1.0
    cap: float = 100.0

    def __post_init__(self):
        for what in ("alpha", "beta", "gamma"):
            _number(f"rank parameter {what}", getattr(self, what))
        _number("rank parameter floor", self.floor, positive=True)
        _number("rank parameter cap", self.cap, low=self.floor)


def next_rank(rank: float, aging: float, retries: int, params: RankParams = RankParams()) -> float:
    """A task's next rank. ``aging``: rounds it waited without a job since the last update;
    ``retries``: its jobs retried since the last update."""
    _number("the rank", rank, positive=True)
    _number("aging", aging)
    _count("retries", retries)
    value = params.alpha * aging + params.beta * retries + params.gamma * rank
    return min(params.cap, max(params.floor, value))


# ---- interleaved weighted round-robin -----------------------------------------


class InterleavedRoundRobin:
    """Which task dispatches next, by interleaved weighted round-robin over ranks.

    ``next(tasks)`` takes ``{task: (rank, pending jobs)}`` (in a stable order) and
    returns the task whose job goes next, or None when no task has a pending job.

    A round gives each active task ``allowance = floor(credit + rank)`` jobs (the fraction
    is carried to its next round, so rank 1.5 gets 1, 2, 1, 2...). The round is served in
    sub-rounds ``r = 1, 2, ...``: sub-round ``r`` gives one job to each task whose allowance
    is at least ``r``, in the mapping's order. Ranks 1:2:4 give the round
    ``A B C | B C | C | C``: shares exactly 1:2:4 per round, interleaved, and the rank-1
    task's job comes in the first sub-round. Rules:
    - ranks are read when a round is planned: a rank change counts from the next round;
    - a task with no pending job is skipped; one idle when a round is planned loses its
      credit (no saving up) and one idle for a while keeps its place in the round, so
      going idle and back never earns extra jobs;
    - a task first seen mid-round joins the current sub-round (last) with its allowance:
      at most one job of each other task comes before its first job.
    The object holds only this bookkeeping; it does no I/O and reads no clock.
    """

    def __init__(self):
        self._credit: dict[Hashable, float] = {}
        self._allowance: dict[Hashable, int] = {}  # this round's plan: serve while >= sub-round
        self._sub = 0  # current sub-round (1-based); 0 before the first round
        self._queue: list[Hashable] = []  # tasks still to serve in the current sub-round
        self.rounds = 0  # rounds planned so far

    def next(self, tasks: Mapping[Hashable, tuple[float, int]]) -> Hashable | None:
        return self._pick(self._active(tasks))

    def take(self, tasks: Mapping[Hashable, tuple[float, int]], n: int) -> list[Hashable]:
        """The next ``n`` picks (fewer when jobs run out), counting each pick off its task."""
        _count("the number of jobs to pick", n)
        pending = {task: value[1] for task, value in tasks.items()}
        active = self._active(tasks)
        picks: list[Hashable] = []
        while len(picks) < n:
            task = self._pick(active)
            if task is None:
                break
            picks.append(task)
            pending[task] -= 1
            if not pending[task]:
                del active[task]
        return picks

    def _pick(self, active: dict[Hashable, float]) -> Hashable | None:
        if not active:
            return None
        for task, rank in active.items():
            if task not in self._allowance and self._sub:  # first seen mid-round: join this sub-round
                self._plan(task, rank, self._sub - 1)
                if self._allowance[task] >= self._sub:
                    self._queue.append(task)
        while True:
            while self._queue:
                task = self._queue.pop(0)
                if task in active:
                    return task
            if self._sub >= max(self._allowance.values(), default=0):
                self._new_round(active)
            self._sub += 1
            self._queue = [t for t in active if self._allowance[t] >= self._sub]

    @staticmethod
    def _active(tasks: Mapping) -> dict[Hashable, float]:
        if not isinstance(tasks, Mapping):
            raise InvalidValue(f"tasks must map each task to (rank, pending jobs), not {tasks!r}")
        active = {}
        for task, value in tasks.items():
            if not isinstance(value, tuple | list) or len(value) != 2:
                raise InvalidValue(f"task {task!r} must have (rank, pending jobs), not {value!r}")
            rank, pending = value
            _number(f"the rank of task {task!r}", rank, positive=True)
            if _count(f"the pending jobs of task {task!r}", pending):
                active[task] = rank
        return active

    def _plan(self, task: Hashable, rank: float, served: int = 0) -> None:
        credit = self._credit.get(task, 0.0) + rank
        self._allowance[task] = served + int(credit)
        self._credit[task] = credit - int(credit)

    def _new_round(self, active: Mapping[Hashable, float]) -> None:
        self._credit = {t: c for t, c in self._credit.items() if t in active}
        self._allowance = {}
        for task, rank in active.items():
            self._plan(task, rank)
        self._sub = 0
        self.rounds += 1
