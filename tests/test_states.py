"""The pure state machine of jobs, tasks and datasets (skerry.workload.states).

No Dask, no database, no clock: every (state, event) pair of the three tables is tried,
legal pairs against a table written out here (independently of the module's), illegal
ones must be refused with ``TransitionError``. Then the retry policy, the derivation of
a task's state, the rank formula and the interleaved weighted round-robin selector.
"""

import itertools
import random
import sys

import pytest

from skerry.errors import SkerryError
from skerry.workload import states as st
from skerry.workload.states import (
    FINAL, AddFiles, Cancel, CancelJobs, CancelRun, CheckResult, Close, Dataset,
    DatasetClosed, DatasetState, Decision, Delete, Deleted, DeleteFiles, Dispatch,
    EndAttempt, Enqueue, Fail, Heartbeat, HeartbeatTimeout, InterleavedRoundRobin,
    InvalidValue, Job, JobsChanged, JobState, RankParams, RecordHeartbeat, RecordStart,
    RegisterOutputs, ResultMissing, RetryDue, RetryPolicy, ScheduleRetry, StaleEvent, Start,
    Submit, Succeed, Task, TaskState, TransitionError, Unschedulable, Upload, Uploaded,
    UploadFiles, WorkerLost,
    apply_dataset, apply_job, apply_task, derive_task_state, next_rank,
)

J = JobState
D = DatasetState

# one instance of every job event, by name
JOB_EVENTS = {
    "enqueue": Enqueue(),
    "dispatch": Dispatch("cpu"),
    "start": Start("tcp://127.0.0.1:4000"),
    "heartbeat": Heartbeat(),
    "succeed": Succeed(),
    "fail": Fail("exit_code", exit_code=2, log="logs/7.txt"),
    "heartbeat_timeout": HeartbeatTimeout(),
    "worker_lost": WorkerLost(),
    "result_missing": ResultMissing(),
    "cancel": Cancel(),
    "retry_due": RetryDue(),
    "unschedulable": Unschedulable(),
}

# (state, event) -> state after, for a job on its first attempt, default policy
JOB_TABLE = {
    (J.DEFINED, "enqueue"): J.QUEUED,
    (J.DEFINED, "cancel"): J.CANCELLED,
    (J.QUEUED, "dispatch"): J.RUNNING,
    (J.QUEUED, "cancel"): J.CANCELLED,
    (J.QUEUED, "unschedulable"): J.FAILED,
    (J.RUNNING, "start"): J.RUNNING,
    (J.RUNNING, "heartbeat"): J.RUNNING,
    (J.RUNNING, "succeed"): J.SUCCEEDED,
    (J.RUNNING, "fail"): J.RETRYING,
    (J.RUNNING, "heartbeat_timeout"): J.LOST,
    (J.RUNNING, "worker_lost"): J.LOST,
    (J.RUNNING, "cancel"): J.CANCELLED,
    (J.LOST, "succeed"): J.SUCCEEDED,
    (J.LOST, "result_missing"): J.RETRYING,
    (J.LOST, "cancel"): J.CANCELLED,
    (J.RETRYING, "retry_due"): J.QUEUED,
    (J.RETRYING, "cancel"): J.CANCELLED,
}


def job_in(state, **kw):
    """A job in ``state`` as the machine would leave it (one attempt made once dispatched)."""
    started = state not in (J.DEFINED, J.QUEUED)
    fields = dict(id=7, task=3, state=state, attempts=1 if started else 0, pool="cpu" if started else None)
    if state is J.LOST:
        fields["error_class"] = "timeout"
    fields.update(kw)
    return Job(**fields)


def test_final_states_are_succeeded_failed_cancelled():
    assert FINAL == {J.SUCCEEDED, J.FAILED, J.CANCELLED}
    assert TaskState is JobState
    assert {s.value for s in J} == {"defined", "queued", "running", "succeeded", "failed",
                                    "retrying", "cancelled", "lost"}


def test_module_job_table_is_the_documented_one():
    assert set(st.JOB_TRANSITIONS) == set(JOB_TABLE)
    assert {e.name for e in st.JOB_EVENTS} == set(JOB_EVENTS)


@pytest.mark.parametrize("state,event", list(itertools.product(J, JOB_EVENTS)))
def test_every_job_state_and_event(state, event):
    job = job_in(state)
    if (state, event) in JOB_TABLE:
        t = apply_job(job, JOB_EVENTS[event])
        assert (t.kind, t.start, t.event) == ("job", state, event)
        assert t.finish == JOB_TABLE[state, event] == t.record.state
        assert t.record.id == 7 and t.record.task == 3
    else:
        with pytest.raises(TransitionError) as e:
            apply_job(job, JOB_EVENTS[event])
        assert isinstance(e.value, SkerryError)
        assert (e.value.kind, e.value.name, e.value.state, e.value.event) == ("job", 7, state, event)
        assert f"job 7 is {state}: '{event}' is not allowed" in str(e.value)
        if state in FINAL:
            assert f"{state} is final" in str(e.value)
        else:
            assert "allowed now: " in str(e.value)
        assert job == job_in(state)  # unchanged


def test_refusal_lists_what_is_allowed():
    with pytest.raises(TransitionError, match=r"job 7 is queued: 'succeed' is not allowed "
                                              r"\(allowed now: cancel, dispatch, unschedulable\)"):
        apply_job(job_in(J.QUEUED), Succeed())


def test_final_states_never_change_on_any_event_sequence():
    """A seeded random walk of 20,000 events over 200 jobs: once final, a job never moves."""
    rng = random.Random(4)
    events = list(JOB_EVENTS.values()) + [Fail("memory"), Fail("bad_input"), Dispatch("gpu")]
    weights = [1 if isinstance(e, Cancel) else 10 for e in events]  # cancel rarely: jobs live longer
    policy = RetryPolicy(limit=2)
    jobs = {i: Job(i) for i in range(200)}
    finals = {}
    moves = 0
    for _ in range(20_000):
        i = rng.randrange(200)
        try:
            t = apply_job(jobs[i], rng.choices(events, weights)[0], policy)
        except TransitionError:
            continue
        assert i not in finals, f"final job {i} moved"
        moves += 1
        jobs[i] = t.record
        assert t.record.attempts <= 1 + policy.limit
        if t.record.final:
            finals[i] = t.record
    # most jobs ended after a few moves each (a few wait for a pool not yet excluded)
    assert len(finals) > 150 and moves > 4 * 150
    assert {j.state for j in finals.values()} == FINAL
    for job in finals.values():
        for event in events:
            with pytest.raises(TransitionError, match="is final"):
                apply_job(job, event, policy)


# ---- actions ----------------------------------------------------------------


def test_happy_path_actions():
    job = Job("j1", task="t1")
    t = apply_job(job, Enqueue())
    assert t.actions == ()
    t = apply_job(t.record, Dispatch("cpu"))
    assert t.actions == (Submit("j1", 1, "cpu"),)
    assert (t.record.attempts, t.record.pool) == (1, "cpu")
    t = apply_job(t.record, Start("w1", attempt=1))
    assert t.actions == (RecordStart("j1", 1, "w1"),) and t.record.worker == "w1"
    t = apply_job(t.record, Heartbeat(attempt=1))
    assert t.actions == (RecordHeartbeat("j1", 1),) and t.record.state is J.RUNNING
    t = apply_job(t.record, Succeed(attempt=1))
    # outputs are registered by this move only, which a final state makes happen once
    assert t.actions == (RegisterOutputs("j1", 1), EndAttempt("j1", 1, J.SUCCEEDED))
    assert t.record.state is J.SUCCEEDED


def test_hung_job_is_stopped_checked_then_retried():
    job = job_in(J.RUNNING)
    t = apply_job(job, HeartbeatTimeout())
    assert t.record.state is J.LOST and t.record.error_class == "timeout"
    assert t.actions == (CancelRun(7, 1), CheckResult(7, 1))
    t = apply_job(t.record, ResultMissing())
    assert t.record.state is J.RETRYING and t.record.error_class == "timeout"
    assert t.actions == (EndAttempt(7, 1, J.LOST, "timeout"), ScheduleRetry(7, 1.0))
    t = apply_job(t.record, RetryDue())
    assert t.record.state is J.QUEUED and t.actions == ()
    t = apply_job(t.record, Dispatch("cpu"))
    assert t.actions == (Submit(7, 2, "cpu"),)


def test_lost_job_whose_outputs_are_found_is_not_run_again():
    t = apply_job(job_in(J.RUNNING), WorkerLost())
    assert t.record.state is J.LOST and t.record.error_class == "worker_lost"
    assert t.actions == (CheckResult(7, 1),)  # the worker is gone: nothing to stop
    t = apply_job(t.record, Succeed())
    assert t.record.state is J.SUCCEEDED and t.record.attempts == 1
    assert t.actions == (RegisterOutputs(7, 1), EndAttempt(7, 1, J.SUCCEEDED))


def test_cancel_stops_a_running_attempt_only_when_there_is_one():
    assert apply_job(job_in(J.RUNNING), Cancel()).actions == (CancelRun(7, 1), EndAttempt(7, 1, J.CANCELLED))
    assert apply_job(job_in(J.LOST), Cancel()).actions == (CancelRun(7, 1), EndAttempt(7, 1, J.CANCELLED))
    for state in (J.DEFINED, J.QUEUED, J.RETRYING):
        assert apply_job(job_in(state), Cancel()).actions == ()


def test_events_of_an_older_attempt_are_stale():
    job = job_in(J.RUNNING, attempts=2)
    for event in (Start("w", attempt=1), Heartbeat(attempt=1), Succeed(attempt=1),
                  Fail("exit_code", attempt=1), HeartbeatTimeout(attempt=1), WorkerLost(attempt=1)):
        with pytest.raises(StaleEvent, match="about attempt 1, the current one is 2"):
            apply_job(job, event)
    with pytest.raises(TransitionError, match="attempt 3 was never dispatched") as e:
        apply_job(job, Succeed(attempt=3))
    assert not isinstance(e.value, StaleEvent)
    # the stale success of attempt 1 after a retry was queued: dropped, not registered
    with pytest.raises(StaleEvent):
        apply_job(job_in(J.QUEUED, attempts=1), Succeed(attempt=0))


def test_bad_event_arguments_are_refused():
    with pytest.raises(InvalidValue, match="the pool must be a non-empty string"):
        apply_job(job_in(J.QUEUED), Dispatch(""))
    with pytest.raises(InvalidValue, match="the error class must be a non-empty string"):
        apply_job(job_in(J.RUNNING), Fail(None))
    with pytest.raises(InvalidValue, match="the worker must be"):
        apply_job(job_in(J.RUNNING), Start(""))
    with pytest.raises(InvalidValue, match="is not a job event"):
        apply_job(job_in(J.RUNNING), Close())
    with pytest.raises(InvalidValue, match="is not a job event"):
        apply_job(job_in(J.RUNNING), "succeed")
    with pytest.raises(InvalidValue, match="job 1 has an unknown state 'done'"):
        Job(1, state="done")
    with pytest.raises(InvalidValue, match="attempts of job 1"):
        Job(1, attempts=-1)
    assert Job(1, state="queued").state is J.QUEUED  # the catalog's strings are accepted
    with pytest.raises(InvalidValue, match="excluded pools of job 1 must be a set of names"):
        Job(1, excluded_pools="cpu")


# ---- retry policy -----------------------------------------------------------------


def run_until_final(job, error_class, policy, pool="cpu"):
    """Dispatch and fail ``job`` until it is final; the transitions of every step."""
    steps = []
    job = apply_job(job, Enqueue(), policy).record
    while True:
        job = apply_job(job, Dispatch(pool), policy).record
        t = apply_job(job, Fail(error_class, exit_code=1, log=f"logs/{job.attempts}.txt"), policy)
        steps.append(t)
        job = t.record
        if job.final:
            return steps
        job = apply_job(job, RetryDue(), policy).record


def test_retry_limit_reached_fails_with_the_error_class():
    policy = RetryPolicy(limit=3, backoff=2.0, max_backoff=5.0)
    steps = run_until_final(Job("j"), "exit_code", policy)
    assert len(steps) == 4  # 1 + limit runs
    last = steps[-1].record
    assert (last.state, last.error_class, last.attempts) == (J.FAILED, "exit_code", 4)
    assert steps[-1].actions == (EndAttempt("j", 4, J.FAILED, "exit_code", 1, "logs/4.txt"),)
    delays = [a.delay for t in steps for a in t.actions if isinstance(a, ScheduleRetry)]
    assert delays == [2.0, 4.0, 5.0]  # doubling, capped at max_backoff


def test_limit_zero_and_per_job_limit():
    assert len(run_until_final(Job("j"), "exit_code", RetryPolicy(limit=0))) == 1
    assert len(run_until_final(Job("j", retry_limit=1), "exit_code", RetryPolicy(limit=5))) == 2


def test_lost_attempts_count_toward_the_limit():
    policy = RetryPolicy(limit=1)
    job = apply_job(job_in(J.RUNNING), WorkerLost(), policy).record
    job = apply_job(job, ResultMissing(), policy).record
    assert job.state is J.RETRYING
    job = apply_job(apply_job(job, RetryDue(), policy).record, Dispatch("cpu"), policy).record
    job = apply_job(apply_job(job, HeartbeatTimeout(), policy).record, ResultMissing(), policy).record
    assert (job.state, job.error_class, job.attempts) == (J.FAILED, "timeout", 2)


def test_no_retry_error_fails_at_once():
    steps = run_until_final(Job("j"), "bad_input", RetryPolicy(limit=5))
    assert len(steps) == 1 and steps[0].record.state is J.FAILED
    assert steps[0].record.error_class == "bad_input"


def test_another_pool_is_recommended_and_enforced():
    policy = RetryPolicy(rules={"memory": "another_pool"})
    t = apply_job(job_in(J.RUNNING, pool="small"), Fail("memory"), policy)
    assert t.record.state is J.RETRYING and t.record.excluded_pools == {"small"}
    queued = apply_job(t.record, RetryDue(), policy).record
    with pytest.raises(TransitionError, match="not to run it on pool 'small' again") as e:
        apply_job(queued, Dispatch("small"), policy)
    assert (e.value.state, e.value.event) == ("queued", "dispatch")
    t = apply_job(queued, Dispatch("big"), policy)
    assert t.actions == (Submit(7, 2, "big"),)
    t = apply_job(t.record, Fail("memory"), policy)
    assert t.record.excluded_pools == {"small", "big"}


def test_job_no_pool_may_take_fails_with_no_pool():
    job = job_in(J.QUEUED, attempts=1, excluded_pools={"cpu", "gpu"})
    t = apply_job(job, Unschedulable())
    assert (t.record.state, t.record.error_class, t.actions) == (J.FAILED, "no_pool", ())
    assert apply_job(job, Unschedulable("needs_gpu")).record.error_class == "needs_gpu"


def test_excluded_pools_come_back_from_the_attempts():
    """After a restart the catalog's attempt rows give the same exclusions as the machine's."""
    policy = RetryPolicy(rules={"memory": "another_pool"})
    job = job_in(J.RUNNING, pool="small")
    rows = []
    for pool, error in [("small", "memory"), ("big", "exit_code"), ("huge", "memory")]:
        job = apply_job(job, RetryDue(), policy).record if job.state is J.RETRYING else job
        job = apply_job(job, Dispatch(pool), policy).record if job.state is J.QUEUED else job
        job = apply_job(job, Fail(error), policy).record
        rows.append((pool, error))
    assert job.excluded_pools == {"small", "huge"}
    assert policy.excluded_pools(rows + [(None, None), ("cpu", None)]) == job.excluded_pools


def test_policy_rules_as_data():
    policy = RetryPolicy.from_dict({"limit": 2, "rules": {"exit_code": "no_retry", "oom": "another_pool"},
                                    "default": "retry"})
    assert policy.decide("exit_code") is Decision.NO_RETRY
    assert policy.decide("oom") is Decision.ANOTHER_POOL
    assert policy.decide("timeout") is Decision.RETRY  # default rules kept
    assert policy.decide("anything else") is Decision.RETRY
    assert RetryPolicy(default="no_retry").decide("anything else") is Decision.NO_RETRY
    with pytest.raises(TypeError):
        policy.rules["x"] = Decision.RETRY  # read-only


@pytest.mark.parametrize("data,message", [
    ({"limit": -1}, "the retry limit must be a whole number >= 0"),
    ({"limit": 1.5}, "the retry limit must be a whole number"),
    ({"rules": {"oom": "sometimes"}}, "the rule for 'oom' must be one of retry, no_retry, another_pool"),
    ({"rules": ["oom"]}, "retry rules must map error classes"),
    ({"rules": {"": "retry"}}, "an error class must be a non-empty string"),
    ({"default": "never"}, "the default rule must be one of"),
    ({"backoff": -1}, "the retry backoff must be at least 0"),
    ({"backoff": float("nan")}, "the retry backoff must be a finite number"),
    ({"retries": 3}, "unknown retry policy field"),
])
def test_bad_policy_is_refused(data, message):
    with pytest.raises(InvalidValue, match=message):
        RetryPolicy.from_dict(data)


# ---- tasks ----------------------------------------------------------------------


@pytest.mark.parametrize("state,event", list(itertools.product(J, ["jobs_changed", "cancel"])))
def test_every_task_state_and_event(state, event):
    task = Task(3, state)
    ev = JobsChanged({J.SUCCEEDED: 2}) if event == "jobs_changed" else Cancel()
    if state in FINAL:
        with pytest.raises(TransitionError, match=f"task 3 is {state}: '{event}' is not allowed .*is final"):
            apply_task(task, ev)
        return
    t = apply_task(task, ev)
    if event == "cancel":
        assert t.record.state is J.CANCELLED and t.actions == (CancelJobs(3),)
    else:
        assert t.record.state is J.SUCCEEDED and t.actions == ()


def test_module_task_table_is_the_documented_one():
    live = [s for s in J if s not in FINAL]
    assert set(st.TASK_TRANSITIONS) == {(s, e) for s in live for e in ("jobs_changed", "cancel")}


@pytest.mark.parametrize("counts,complete,expected", [
    ({}, False, J.DEFINED),
    ({}, True, J.SUCCEEDED),  # nothing to do
    ({J.DEFINED: 5}, True, J.DEFINED),
    ({J.DEFINED: 2, J.QUEUED: 3}, True, J.QUEUED),
    ({J.QUEUED: 3, J.RUNNING: 1}, True, J.RUNNING),
    ({J.QUEUED: 3, J.LOST: 1}, True, J.RUNNING),
    ({J.QUEUED: 3, J.SUCCEEDED: 1}, True, J.RUNNING),
    ({J.SUCCEEDED: 3, J.RETRYING: 2}, True, J.RETRYING),
    ({J.RETRYING: 2, J.QUEUED: 1}, True, J.RUNNING),
    ({J.SUCCEEDED: 3}, True, J.SUCCEEDED),
    ({J.SUCCEEDED: 3}, False, J.RUNNING),  # upstream still streaming files in
    ({J.SUCCEEDED: 3, J.FAILED: 1}, True, J.FAILED),
    ({J.SUCCEEDED: 3, J.FAILED: 1, J.RUNNING: 1}, True, J.RUNNING),  # the others go on
    ({J.SUCCEEDED: 3, J.CANCELLED: 2}, True, J.CANCELLED),
    ({J.FAILED: 1, J.CANCELLED: 2}, True, J.FAILED),
    ({"succeeded": 2, "defined": 0}, True, J.SUCCEEDED),
])
def test_task_state_is_derived_from_its_jobs(counts, complete, expected):
    assert derive_task_state(counts, complete) is expected


def test_a_task_state_depends_only_on_which_states_its_jobs_are_in():
    # the scheduler reads which states a task's jobs are in, not how many (a count read
    # every job of a 100,000-job task: 16 ms a pass), so the answer must not change with counts
    states = list(J)
    for mask in range(1 << len(states)):
        present = [s for i, s in enumerate(states) if mask >> i & 1]
        for complete in (False, True):
            expected = derive_task_state(dict.fromkeys(present, 1), complete)
            for many in (2, 7, 100_000):
                for bumped in present:
                    counts = {s: (many if s is bumped else 1) for s in present}
                    assert derive_task_state(counts, complete) is expected, (counts, complete)


def test_task_ends_once_and_stays():
    task = Task("t")
    for counts, state in [({J.QUEUED: 2}, J.QUEUED), ({J.RUNNING: 1, J.QUEUED: 1}, J.RUNNING),
                          ({J.SUCCEEDED: 1, J.FAILED: 1}, J.FAILED)]:
        task = apply_task(task, JobsChanged(counts)).record
        assert task.state is state
    with pytest.raises(TransitionError, match="failed is final"):
        apply_task(task, JobsChanged({J.SUCCEEDED: 2}))


def test_bad_counts_are_refused():
    with pytest.raises(InvalidValue, match="job counts name an unknown state 'done' \\(one of defined, "):
        derive_task_state({"done": 1})
    with pytest.raises(InvalidValue, match="the count of queued jobs must be a whole number"):
        derive_task_state({J.QUEUED: -1})
    with pytest.raises(InvalidValue, match="job counts must map"):
        derive_task_state([1, 2])


# ---- datasets -----------------------------------------------------------------------

DATASET_EVENTS = {"add_files": AddFiles(), "close": Close(), "upload": Upload(),
                  "uploaded": Uploaded(), "delete": Delete(), "deleted": Deleted()}

DATASET_TABLE = {
    (D.OPEN, "add_files"): (D.OPEN, ()),
    (D.OPEN, "close"): (D.CLOSED, (DatasetClosed("raw.run1"),)),
    (D.OPEN, "delete"): (D.TO_DELETE, (DeleteFiles("raw.run1"),)),
    (D.CLOSED, "upload"): (D.TO_UPLOAD, (UploadFiles("raw.run1"),)),
    (D.CLOSED, "delete"): (D.TO_DELETE, (DeleteFiles("raw.run1"),)),
    (D.TO_UPLOAD, "uploaded"): (D.CLOSED, ()),
    (D.TO_UPLOAD, "delete"): (D.TO_DELETE, (DeleteFiles("raw.run1"),)),
    (D.TO_DELETE, "deleted"): (D.DELETED, ()),
}


def test_module_dataset_table_is_the_documented_one():
    assert set(st.DATASET_TRANSITIONS) == set(DATASET_TABLE)


@pytest.mark.parametrize("state,event", list(itertools.product(D, DATASET_EVENTS)))
def test_every_dataset_state_and_event(state, event):
    dataset = Dataset("raw.run1", state)
    if (state, event) in DATASET_TABLE:
        t = apply_dataset(dataset, DATASET_EVENTS[event])
        assert (t.record.state, t.actions) == DATASET_TABLE[state, event]
    else:
        with pytest.raises(TransitionError, match=f"dataset 'raw.run1' is {state}: '{event}' is not allowed"):
            apply_dataset(dataset, DATASET_EVENTS[event])


def test_files_only_while_open_and_deleted_is_final():
    with pytest.raises(TransitionError,
                       match=r"is CLOSED: 'add_files' is not allowed \(allowed now: delete, upload\)"):
        apply_dataset(Dataset("d", D.CLOSED), AddFiles())
    assert Dataset("d", D.DELETED).final
    with pytest.raises(TransitionError, match="DELETED is final"):
        apply_dataset(Dataset("d", D.DELETED), Close())


# ---- ranks -----------------------------------------------------------------------------


def test_rank_formula():
    p = RankParams(alpha=0.5, beta=2.0, gamma=0.9, floor=1.0, cap=50.0)
    assert next_rank(10.0, aging=4, retries=3, params=p) == pytest.approx(0.5 * 4 + 2.0 * 3 + 0.9 * 10)
    assert next_rank(4.0, aging=0, retries=0) == 4.0  # defaults: a served task keeps its rank
    assert next_rank(4.0, aging=2, retries=1) == 4.0 + 2 * 1.0 + 0.5


def test_rank_is_capped_and_floored():
    p = RankParams(alpha=1.0, beta=5.0, gamma=1.0, floor=1.0, cap=20.0)
    rank = 1.0
    for _ in range(1_000):  # a poisoned task: retries at every update
        rank = next_rank(rank, aging=3, retries=10, params=p)
        assert rank <= 20.0
    assert rank == 20.0
    assert next_rank(5.0, aging=0, retries=0, params=RankParams(gamma=0.1)) == 1.0


@pytest.mark.parametrize("args,message", [
    ((0, 0, 0), "the rank must be above 0"),
    ((float("inf"), 0, 0), "the rank must be a finite number"),
    ((1, -1, 0), "aging must be at least 0"),
    ((1, 0, -2), "retries must be a whole number"),
    ((1, 0, 0.5), "retries must be a whole number"),
])
def test_bad_rank_input(args, message):
    with pytest.raises(InvalidValue, match=message):
        next_rank(*args)


def test_bad_rank_params():
    with pytest.raises(InvalidValue, match="rank parameter cap must be at least 10"):
        RankParams(floor=10, cap=5)
    with pytest.raises(InvalidValue, match="rank parameter floor must be above 0"):
        RankParams(floor=0)
    with pytest.raises(InvalidValue, match="rank parameter alpha must be at least 0"):
        RankParams(alpha=-1)


# ---- interleaved weighted round-robin ---------------------------------------------------


def test_one_round_of_ranks_1_2_4_is_interleaved():
    picks = InterleavedRoundRobin().take({"A": (1, 100), "B": (2, 100), "C": (4, 100)}, 14)
    assert "".join(picks) == "ABCBCCC" * 2


@pytest.mark.parametrize("ranks", [(1, 2, 4), (1.0, 2.0, 4.0), (2.5, 5, 10), (1.3, 2.6, 5.2)])
def test_shares_within_5_percent_over_every_sliding_window_of_1000(ranks):
    """Sliding windows: every run of 1,000 consecutive dispatches, at every offset."""
    tasks = {"A": (ranks[0], 10**9), "B": (ranks[1], 10**9), "C": (ranks[2], 10**9)}
    picks = InterleavedRoundRobin().take(tasks, 20_000)
    total = sum(ranks)
    for name, rank in zip("ABC", ranks):
        expected = 1000 * rank / total
        prefix = list(itertools.accumulate((p == name for p in picks), initial=0))
        counts = [prefix[i + 1000] - prefix[i] for i in range(len(picks) - 1000 + 1)]
        assert abs(min(counts) - expected) <= 0.05 * expected, (name, min(counts), expected)
        assert abs(max(counts) - expected) <= 0.05 * expected, (name, max(counts), expected)


def test_picks_in_small_windows_are_the_same_sequence():
    """The scheduler fills a bounded window per pool (about 2x its slots) at a time."""
    tasks = {"A": (1, 10**6), "B": (2, 10**6), "C": (4, 10**6)}
    whole = InterleavedRoundRobin().take(tasks, 5_000)
    selector, windows = InterleavedRoundRobin(), []
    while len(windows) < 5_000:
        windows += selector.take(tasks, 16)
    assert windows[:5_000] == whole
    selector, one_by_one = InterleavedRoundRobin(), []
    for _ in range(5_000):
        one_by_one.append(selector.next(tasks))
    assert one_by_one == whole


def test_rank_1_task_gets_its_first_job_within_one_round():
    tasks = {"A": (1, 10**6), "B": (2, 10**6), "C": (4, 10**6)}
    first = InterleavedRoundRobin().take(tasks, 7)
    assert "A" in first and first.index("A") == 0
    # a rank-1 task arriving at any point: at most one job of each other task comes first
    for arrival in range(60):
        selector = InterleavedRoundRobin()
        selector.take(tasks, arrival)
        late = {**tasks, "D": (1, 5)}
        wait = selector.take(late, 7 + 1)  # one round with D
        assert "D" in wait[:4], (arrival, wait)


def test_rank_1_task_is_not_starved_by_a_huge_rank():
    picks = InterleavedRoundRobin().take({"big": (100, 10**6), "small": (1, 10**6)}, 101)
    assert picks[:2] == ["big", "small"] and picks.count("small") == 1


def test_tasks_without_pending_jobs_are_skipped_and_do_not_save_up():
    selector = InterleavedRoundRobin()
    assert selector.next({"A": (1, 0), "B": (2, 0)}) is None
    assert selector.take({"A": (1, 2), "B": (4, 100)}, 20).count("A") == 2  # runs out, B goes on
    # a task flickering between 0 and 1 pending jobs (streaming input) gets no more than its rank
    selector = InterleavedRoundRobin()
    picks = []
    for _ in range(700):
        pending_a = 1 if len(picks) % 2 == 0 else 0
        picks.append(selector.next({"A": (1, pending_a), "B": (2, 10**6), "C": (4, 10**6)}))
    assert picks.count("A") <= 100


def test_live_rank_change_counts_from_the_next_round():
    selector = InterleavedRoundRobin()
    tasks = {"A": (1, 10**6), "B": (1, 10**6)}
    assert selector.take(tasks, 2) == ["A", "B"]
    tasks["B"] = (3, 10**6)
    picks = selector.take(tasks, 4 * 100)
    assert picks[:4] == ["A", "B", "B", "B"]
    assert picks.count("B") == 3 * picks.count("A")


def test_take_counts_off_pending_jobs():
    assert sorted(InterleavedRoundRobin().take({"A": (1, 1), "B": (4, 2)}, 10)) == ["A", "B", "B"]


@pytest.mark.parametrize("tasks,message", [
    ({"A": (0, 1)}, "the rank of task 'A' must be above 0"),
    ({"A": (1, -1)}, "the pending jobs of task 'A' must be a whole number"),
    ({"A": 1}, r"task 'A' must have \(rank, pending jobs\)"),
    ([("A", 1, 1)], "tasks must map each task"),
])
def test_bad_selector_input(tasks, message):
    with pytest.raises(InvalidValue, match=message):
        InterleavedRoundRobin().next(tasks)


def test_no_dask_and_no_database_imported():
    """The module stands alone (runs in a fresh interpreter to see its own imports)."""
    import subprocess
    code = ("import sys, skerry.workload.states; "
            "bad = ('distributed', 'dask', 'sqlalchemy', 'psycopg', 'sqlite3'); "
            "print(','.join(m for m in bad if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_are_exactly_all():
    public = {name for name, value in vars(st).items()
              if not name.startswith("_") and getattr(value, "__module__", None) == st.__name__}
    assert public <= set(st.__all__)
    assert all(hasattr(st, name) for name in st.__all__)


def test_dataset_moves_agree_with_the_catalog():
    """The catalog checks the moves read off the state machine: one table, not two."""
    from skerry.workload.catalog import DATASET_MOVES
    assert DATASET_MOVES is st.DATASET_MOVES
    ours = {}
    for (state, _event), handler in st.DATASET_TRANSITIONS.items():
        after = handler(Dataset("d", state), None)[0].state
        if after != state:
            ours.setdefault(state.value, set()).add(after.value)
    assert ours == {k: set(v) for k, v in DATASET_MOVES.items() if v}
