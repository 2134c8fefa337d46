"""The workload manager of ``skerry up``: the scheduler loop over the platform's catalog.

A JupyterHub-managed service (``python -m skerry.workload.manager``, no URL), started
with the hub and restarted by it if it exits. It:

1. takes the data dir's lock (``run/scheduler.lock``): one scheduler per catalog, so a
   manager that starts while the one before it still stops waits for it;
2. opens the catalog (``DIR/catalog.sqlite``), migrated to the newest schema;
3. runs the jobs on the pools of ``DIR/pools.json`` (``skerry.workload.pools``), with the
   scheduler's settings of ``DIR/scheduler.json`` (``skerry.workload.schedulerconfig``), each job
   with its owner's adaptors (``skerry.workload.owners``): with accounts, on a Dask
   cluster of the owner's own carved from the pool, started on demand and stopped when
   idle (``userpools``); on a single-user platform, on the pools started here. It
   answers the service's asks for a user's cluster (``clusterask``: the kernels'
   ``skerry.client``);
4. steps the scheduler, with the planner, until SIGTERM or SIGINT; a restarted one first
   recovers from the catalog (running jobs are matched to outputs already written or
   run again), so a ``kill -9`` of the platform loses nothing;
5. on the way out cancels the attempts in flight (the next manager recovers them) and
   stops the clusters it started.

A step that fails (the catalog busy, a pool gone) is logged and tried again a second
later: the loop does not die of it. Progress goes to the hub log every ``REPORT_S``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time

log = logging.getLogger("skerry.scheduler")

REPORT_S = 60.0
STEP_WAIT = 0.05  # seconds a step waits for news from the pools when jobs are in flight


class Manager:
    """The pools, runner, scheduler and planner of one data dir (module docstring)."""

    def __init__(self, data_dir: str, *, pools_file: str | None = None, scheduler_config=None,
                 idle_after: float | None = None):
        self.data_dir = data_dir
        self.pools_file = pools_file or os.path.join(data_dir, "pools.json")
        self.config = scheduler_config  # a SchedulerConfig; None: DIR/scheduler.json's, read at start
        self.idle_after = idle_after
        self.stopping = False
        self.clusters: list = []  # a single-user platform's shared pools
        self.addresses: dict[str, str] = {}
        self.runner = self.scheduler = self.asks = None

    def start(self) -> None:
        import dask

        from .catalog import Catalog
        from .clusterask import serve
        from .pools import DASK_CONFIG, load_pools
        from .runs import Planner
        from .scheduler import Scheduler
        from .schedulerconfig import SchedulerConfig

        import distributed  # noqa: F401 - its config defaults must be there before ours is set

        specs = load_pools(self.pools_file)
        if self.config is None:  # a bad file stops us here, with a sentence naming the field
            self.config = SchedulerConfig.for_data_dir(self.data_dir)
        catalog = Catalog.for_data_dir(self.data_dir)
        catalog.upgrade()
        self.asks = serve(self.data_dir, self.cluster_for, self.wake)
        if not specs:
            log.warning("%s names no pool: the catalog's jobs stay queued", self.pools_file)
            return
        # for this process's life: its Dask schedulers read it as they go
        dask.config.set({**DASK_CONFIG, "temporary-directory": os.path.join(self.data_dir, "run", "dask")})
        policy = account_policy()
        self.runner = self._pools(specs, policy)
        self.scheduler = Scheduler(catalog, self.runner, planner=Planner(catalog),
                                   adaptors_of=self._adaptors_of(policy), config=self.config)
        for name in specs:
            kind = "local" if specs[name].local else specs[name].address
            whose = "shared" if self.addresses else "a cluster per user"
            log.info("pool %s (%s, %s): %d slots", name, kind, whose, self.runner.slots(name))

    def _pools(self, specs, policy):
        """The runner: a cluster per user where users have accounts, else shared pools."""
        return self._user_pools(specs, policy) if policy else self._shared_pools(specs)

    def _user_pools(self, specs, policy):
        """A platform with accounts: each user's jobs on a cluster of their own (``userpools``)."""
        from .userpools import UserPools

        options = {} if self.idle_after is None else {"idle_after": self.idle_after}
        return UserPools(self.data_dir, specs, policy, **options)

    def _adaptors_of(self, policy):
        """What the scheduler calls for the adaptor configuration of a job's owner (``owners``)."""
        from .owners import OwnerConfigs

        return OwnerConfigs(self.data_dir, policy).path

    def _shared_pools(self, specs):
        """A single-user platform: the pools are the one user's (``pools.start_pools``)."""
        from .pools import needs, start_pools
        from .runner import Pool, Runner

        addresses, self.clusters = start_pools(specs)
        self.addresses = addresses
        return Runner({name: Pool(address, needs(name)) for name, address in addresses.items()})

    def wake(self) -> None:
        """A run was started (``clusterask.wake``): the scheduler's idle wait ends now."""
        if self.scheduler is not None:
            self.scheduler.wake()

    def cluster_for(self, user: str, pool: str) -> dict:
        """What ``clusterask.ask`` answers: the user's cluster of ``pool`` (or the shared one)."""
        from .userpools import NoPool, UserPools

        if isinstance(self.runner, UserPools):
            return self.runner.cluster_for(user, pool)
        if pool not in self.addresses:
            pools = ", ".join(sorted(self.addresses)) or "none"
            raise NoPool(f"this platform runs no {pool!r} pool (pools: {pools})")
        return {"pool": pool, "address": self.addresses[pool], "tls": None}

    def loop(self) -> None:
        next_report = time.monotonic() + REPORT_S
        while not self.stopping and self.scheduler is None:  # no pool: nothing to do
            time.sleep(0.5)
        while not self.stopping:
            try:
                self.scheduler.step(self._wait())
            except Exception:  # noqa: BLE001 - logged; the catalog stays the truth, the next step goes on
                log.exception("a scheduler step failed; trying again in 1 s")
                time.sleep(1.0)
            if time.monotonic() >= next_report:
                log.info("%d jobs in flight, %d dispatched since start", len(self.scheduler.live),
                         self.scheduler.dispatched)
                next_report = time.monotonic() + REPORT_S

    def _wait(self) -> float:
        """Seconds the next step may wait: ``STEP_WAIT`` for news from the pools, or with
        nothing in flight or due for a retry, the planning interval (a new run wakes the
        loop at once: ``wake``; an idle loop stepping every 50 ms took 4% of a core)."""
        sched = self.scheduler
        return STEP_WAIT if sched.live or sched.retry_due else max(STEP_WAIT, sched.config.plan_interval)

    def close(self) -> None:
        if self.asks is not None:
            self.asks.close()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.runner is not None:
            self.runner.close()
        for cluster in self.clusters:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001 - a cluster half gone: its processes die with us anyway
                log.exception("stopping a cluster failed")


def account_policy():
    """The accounts of the platform's users (``$SKERRY_ACCOUNT_TEMPLATE``, set by ``skerry up``
    where it can switch users), or None: a single-user platform."""
    from .. import config
    from ..accounts import AccountPolicy

    template = config.ACCOUNT_TEMPLATE.get()
    return AccountPolicy(template=template) if template else None


def lock(data_dir: str):
    """Hold ``run/scheduler.lock`` (waiting for a manager still stopping); the open file."""
    run = os.path.join(data_dir, "run")
    os.makedirs(run, exist_ok=True)
    f = open(os.path.join(run, "scheduler.lock"), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another scheduler holds %s: waiting for it to stop", f.name)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def main(manager_class: type[Manager] = Manager) -> int:
    """Run a manager (``manager_class``: another backend's) until SIGTERM or SIGINT."""
    from ..errors import SkerryError
    from ..process import die_with_parent, settle_heap

    die_with_parent()  # a hub killed with SIGKILL must not leave its scheduler running
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    log.setLevel(logging.INFO)
    from .. import config

    data_dir = str(config.DATA_DIR.require())
    held = lock(data_dir)
    manager = manager_class(data_dir)

    def stop(signum, frame):
        manager.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manager.start()
        settle_heap()
        log.info("scheduling jobs of the catalog in %s", data_dir)
        manager.loop()
    except SkerryError as e:  # e.g. a bad pools.json: wait to be stopped (the hub would restart us at once)
        log.error("cannot schedule jobs: %s", e)
        while not manager.stopping:
            time.sleep(0.5)
        return 2
    finally:
        manager.close()
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
