"""The pools of a platform with accounts: every user's jobs on a Dask cluster of their own.

``UserPools`` is the scheduler's runner (the ``Runner`` interface: ``pools``, ``slots``,
``submit_batches``, ``cancel_many``, ``events``) when users have accounts::

    pools = UserPools(data_dir, load_pools(path), policy)
    Scheduler(catalog, pools, ...)              # as with a Runner
    pools.cluster_for("alice", "cpu")           # {"pool", "address", "tls": her client's files}
    pools.close()

Rules:
- a job runs on its owner's cluster of its pool (``clusters.UserCluster``: scheduler and
  workers as the owner's account, TLS with credentials of its own), through that
  cluster's runner (``userjobs``), started on demand: the first job or ``cluster_for``;
  jobs of two users never share a process, and the platform is never a Dask client of a
  user's cluster. A job without an owner, or whose owner's account is locked (a deleted
  user) or cannot start a cluster, is lost with the sentence why (the retry policy
  decides);
- ``pools.json`` is the capacity: each user's cluster has the shape of its pool
  (``ClusterSpec.from_pool``: workers, threads, memory; GPU pools one worker per GPU,
  each seeing its own), and ``slots`` is the pool's, so the scheduler's windows over all
  users together stay what the pool can run. Each cluster is held to its shape (``skerry.limits``:
  a cgroup where the machine has them): its workers' threads in cores, their memory where
  the pool gives one. Users running at once share the machine's cores (their workers are
  processes of their own); a pool at an address cannot be carved (a ``ConfigError`` at
  start);
- clusters start and stop on one thread of their own (``start`` must be called from a
  thread that lives as long as the cluster), so starting never holds up the scheduler's
  step: batches wait for their cluster in order; a cluster that has no attempt of the
  platform in flight and is idle (``UserCluster.idle_for``: no task, no client of the
  user's) for ``idle_after`` seconds is stopped, checked every ``CHECK_S``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..errors import NotFound, SkerryError
from ..localfiles import write_private
from .runner import Finished, JobSpec, Pool

__all__ = ["UserPools", "IDLE_S"]

log = logging.getLogger("skerry.scheduler")
IDLE_S = 300.0  # seconds a user's cluster stays up with nothing to do
CHECK_S = 5.0  # seconds between looks for idle clusters


class UserPools:
    """Every user's clusters and their runners, as one runner (module docstring)."""

    def __init__(self, data_dir, specs: dict, policy, *, gpus: int | None = None, idle_after: float = IDLE_S,
                 watch_every: float | None = None):
        from ..datadir import DataDir
        from .pools import gpu_count, needs

        gpus = gpu_count() if gpus is None else gpus
        self.data = DataDir(data_dir)
        self.policy = policy
        self.pools = {name: Pool(None, needs(name)) for name in specs}
        self.shapes = {name: _shape(name, spec, gpus) for name, spec in specs.items()}
        self.idle_after = idle_after
        self.watch = {} if watch_every is None else {"watch_every": watch_every}
        self.clusters = self._clusters()
        self._jobs: dict[tuple[str, str], Any] = {}  # (user, pool) -> UserJobs
        self._waiting: dict[tuple[str, str], list] = {}  # (user, pool) -> [(batches, avoid)] until it runs
        self._owner: dict[tuple[int, int], tuple[str, str]] = {}  # attempt in flight -> (user, pool)
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._todo: queue.Queue = queue.Queue()
        self._next_check = time.monotonic() + CHECK_S
        self._starter = threading.Thread(target=self._serve, daemon=True, name="skerry-clusters")
        self._starter.start()

    # ---- the runner interface ----

    def slots(self, name: str) -> int:
        shape = self.shapes[name]
        return shape.workers if self.pools[name].needs else shape.workers * shape.threads

    def refresh(self) -> None:
        """Nothing to ask: the capacity is the configuration's."""

    def in_flight(self) -> int:
        with self._lock:
            return len(self._owner)

    def submit(self, pool: str, spec: JobSpec) -> None:
        self.submit_batches(pool, [[spec]])

    def submit_batches(self, pool: str, batches: list[list[JobSpec]], avoid: str | None = None) -> None:
        """Each batch (split by owner) to its owner's runner of ``pool``, or in line for it."""
        by_owner: dict[str | None, list[list[JobSpec]]] = defaultdict(list)
        for batch in batches:
            split: dict[str | None, list[JobSpec]] = defaultdict(list)
            for spec in batch:
                split[spec.owner].append(spec)
            for owner, specs in split.items():
                by_owner[owner].append(specs)
        send, lost = [], by_owner.pop(None, [])
        with self._lock:
            for owner, mine in by_owner.items():
                key = (owner, pool)
                for spec in (s for b in mine for s in b):
                    self._owner[(spec.job, spec.attempt)] = key
                jobs = self._jobs.get(key)
                if jobs is not None and jobs.running and jobs.cluster.running:
                    send.append((jobs, mine))
                    continue
                if key not in self._waiting:
                    self._waiting[key] = []
                    self._todo.put(("start", key, None))
                self._waiting[key].append((mine, avoid))
        for jobs, mine in send:
            jobs.submit(mine, avoid)
        for spec in (s for b in lost for s in b):
            self._events.put(Finished(spec.job, spec.attempt, lost=True,
                                      error="the job has no owner, so there is no account to run it as"))

    def cancel(self, job: int, attempt: int) -> None:
        self.cancel_many([(job, attempt)])

    def cancel_many(self, attempts) -> None:
        by_key: dict[tuple[str, str], list] = defaultdict(list)
        with self._lock:
            for attempt in attempts:
                key = self._owner.pop(tuple(attempt), None)
                if key is not None:
                    by_key[key].append(tuple(attempt))
            cancel = []
            for key, mine in by_key.items():
                if key in self._waiting:  # not handed to a runner yet: taken out of the line
                    gone = set(mine)
                    self._waiting[key] = [([[s for s in b if (s.job, s.attempt) not in gone] for b in batches],
                                           avoid) for batches, avoid in self._waiting[key]]
                jobs = self._jobs.get(key)
                if jobs is not None:
                    cancel.append((jobs, mine))
        for jobs, mine in cancel:
            jobs.cancel(mine)

    def events(self, timeout: float = 0.0, limit: int = 100_000) -> list:
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + CHECK_S
            self._todo.put(("idle", None, None))
        got = []
        try:
            got.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
            while len(got) < limit:
                got.append(self._events.get_nowait())
        except queue.Empty:
            pass
        return got

    def _report(self, event) -> None:
        """A runner's event (from its reader thread)."""
        if isinstance(event, Finished):
            with self._lock:
                if self._owner.pop((event.job, event.attempt), None) is None:
                    return  # cancelled meanwhile
        self._events.put(event)

    # ---- clusters ----

    def cluster_for(self, user: str, pool: str, timeout: float = 120.0) -> dict:
        """``user``'s running cluster of ``pool`` (started now if none runs): its address and
        the files her own clients pass to ``clusters.security``."""
        from .clusters import ClusterError

        if pool not in self.pools:
            raise NoPool(f"this platform runs no {pool!r} pool (pools: {', '.join(sorted(self.pools))})")
        done: Future = Future()
        self._todo.put(("cluster", (user, pool), done))
        try:
            cluster = done.result(timeout)
        except TimeoutError:
            raise ClusterError(f"{user}'s {pool} cluster did not start within {timeout:g} s") from None
        return {"pool": pool, "address": cluster.address, "tls": cluster.user_files()}

    def _serve(self) -> None:
        """The thread that starts and stops every cluster and runner (module docstring)."""
        while True:
            op, key, done = self._todo.get()
            if op == "close":
                return
            try:
                if op == "idle":
                    self._stop_idle()
                elif op == "cluster":
                    done.set_result(self._cluster(*key))
                else:
                    self._start_jobs(key)
            except Exception as e:  # noqa: BLE001 - said to whoever waits; the thread goes on
                if done is not None:
                    done.set_exception(e)
                elif op == "start":
                    self._fail_waiting(key, e)
                else:
                    log.exception("looking for idle clusters failed")

    def _clusters(self):
        """The clusters' keeper: ``.clusters`` by (user, pool), ``stop(user, pool)``, ``close()``."""
        from .clusters import UserClusters

        return UserClusters()

    def _runner(self, cluster, needs: dict):
        """The platform's side of ``cluster``'s jobs runner (``userjobs``), started now."""
        from .userjobs import UserJobs

        return UserJobs.start(cluster, self._report, needs=needs)

    def _cluster(self, user: str, pool: str):
        from ..accounts import ensure_account
        from .clusters import cluster_folder

        account = ensure_account(user, self.data.user_home(user), self.policy)
        folder = cluster_folder(self.data.handover(user), pool)
        running = self.clusters.clusters.get((user, pool))
        cluster = self.clusters.ensure(account, pool, self.shapes[pool], folder, limits=_limits(self.shapes[pool]),
                                       **self.watch)
        if cluster is not running:
            _write_connect(folder, cluster)
        return cluster

    def _start_jobs(self, key: tuple[str, str]) -> None:
        jobs = self._jobs.get(key)
        if jobs is None or not jobs.running or not jobs.cluster.running:
            cluster = self._cluster(*key)
            if jobs is not None:
                jobs.stop()  # its attempts are reported lost
            jobs = self._runner(cluster, dict(self.pools[key[1]].needs))
            log.info("%s's %s cluster is up (%.1f s): %s", key[0], key[1], cluster.started_in, cluster.address)
        with self._lock:
            waiting = self._waiting.pop(key, [])
            self._jobs[key] = jobs
        for batches, avoid in waiting:
            jobs.submit([b for b in batches if b], avoid)

    def _fail_waiting(self, key: tuple[str, str], error: Exception) -> None:
        why = error.message if isinstance(error, SkerryError) else f"{type(error).__name__}: {error}"
        log.warning("%s's %s cluster cannot start: %s", key[0], key[1], why)
        with self._lock:
            waiting = self._waiting.pop(key, [])
            specs = [s for batches, _ in waiting for b in batches for s in b
                     if self._owner.pop((s.job, s.attempt), None) is not None]
        for spec in specs:
            self._events.put(Finished(spec.job, spec.attempt, lost=True,
                                      error=f"{key[0]}'s {key[1]} cluster cannot start: {why}"))

    def _stop_idle(self) -> None:
        for key, cluster in list(self.clusters.clusters.items()):
            with self._lock:
                busy = key in self._waiting or key in set(self._owner.values())
                if cluster.running and (busy or cluster.idle_for() < self.idle_after):
                    continue
                jobs = self._jobs.pop(key, None)
            why = "idle" if cluster.running else "a process of it ended"
            if jobs is not None:
                jobs.stop()
            self.clusters.stop(*key)
            _remove_connect(cluster.folder)
            log.info("%s's %s cluster stopped (%s)", key[0], key[1], why)

    def close(self) -> None:
        """Stop every runner and cluster (the manager stops)."""
        self._todo.put(("close", None, None))
        self._starter.join(30)
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for j in jobs:
            j.stop()
        folders = [c.folder for c in self.clusters.clusters.values()]
        self.clusters.close()
        for folder in folders:
            _remove_connect(folder)


def connect_file(folder) -> Path:
    """``connect.json`` of a running cluster: its pool, address and the user's TLS files
    (the platform's, 0640: the account reads it; the service shows it to its user)."""
    return Path(folder) / "connect.json"


def running_clusters(data, user: str) -> dict[str, str]:
    """``{pool: address}`` of ``user``'s running clusters (``data``: the ``DataDir``), from
    their connect files."""
    from .clusters import clusters_folder

    found = {}
    for folder in sorted(clusters_folder(data.handover(user)).glob("*")):
        try:
            address = json.loads(connect_file(folder).read_text())["address"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(address, str):
            found[folder.name] = address
    return found


def _write_connect(folder, cluster) -> None:
    connect = {"pool": cluster.pool, "address": cluster.address, "tls": cluster.user_files()}
    write_private(connect_file(folder), json.dumps(connect), mode=0o640)


def _remove_connect(folder) -> None:
    try:
        connect_file(folder).unlink()
    except FileNotFoundError:
        pass


class NoPool(NotFound):
    code = "no_pool"


def _limits(shape):
    """A cluster's limits (``skerry.limits.Limits``): the cores of its workers' threads, and its
    workers' memory when the pool gives one (``auto``: no memory limit)."""
    from dask.utils import parse_bytes

    from skerry.limits import Limits

    memory = None if shape.memory == "auto" else shape.workers * parse_bytes(shape.memory)
    return Limits(cpu=float(shape.workers * shape.threads), memory=memory)


def _shape(name: str, spec, gpus: int):
    """The ClusterSpec of a user's cluster of pool ``name`` (a ``PoolSpec``)."""
    from ..errors import ConfigError
    from .clusters import ClusterSpec

    if not spec.local:
        raise ConfigError(f"pool {name!r} is a Dask cluster at {spec.address}, shared by whoever reaches it; "
                          f"with accounts every user's jobs run on a cluster of their own, carved from a "
                          f"local pool (give {name!r} workers, threads and memory instead)")
    shape = {"workers": spec.workers or 1, "threads": spec.threads, "memory": spec.memory}
    if name == "gpu" and gpus:
        shape["devices"] = list(range(gpus))
    return ClusterSpec.from_pool(name, shape)
