"""The Dask runner: the only module that touches ``distributed.Client``.

A :class:`Runner` holds named *pools*; each is a Dask client (or a scheduler address) and
what a worker must declare to belong to it::

    runner = Runner({"cpu": Pool(client), "gpu": Pool(client, needs={"GPU": 1})})
    runner.submit_many("cpu", specs)    # attempts of jobs (JobSpecs), one Dask graph
    runner.events(timeout=0.1)          # what happened since: Started, Beat, Finished

Rules:
- one Dask task per job attempt, keyed ``skerry-job-<job>-<attempt>`` (never retried by
  Dask on an error: the catalog's retry policy decides);
- a pool with ``needs`` (``{"GPU": 1}``) runs its jobs only on workers declaring those
  resources (Dask resources); a pool without runs its jobs preferably on workers that
  declare none of the other pools' needs, so CPU jobs never queue behind GPU jobs
  (``allow_other_workers``: when no such worker is left, any worker will do);
- ``slots(pool)`` is what the pool can run at once: the threads of its workers, or for a
  pool with needs the units of its scarcest resource they declare;
- on the worker, the job runs in the task's thread (``run_job``) while one side thread of
  the worker process (for all its attempts: no thread is started per job) sends its
  ``start`` once it ran ``START_DELAY`` s, then a ``Beat`` every ``spec.heartbeat``
  seconds, through Dask's event log (topic ``skerry-job``); an attempt that ends sooner
  sends its start in its ``end`` event (the runner reports ``Started`` then
  ``Finished``), so a short job costs one event. A hung job stops beating only if its
  worker freezes, so the scheduler also times a job from its ``Started`` (``spec.timeout``);
- a failed job's log text is written beside its outputs (``<output>/.skerry-logs/
  <job>.<attempt>.log``) when its executor kept none, so every failure has a log location;
- a finished attempt's result comes back as an ``end`` event on the same topic (a plain
  dict, its log text capped at ``EVENT_LOG`` characters; the whole log stays in the
  task's value and the log file), so no gather round trip is needed; the future's done
  callback reports only errors, cancels and lost attempts, and a future that finished
  without its ``end`` event arriving within ``END_GRACE`` s is gathered instead. The event
  and the future's completion may come in either order: each attempt is reported once,
  and the end of an attempt the runner forgot (``cancel``) is dropped;
- ``Finished.lost`` is True when Dask lost the attempt (its worker died: ``KilledWorker``,
  or the future was cancelled by anyone but us); run the pools with
  ``distributed.scheduler.allowed-failures: 0`` so every dead worker reaches the catalog
  as an attempt instead of Dask re-running the attempt itself;
- one runner per Dask client at a time: it subscribes to the client's ``skerry-job``
  topic, and a newer runner on the same client takes those events over;
- ``cancel(job, attempt)`` forgets the attempt: its result, if it comes, is dropped.
  (A thread on a worker cannot be stopped; a hung job's thread lingers until it returns.)
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError

__all__ = ["Pool", "JobSpec", "Started", "Beat", "Finished", "Runner", "execute", "TOPIC", "LOG_DIR"]

TOPIC = "skerry-job"
LOG_DIR = ".skerry-logs"
INFO_AGE = 1.0  # seconds a look at a pool's workers is reused
START_DELAY = 0.05  # seconds an attempt runs before its start is sent on its own
END_GRACE = 2.0  # seconds a finished future waits for its end event before it is gathered
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


def execute(spec: JobSpec) -> dict:
    """Run one attempt on a Dask worker (see the module docstring); a plain dict back."""
    from distributed import get_worker

    from .executors import run_job
    from .owners import adaptors_of

    worker = get_worker()
    started = time.time()
    _BEATS.add(worker, spec, started)
    with adaptors_of(spec.adaptors):  # the job sees its owner's storage
        try:
            result = run_job(spec.module, spec.inputs, spec.output, spec.params, job_id=str(spec.job),
                             timeout=spec.timeout)
        finally:
            start_sent = _BEATS.remove(spec)
        if not result.ok and not result.log_location:
            result.log_location = _write_log(spec, result.log)
    end = {"e": "end", "job": spec.job, "attempt": spec.attempt, "worker": worker.address,
           "result": _result_dict(result)}
    if not start_sent:
        end["at"] = started
    worker.log_event(TOPIC, end)
    return {"result": result, "worker": worker.address}


def _result_dict(result) -> dict:
    """A JobResult as the plain, JSON-able dict of an end event (its log's tail only)."""
    out = result.to_dict()
    out.pop("ok", None)
    if len(out["log"]) > EVENT_LOG:
        out["log"] = "...\n" + out["log"][-EVENT_LOG:]
    return out


def _result_of(data: dict):
    """The JobResult of an end event's dict."""
    from .executors import JobResult, OutputFile

    return JobResult(**{**data, "outputs": [OutputFile(**o) for o in data.get("outputs", [])]})


class _Beats:
    """The start and heartbeats of every attempt running in this worker process, sent by
    one thread (module docstring)."""

    def __init__(self):
        self._cond = threading.Condition()
        # (job, attempt) -> [next event at, heartbeat, worker, start time (None once sent)]
        self._due: dict[tuple[int, int], list] = {}
        self._wake = float("inf")  # when the thread wakes next on its own
        self._thread: threading.Thread | None = None

    def add(self, worker, spec: JobSpec, started: float) -> None:
        at = time.monotonic() + START_DELAY
        with self._cond:
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
        self._futures: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()
        self._waiting: dict[tuple[int, int], float] = {}  # finished futures without their end event: since
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
        self.submit_many(pool, [spec])

    def submit_many(self, pool: str, specs: list[JobSpec]) -> None:
        """Hand attempts to ``pool`` in one call to Dask (one graph, not one per attempt)."""
        if not specs:
            return
        p = self.pools[pool]
        kwargs: dict[str, Any] = {}
        if p.needs:
            kwargs["resources"] = dict(p.needs)
        else:
            others = {r for q in self.pools.values() if q.client is p.client for r in q.needs}
            if others:
                kwargs["workers"] = list(self._workers(pool))
                kwargs["allow_other_workers"] = True
        futures = p.client.map(execute, specs, key=[f"skerry-job-{sp.job}-{sp.attempt}" for sp in specs],
                               pure=False, retries=0, **kwargs)
        with self._lock:
            for spec, future in zip(specs, futures):
                self._futures[(spec.job, spec.attempt)] = future
        for future in futures:
            future.add_done_callback(self._on_done)

    def cancel(self, job: int, attempt: int) -> None:
        """Forget the attempt and ask Dask to cancel it; its result is dropped if it comes."""
        with self._lock:
            future = self._futures.pop((job, attempt), None)
            self._waiting.pop((job, attempt), None)
        if future is not None:
            future.cancel()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._futures)

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
        done = [f for f in got if not isinstance(f, Started | Beat | Finished) and f.status == "finished"]
        results = {}
        for client in {id(f.client): f.client for f in done}.values():
            mine = [f for f in done if f.client is client]
            try:  # one round trip for the whole batch, not one per attempt
                results.update(zip((f.key for f in mine), client.gather(mine, errors="skip")))
            except Exception:  # noqa: BLE001 - a worker died meanwhile: each is fetched on its own below
                pass
        return [item if isinstance(item, Started | Beat | Finished)
                else _finished(_key(item), item, results.get(item.key)) for item in got]

    def _late(self) -> list:
        """Finished futures whose end event did not come within ``END_GRACE`` s: to gather."""
        if not self._waiting:
            return []
        now = time.monotonic()
        late = []
        with self._lock:
            for key, since in list(self._waiting.items()):
                if now - since > END_GRACE:
                    del self._waiting[key]
                    late.append(self._futures.pop(key))
        return late

    def _on_event(self, event) -> None:
        _, msg = event
        kind = msg.get("e")
        if kind == "end":
            key = (msg["job"], msg["attempt"])
            with self._lock:
                if self._futures.pop(key, None) is None:  # cancelled, or already reported
                    return
                self._waiting.pop(key, None)
            if "at" in msg:  # it ended before its start was sent on its own
                self._events.put(Started(msg["job"], msg["attempt"], msg["worker"], msg["at"]))
            self._events.put(Finished(msg["job"], msg["attempt"], _result_of(msg["result"]), msg["worker"]))
        elif kind == "start":
            self._events.put(Started(msg["job"], msg["attempt"], msg["worker"], msg["at"]))
        elif kind == "beat":
            self._events.put(Beat(msg["job"], msg["attempt"]))

    def _on_done(self, future) -> None:
        key = _key(future)
        with self._lock:
            if self._futures.get(key) is not future:  # reported by its end event, or cancelled by us
                return
            if future.status == "finished":  # its end event reports it (or _late, if it never comes)
                self._waiting[key] = time.monotonic()
                return
            del self._futures[key]
        self._events.put(future)  # an error, a cancel or a lost worker: looked at by events()

    def close(self) -> None:
        """Cancel what is in flight and close the clients this runner opened."""
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
            self._waiting.clear()
        for future in futures:
            future.cancel()
        for client in {id(p.client): p.client for p in self.pools.values()}.values():
            try:
                client.unsubscribe_topic(TOPIC)
            except Exception:  # a closed client: nothing to unsubscribe
                pass
        for client in self._own:
            client.close()


def _key(future) -> tuple[int, int]:
    _, _, job, attempt = future.key.rsplit("-", 3)
    return int(job), int(attempt)


def _finished(key: tuple[int, int], future, out: dict | None = None) -> Finished:
    from distributed.scheduler import KilledWorker

    job, attempt = key
    status = future.status
    if out is not None:
        return Finished(job, attempt, out["result"], out["worker"])
    if status == "finished":
        try:
            out = future.result()
        except Exception as e:  # the result could not be fetched (its worker died since)
            return Finished(job, attempt, lost=True, error=f"{type(e).__name__}: {e}")
        return Finished(job, attempt, out["result"], out["worker"])
    if status == "cancelled":
        return Finished(job, attempt, lost=True, error="the attempt was cancelled in Dask")
    try:
        error = future.exception()
    except Exception as e:  # cancelled between the status and here
        error = e
    if isinstance(error, KilledWorker):
        return Finished(job, attempt, lost=True, error=f"KilledWorker: {error}")
    return Finished(job, attempt, lost=True, error=f"{type(error).__name__}: {error}")
