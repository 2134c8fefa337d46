"""The Dask runner: the only module that touches ``distributed.Client``.

A :class:`Runner` holds named *pools*; each is a Dask client (or a scheduler address) and
what a worker must declare to belong to it::

    runner = Runner({"cpu": Pool(client), "gpu": Pool(client, needs={"GPU": 1})})
    runner.submit("cpu", spec)                      # an attempt of a job (a JobSpec), one Dask task
    runner.submit_batches("cpu", [[s1, s2], [s3]])  # several, short ones sharing a Dask task
    runner.events(timeout=0.1)                      # what happened since: Started, Beat, Finished

Rules:
- one Dask task per *batch* of job attempts (one attempt, or several short ones run one
  after the other by ``execute_batch``), keyed ``("skerry-batch-<job>-<attempt>-<token>",)``
  after its first attempt, never retried by Dask on an error (the catalog's retry policy
  decides); every attempt of a batch is reported on its own, once. The key is a tuple so
  that each batch is a Dask task group of its own, and Dask sends it to the least busy
  worker: batches keyed by strings share one group, and Dask sends a large group's
  tasks to one worker in runs (its root-task co-assignment), so a refill's batches queued
  on one worker while the other idled, 0.2-0.4 s at a time in a 100,000-job run;
- a pool with ``needs`` (``{"GPU": 1}``) runs its jobs only on workers declaring those
  resources (Dask resources); a pool without runs its jobs preferably on workers that
  declare none of the other pools' needs, so CPU jobs never queue behind GPU jobs
  (``allow_other_workers``: when no such worker is left, any worker will do);
- ``slots(pool)`` is what the pool can run at once: the threads of its workers, or for a
  pool with needs the units of its scarcest resource they declare;
- on the worker, each job runs in the task's thread (``run_job``) while one side thread of
  the worker process (for all its attempts: no thread is started per job) sends its
  ``start`` once it ran ``START_DELAY`` s, then a ``Beat`` every ``spec.heartbeat``
  seconds, through Dask's event log (topic ``skerry-job``). A job's end (its result, how
  long it took, and its start if that was not sent on its own) joins the worker's
  outbox, sent as one ``ends`` event when its batch is over, when the next job of the
  batch starts ``FLUSH`` s after the oldest end waiting, or just before the side thread
  sends a start or a beat: a batch of short jobs costs one event, and a job that runs
  long never holds back the ends of the jobs before it. A start is always sent before
  its end. A hung job stops beating only if its worker freezes, so the scheduler also
  times a job from its ``Started`` (``spec.timeout``);
- before each job but the first, a batch stops if Dask cancelled its task (the runner
  did: see ``cancel``); the jobs of a batch behind one that runs long wait for it (the
  scheduler batches only jobs measured short), until it ends or is timed out;
- a failed job's log text is written beside its outputs (``<output>/.skerry-logs/
  <job>.<attempt>.log``) when its executor kept none, so every failure has a log location;
- an end event carries the job's result as a plain dict (its log text capped at
  ``EVENT_LOG`` characters; the whole log stays in the task's value and the log file), so
  no gather round trip is needed; the future's done callback reports only errors, cancels
  and lost batches, and a batch that finished without the end events of all its attempts
  arriving within ``END_GRACE`` s is gathered for those. The events and the future's
  completion may come in either order: each attempt is reported once, and the end of an
  attempt the runner forgot (``cancel``) is dropped;
- ``Finished.lost`` is True when Dask lost the attempt (its worker died: ``KilledWorker``,
  or the future was cancelled by anyone but us): every attempt of a lost batch that was
  not reported yet is lost, the ones reported stay as they are; run the pools with
  ``distributed.scheduler.allowed-failures: 0`` so every dead worker reaches the catalog
  as attempts instead of Dask re-running them itself;
- one runner per Dask client at a time: it subscribes to the client's ``skerry-job``
  topic, and a newer runner on the same client takes those events over;
- ``cancel(job, attempt)`` forgets the attempt: its result, if it comes, is dropped; the
  other attempts of its batch go on. If the runner had its ``Started`` (it is running: a
  hung job timed out, or a running job cancelled), the attempts after it in its batch,
  which did not start, are submitted again as a batch of their own (same attempts, on
  another worker of the pool if it has one) and the old batch's task is cancelled, so
  they never wait behind it. (A thread on a worker
  cannot be stopped; a hung job's thread lingers until it returns. A cancelled attempt
  that has not started yet may still run; its result is dropped.)
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["Pool", "JobSpec", "Started", "Beat", "Finished", "Runner", "execute_batch", "TOPIC", "LOG_DIR"]

TOPIC = "skerry-job"
LOG_DIR = ".skerry-logs"
INFO_AGE = 1.0  # seconds a look at a pool's workers is reused
START_DELAY = 0.05  # seconds an attempt runs before its start is sent on its own
FLUSH = 0.1  # seconds an end waits in a worker's outbox at most while its batch goes on
END_GRACE = 2.0  # seconds a finished batch waits for its end events before it is gathered
EVENT_LOG = 64 * 1024  # characters of a job's log carried in its end event (the tail)


@dataclass
class Pool:
    """A Dask client (or scheduler address) and the resources its workers must declare."""

    client: Any
    needs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """One attempt of one job, as the worker gets it (plain data: it is pickled)."""

    job: int
    attempt: int
    module: dict  # the module spec (JSON)
    inputs: dict  # pin -> [url, ...]
    output: str  # folder URL of the outputs
    params: dict
    timeout: float | None = None
    heartbeat: float = 5.0
    adaptors: str | None = None  # the owner's adaptor configuration (``owners``); None: the worker's own
    owner: str | None = None  # the hub user whose job it is (``userpools`` runs it on their cluster)


@dataclass(frozen=True)
class Started:
    job: int
    attempt: int
    worker: str
    at: float  # the worker's clock (time.time())


@dataclass(frozen=True)
class Beat:
    job: int
    attempt: int


@dataclass(frozen=True)
class Finished:
    """An attempt ended: ``result`` (a JobResult) when it ran, else ``lost`` or ``error``."""

    job: int
    attempt: int
    result: Any = None
    worker: str | None = None
    lost: bool = False
    error: str | None = None  # what went wrong outside the job (the runner's own failure)
    took: float | None = None  # seconds the job held its worker (the work around it included)


# ---- on the worker ----


def execute_batch(specs: list[JobSpec]) -> dict:
    """Run attempts one after the other on a Dask worker (module docstring); a plain dict
    back: ``{"worker": address, "results": [(job, attempt, JobResult), ...]}``."""
    from distributed import get_worker

    worker = get_worker()
    key = _task_key()
    results = []
    raw = module = None  # a batch's jobs mostly share their task's module: validated once
    since = time.perf_counter()
    for i, spec in enumerate(specs):
        if i and _cancelled(worker, key):  # the runner gave the rest to another batch
            break
        if spec.module is not raw and spec.module != raw:  # (the same object, or an equal copy)
            raw, module = spec.module, _validated(spec.module)
        results.append((spec.job, spec.attempt, _run(worker, spec, module, last=i == len(specs) - 1, since=since)))
        since = time.perf_counter()
    _BEATS.flush(worker)
    return {"worker": worker.address, "results": results}


def _validated(module: dict):
    """The module spec validated once for its batch; as it is if invalid (its jobs fail
    with the reason, as ``run_job`` says it)."""
    from .modules import load_module

    try:
        return load_module(module)
    except ConfigError:
        return module


def _run(worker, spec: JobSpec, module, last: bool, since: float):
    """Run one attempt of ``module`` (``spec.module`` validated); its end event says how long
    it held the worker: from ``since`` (the batch's start or the previous job's end), the
    work around the job included."""
    from .executors import run_job
    from .owners import adaptors_of

    started = time.time()
    _BEATS.add(worker, spec, started)
    with adaptors_of(spec.adaptors):  # the job sees its owner's storage
        try:
            result = run_job(module, spec.inputs, spec.output, spec.params, job_id=str(spec.job),
                             timeout=spec.timeout)
        finally:
            start_sent = _BEATS.remove(spec)
        if not result.ok and not result.log_location:
            result.log_location = _write_log(spec, result.log)
    end = {"job": spec.job, "attempt": spec.attempt, "worker": worker.address, "result": _result_dict(result)}
    end["took"] = time.perf_counter() - since
    if not start_sent:
        end["at"] = started
    _BEATS.end(worker, end, flush=last)
    return result


def _task_key():
    from distributed.worker import thread_state

    return getattr(thread_state, "key", None)


def _cancelled(worker, key) -> bool:
    """Whether Dask cancelled this batch's task on the worker (the runner moved its rest)."""
    if key is None:
        return False
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released")


def _result_dict(result) -> dict:
    """A JobResult as the plain, JSON-able dict of an end event (its log's tail only), the
    fields at their defaults left out (``_result_of`` fills them in): every end is packed
    and unpacked on each hop to the scheduler, and a success is mostly defaults."""
    out = {key: value for key, value in result.to_dict().items() if key != "ok" and value != _defaults().get(key)}
    if len(out.get("log", "")) > EVENT_LOG:
        out["log"] = "...\n" + out["log"][-EVENT_LOG:]
    return out


@functools.cache
def _defaults() -> dict:
    """A JobResult's fields at their defaults (but its job id)."""
    from .executors import JobResult

    return {key: value for key, value in JobResult("").to_dict().items() if key != "job_id"}


def _result_of(data: dict):
    """The JobResult of an end event's dict."""
    from .executors import JobResult, OutputFile

    return JobResult(**{**data, "outputs": [OutputFile(**o) for o in data.get("outputs", [])]})


class _Beats:
    """The starts, heartbeats and ends of every attempt running in this worker process,
    sent by one thread, the ends also by the jobs' threads (module docstring)."""

    def __init__(self):
        self._cond = threading.Condition()
        # (job, attempt) -> [next event at, heartbeat, worker, start time (None once sent)]
        self._due: dict[tuple[int, int], list] = {}
        self._outbox: dict[int, list] = {}  # id(worker) -> [worker, since, [end, ...]]
        self._wake = float("inf")  # when the thread wakes next on its own
        self._thread: threading.Thread | None = None

    def add(self, worker, spec: JobSpec, started: float) -> None:
        now = time.monotonic()
        at = now + START_DELAY
        with self._cond:
            box = self._outbox.get(id(worker))
            if box is not None and now - box[1] >= FLUSH:  # ends of this batch's earlier jobs
                self._send(id(worker))
            self._due[(spec.job, spec.attempt)] = [at, spec.heartbeat, worker, started]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="skerry-beats")
                self._thread.start()
            if at < self._wake:  # else the thread wakes in time anyway (no wake-up per job)
                self._cond.notify()

    def remove(self, spec: JobSpec) -> bool:
        """Forget the attempt; whether its start was sent."""
        with self._cond:
            entry = self._due.pop((spec.job, spec.attempt), None)
        return entry is not None and entry[3] is None

    def end(self, worker, msg: dict, flush: bool) -> None:
        """Put an attempt's end in the worker's outbox; send the outbox if ``flush``."""
        with self._cond:
            box = self._outbox.setdefault(id(worker), [worker, time.monotonic(), []])
            box[2].append(msg)
            if flush:
                self._send(id(worker))

    def flush(self, worker) -> None:
        with self._cond:
            self._send(id(worker))

    def _send(self, ident: int) -> None:  # under the lock
        box = self._outbox.pop(ident, None)
        if box is not None:
            box[0].log_event(TOPIC, {"e": "ends", "ends": box[2]})

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = [(key, entry) for key, entry in self._due.items() if entry[0] <= now]
                    if due:
                        break
                    self._wake = min((entry[0] for entry in self._due.values()), default=float("inf"))
                    self._cond.wait(None if self._wake == float("inf") else self._wake - now)
                for ident in list(self._outbox):  # ends before the start of a job that runs long
                    self._send(ident)
                for (job, attempt), entry in due:  # sent under the lock: a start always precedes its end
                    worker, started = entry[2], entry[3]
                    if started is not None:
                        worker.log_event(TOPIC, {"e": "start", "job": job, "attempt": attempt,
                                                 "worker": worker.address, "at": started})
                    else:
                        worker.log_event(TOPIC, {"e": "beat", "job": job, "attempt": attempt})
                    entry[0], entry[3] = now + entry[1], None
                self._wake = now


_BEATS = _Beats()


def _write_log(spec: JobSpec, text: str) -> str | None:
    from fsspec.core import url_to_fs

    url = f"{spec.output.rstrip('/')}/{LOG_DIR}/{spec.job}.{spec.attempt}.log"
    try:
        fs, path = url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "w") as f:
            f.write(text)
    except OSError:  # no log is better than a job whose failure is hidden by the log's
        return None
    return url


# ---- in the scheduler's process ----


@dataclass(eq=False)
class _Batch:
    """A Dask task of attempts; ``pending``: those not reported yet nor forgotten."""

    key: tuple[str]  # a task group of its own (module docstring)
    pool: str
    specs: list[JobSpec]
    future: Any = None
    pending: set = field(default_factory=set)
    started: set = field(default_factory=set)  # attempts whose start was reported
    worker: str | None = None  # where it runs, once an attempt of it started


@dataclass(eq=False)
class _Done:
    """A batch whose future ended without all its end events: ``attempts`` to report."""

    future: Any
    attempts: list[tuple[int, int]]


class Runner:
    """Dask pools, submission of job attempts, and what comes back (module docstring)."""

    def __init__(self, pools: Mapping[str, Pool | Any]):
        from distributed import Client

        if not pools:
            raise ConfigError("a runner needs at least one pool")
        self.pools: dict[str, Pool] = {}
        self._own: list = []  # clients this runner opened (from addresses): closed by close()
        for name, pool in pools.items():
            if not isinstance(pool, Pool):
                pool = Pool(pool)
            if isinstance(pool.client, str):
                client = Client(pool.client, set_as_default=False)
                self._own.append(client)
                pool = Pool(client, pool.needs)
            if not isinstance(pool.client, Client):
                raise ConfigError(f"pool {name!r} must be a distributed.Client or a scheduler address, "
                                  f"not {pool.client!r}")
            self.pools[name] = pool
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}  # by Dask key
        self._of: dict[tuple[int, int], _Batch] = {}  # attempt -> its batch, while pending
        self._waiting: dict[str, float] = {}  # finished batches still missing end events: since
        self._seen: dict[int, tuple[float, dict]] = {}
        for client in {id(p.client): p.client for p in self.pools.values()}.values():
            client.subscribe_topic(TOPIC, self._on_event)

    # ---- pools ----

    def _info(self, client) -> dict[str, dict]:
        """The client's workers, asked of the Dask scheduler at most every ``INFO_AGE`` s."""
        at, workers = self._seen.get(id(client), (0.0, None))
        if workers is None or time.monotonic() - at > INFO_AGE:
            workers = client.scheduler_info()["workers"]
            self._seen[id(client)] = (time.monotonic(), workers)
        return workers

    def refresh(self) -> None:
        """Ask the Dask schedulers for their workers at the next ``slots``."""
        self._seen.clear()

    def _workers(self, name: str) -> dict[str, dict]:
        pool = self.pools[name]
        workers = self._info(pool.client)
        if pool.needs:
            return {a: w for a, w in workers.items()
                    if all(w.get("resources", {}).get(r, 0) >= n for r, n in pool.needs.items())}
        others = {r for p in self.pools.values() if p.client is pool.client for r in p.needs}
        plain = {a: w for a, w in workers.items() if not others & set(w.get("resources") or {})}
        return plain or workers

    def slots(self, name: str) -> int:
        """How many jobs the pool can run at once now (0: no worker)."""
        pool = self.pools[name]
        workers = self._workers(name)
        if pool.needs:
            return int(sum(min(w["resources"][r] // n for r, n in pool.needs.items() if n)
                           if any(pool.needs.values()) else w["nthreads"] for w in workers.values()))
        return sum(w["nthreads"] for w in workers.values())

    # ---- submission ----

    def submit(self, pool: str, spec: JobSpec) -> None:
        self.submit_batches(pool, [[spec]])

    def submit_batches(self, pool: str, batches: list[list[JobSpec]], avoid: str | None = None) -> None:
        """Hand batches of attempts to ``pool`` in one call to Dask (one graph): each batch
        is one Dask task that runs its attempts in order. ``avoid``: a worker to use only
        if no other of the pool is there (one whose thread a hung job holds)."""
        batches = [b for b in batches if b]
        if not batches:
            return
        p = self.pools[pool]
        kwargs: dict[str, Any] = {}
        if p.needs:
            kwargs["resources"] = dict(p.needs)
        others = {r for q in self.pools.values() if q.client is p.client for r in q.needs}
        plain_only = bool(others) and not p.needs  # e.g. CPU jobs beside a GPU pool on one cluster
        if avoid is not None or plain_only:
            mine_all = list(self._workers(pool))
            workers = [w for w in mine_all if w != avoid] or mine_all
            if workers:
                kwargs["workers"] = workers
                # the avoided worker stays a fallback; a plain pool's jobs never take another pool's
                # worker (a loose restriction let Dask put CPU jobs on the GPU worker when busy)
                kwargs["allow_other_workers"] = not plain_only
        token = uuid.uuid4().hex[:8]
        mine = [_Batch((f"skerry-batch-{b[0].job}-{b[0].attempt}-{token}",), pool, list(b)) for b in batches]
        with self._lock:  # registered first: an end event may come before map returns
            for batch in mine:
                batch.pending = {(s.job, s.attempt) for s in batch.specs}
                self._batches[batch.key] = batch
                for attempt in batch.pending:
                    self._of[attempt] = batch
        futures = p.client.map(execute_batch, [b.specs for b in mine], key=[b.key for b in mine],
                               pure=False, retries=0, **kwargs)
        with self._lock:
            for batch, future in zip(mine, futures):
                batch.future = future
        for future in futures:
            future.add_done_callback(self._on_done)

    def cancel(self, job: int, attempt: int) -> None:
        """Forget the attempt (module docstring); its result is dropped if it comes."""
        self.cancel_many([(job, attempt)])

    def cancel_many(self, attempts) -> None:
        """``cancel`` each of ``attempts``, the batches they leave moved on once."""
        touched: dict[str, _Batch] = {}
        behind: dict[str, int] = {}  # batch -> index after its last running attempt cancelled
        with self._lock:
            for key in attempts:
                batch = self._of.pop(tuple(key), None)
                if batch is None:
                    continue
                batch.pending.discard(tuple(key))
                touched[batch.key] = batch
                if tuple(key) in batch.started:
                    at = next(i for i, s in enumerate(batch.specs) if (s.job, s.attempt) == tuple(key))
                    behind[batch.key] = max(behind.get(batch.key, 0), at + 1)
            stop, moved = [], []
            for key, batch in touched.items():
                rest = []
                if key in behind:  # a running attempt left: the ones after it must not wait for it
                    rest = [s for s in batch.specs[behind[key]:]
                            if (s.job, s.attempt) in batch.pending and (s.job, s.attempt) not in batch.started]
                    for s in rest:
                        batch.pending.discard((s.job, s.attempt))
                        del self._of[(s.job, s.attempt)]
                if not batch.pending:
                    self._forget(batch)
                    stop.append(batch.future)
                if rest:
                    moved.append((batch.pool, rest, batch.worker))
        for future in stop:
            if future is not None:
                future.cancel()
        for pool, rest, worker in moved:
            self.submit_batches(pool, [rest], avoid=worker)

    def _forget(self, batch: _Batch) -> None:  # under the lock
        self._batches.pop(batch.key, None)
        self._waiting.pop(batch.key, None)
        for attempt in batch.pending:
            self._of.pop(attempt, None)
        batch.pending = set()

    def in_flight(self) -> int:
        """Attempts handed to Dask and not reported yet."""
        with self._lock:
            return len(self._of)

    # ---- what comes back ----

    def events(self, timeout: float = 0.0, limit: int = 100_000) -> list:
        """Events since the last call (waiting up to ``timeout`` s for the first one)."""
        got = self._late()
        try:
            if not got:
                got.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
            while len(got) < limit:
                got.append(self._events.get_nowait())
        except queue.Empty:
            pass
        done = [d.future for d in got if isinstance(d, _Done) and d.future.status == "finished"]
        values = {}
        for client in {id(f.client): f.client for f in done}.values():
            mine = [f for f in done if f.client is client]
            try:  # one round trip for the whole batch, not one per future
                values.update(zip((f.key for f in mine), client.gather(mine, errors="skip")))
            except Exception:  # noqa: BLE001 - a worker died meanwhile: each is fetched on its own below
                pass
        out = []
        for item in got:
            if isinstance(item, _Done):
                out += _finished(item, values.get(item.future.key))
            else:
                out.append(item)
        return out

    def _late(self) -> list:
        """Finished batches whose end events did not all come within ``END_GRACE`` s."""
        if not self._waiting:
            return []
        now = time.monotonic()
        late = []
        with self._lock:
            for key, since in list(self._waiting.items()):
                if now - since > END_GRACE:
                    batch = self._batches[key]
                    late.append(_Done(batch.future, _ordered(batch)))
                    self._forget(batch)
        return late

    def _on_event(self, event) -> None:
        _, msg = event
        kind = msg.get("e")
        if kind == "ends":
            out = []
            with self._lock:
                for end in msg["ends"]:
                    key = (end["job"], end["attempt"])
                    batch = self._of.pop(key, None)
                    if batch is None:  # cancelled, or already reported
                        continue
                    batch.pending.discard(key)
                    if not batch.pending:
                        self._forget(batch)
                    if "at" in end:  # it ended before its start was sent on its own
                        out.append(Started(end["job"], end["attempt"], end["worker"], end["at"]))
                    out.append(Finished(end["job"], end["attempt"], _result_of(end["result"]), end["worker"],
                                        took=end.get("took")))
            for item in out:
                self._events.put(item)
        elif kind == "start":
            key = (msg["job"], msg["attempt"])
            with self._lock:
                batch = self._of.get(key)
                if batch is not None:
                    batch.started.add(key)
                    batch.worker = msg["worker"]
            self._events.put(Started(msg["job"], msg["attempt"], msg["worker"], msg["at"]))
        elif kind == "beat":
            self._events.put(Beat(msg["job"], msg["attempt"]))

    def _on_done(self, future) -> None:
        with self._lock:
            batch = self._batches.get(future.key)
            if batch is None or batch.future is not future:  # reported by its end events, or cancelled by us
                return
            if future.status == "finished":  # its end events report it (or _late, if they never come)
                self._waiting[batch.key] = time.monotonic()
                return
            done = _Done(future, _ordered(batch))
            self._forget(batch)
        self._events.put(done)  # an error, a cancel or a lost worker: looked at by events()

    def close(self) -> None:
        """Cancel what is in flight and close the clients this runner opened."""
        with self._lock:
            futures = [b.future for b in self._batches.values() if b.future is not None]
            self._batches, self._of, self._waiting = {}, {}, {}
        for future in futures:
            future.cancel()
        for client in {id(p.client): p.client for p in self.pools.values()}.values():
            try:
                client.unsubscribe_topic(TOPIC)
            except Exception:  # a closed client: nothing to unsubscribe
                pass
        for client in self._own:
            client.close()


def _ordered(batch: _Batch) -> list[tuple[int, int]]:
    return [(s.job, s.attempt) for s in batch.specs if (s.job, s.attempt) in batch.pending]


def _finished(done: _Done, value: dict | None = None) -> list[Finished]:
    """The attempts of a batch whose future ended without their end events."""
    from distributed.scheduler import KilledWorker

    future = done.future
    status = future.status
    if value is None and status == "finished":
        try:
            value = future.result()
        except Exception as e:  # the result could not be fetched (its worker died since)
            return [Finished(j, a, lost=True, error=f"{type(e).__name__}: {e}") for j, a in done.attempts]
    if value is not None:
        results = {(j, a): r for j, a, r in value["results"]}
        # an attempt the batch did not run (its task was cancelled meanwhile) is lost
        return [Finished(j, a, results[(j, a)], value["worker"]) if (j, a) in results
                else Finished(j, a, lost=True, error="its batch stopped before it ran")
                for j, a in done.attempts]
    if status == "cancelled":
        error = "the attempt was cancelled in Dask"
    else:
        try:
            e = future.exception()
        except Exception as e2:  # cancelled between the status and here
            e = e2
        error = f"KilledWorker: {e}" if isinstance(e, KilledWorker) else f"{type(e).__name__}: {e}"
    return [Finished(j, a, lost=True, error=error) for j, a in done.attempts]
