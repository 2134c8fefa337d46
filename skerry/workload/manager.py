"""The workload manager of ``skerry up``: the scheduler loop over the platform's catalog.

A JupyterHub-managed service (``python -m skerry.workload.manager``, no URL), started
with the hub and restarted by it if it exits. It:

1. takes the data dir's lock (``run/scheduler.lock``): one scheduler per catalog, so a
   manager that starts while the one before it still stops waits for it;
2. opens the catalog (``DIR/catalog.sqlite``), migrated to the newest schema;
3. starts the pools of ``DIR/pools.json`` (``skerry.workload.pools``) and a runner over
   them, each job running with its owner's adaptors (``skerry.workload.owners``), and
   writes their addresses to ``run/dask-pools.json`` for the users' kernels;
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
import json
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

    def __init__(self, data_dir: str, *, pools_file: str | None = None, scheduler_options: dict | None = None):
        self.data_dir = data_dir
        self.pools_file = pools_file or os.path.join(data_dir, "pools.json")
        self.options = scheduler_options or {}
        self.stopping = False
        self.clusters: list = []
        self.runner = self.scheduler = None

    def start(self) -> None:
        import dask

        from .catalog import Catalog
        from .owners import OwnerConfigs
        from .pools import DASK_CONFIG, load_pools, needs, start_pools
        from .runner import Pool, Runner
        from .runs import Planner
        from .scheduler import Scheduler

        import distributed  # noqa: F401 - its config defaults must be there before ours is set

        specs = load_pools(self.pools_file)
        catalog = Catalog.for_data_dir(self.data_dir)
        catalog.upgrade()
        if not specs:
            log.warning("%s names no pool: the catalog's jobs stay queued", self.pools_file)
            return
        # for this process's life: its Dask schedulers read it as they go
        dask.config.set({**DASK_CONFIG, "temporary-directory": os.path.join(self.data_dir, "run", "dask")})
        # jobs still run as the platform on shared pools (per-user clusters are the next step):
        # what they write in a user's home must stay readable to that user's account
        umask = os.umask(0o022)
        try:
            addresses, self.clusters = start_pools(specs)
        finally:
            os.umask(umask)
        self.runner = Runner({name: Pool(address, needs(name)) for name, address in addresses.items()})
        owners = OwnerConfigs(self.data_dir)
        self.scheduler = Scheduler(catalog, self.runner, planner=Planner(catalog), adaptors_of=owners.path,
                                   **self.options)
        for name in addresses:
            kind = "local" if specs[name].local else specs[name].address
            log.info("pool %s (%s): %d slots", name, kind, self.runner.slots(name))
        write_addresses(self.data_dir, addresses)

    def loop(self) -> None:
        next_report = time.monotonic() + REPORT_S
        while not self.stopping and self.scheduler is None:  # no pool: nothing to do
            time.sleep(0.5)
        while not self.stopping:
            try:
                self.scheduler.step(STEP_WAIT)
            except Exception:  # noqa: BLE001 - logged; the catalog stays the truth, the next step goes on
                log.exception("a scheduler step failed; trying again in 1 s")
                time.sleep(1.0)
            if time.monotonic() >= next_report:
                log.info("%d jobs in flight, %d dispatched since start", len(self.scheduler.live),
                         self.scheduler.dispatched)
                next_report = time.monotonic() + REPORT_S

    def close(self) -> None:
        try:
            os.unlink(addresses_file(self.data_dir))  # the pools are going
        except FileNotFoundError:
            pass
        if self.scheduler is not None:
            self.scheduler.close()
        if self.runner is not None:
            self.runner.close()
        for cluster in self.clusters:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001 - a cluster half gone: its processes die with us anyway
                log.exception("stopping a cluster failed")


def addresses_file(data_dir: str) -> str:
    """``run/dask-pools.json``: ``{pool: Dask scheduler address}`` of the running pools, for
    the users' kernels (a Dask client of their own to a pool)."""
    return os.path.join(data_dir, "run", "dask-pools.json")


def write_addresses(data_dir: str, addresses: dict[str, str]) -> None:
    path = addresses_file(data_dir)
    with open(path + ".tmp", "w") as f:
        os.fchmod(f.fileno(), 0o644)  # the users' kernels read it (the pools are shared until per-user clusters)
        json.dump(addresses, f)
    os.replace(path + ".tmp", path)


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


def main() -> int:
    from ..errors import SkerryError
    from ..process import die_with_parent

    die_with_parent()  # a hub killed with SIGKILL must not leave its scheduler running
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    log.setLevel(logging.INFO)
    data_dir = os.environ["SKERRY_DATA_DIR"]
    held = lock(data_dir)
    manager = Manager(data_dir)

    def stop(signum, frame):
        manager.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manager.start()
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
