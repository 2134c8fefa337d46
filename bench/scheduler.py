"""Scheduler throughput: noop jobs through the full path versus raw ``client.map``.

    python bench/scheduler.py [--jobs 10000] [--queued 100000] [--windows 2,50] [--batch-times 0.05,0]

One ``LocalCluster`` (2 worker processes, 1 thread each, no dashboard) with
``distributed.scheduler.worker-saturation: inf`` serves every measurement:

1. raw: ``client.map(run_job, ...)`` of the ``noop`` module, ``--jobs`` times, all results
   gathered (the executor's work without the scheduler);
2. full path, once per ``--windows`` value (the base window is that many times the pool's
   slots, the design says about 2; the scheduler widens it to the jobs the pool finished
   in the last ``horizon`` s) and ``--batch-times`` value (the scheduler's ``batch_time``:
   short jobs share Dask tasks of about that many seconds of work; 0: one Dask task per
   job): ``--jobs`` queued noop jobs in a fresh SQLite catalog, dispatched by the
   scheduler (catalog + fair selector + Dask runner), every transition and attempt
   written. Prints jobs/s and the ratio to raw (target >= 0.7);
3. ``--queued`` jobs queued at once (0 skips it), last window, first batch time: the
   dispatch rate of the first 10,000 and of the last 10,000 (target: within 10%), and the
   scheduler loop's CPU time per dispatch in both (on a shared machine the rates of a few
   seconds swing with the others' load; the CPU time shows whether the loop slows down).
Each line also gives the CPU time per job of this process (the scheduler loop, the Dask
scheduler and client) and of the two worker processes, and the load average before it.
Asserts nothing.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import dask
import psutil
from distributed import Client, LocalCluster

from skerry.workload.builtins import BUILTINS
from skerry.workload.catalog import Catalog
from skerry.workload.executors import run_job
from skerry.workload.pools import NO_DASHBOARD
from skerry.workload.runner import Runner
from skerry.workload.scheduler import Scheduler

NOOP = BUILTINS["noop"].model_dump(mode="json")
PART = 10_000


class CPU:
    """CPU seconds of this process and of the cluster's worker processes, per job."""

    def __init__(self, cluster: LocalCluster):
        self.me = psutil.Process()
        self.workers = [psutil.Process(w.process.pid) for w in cluster.workers.values()]

    @staticmethod
    def _seconds(procs) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    def __enter__(self):
        self.load = os.getloadavg()[0]
        self.start = (self._seconds([self.me]), self._seconds(self.workers))
        return self

    def per_job(self, n: int) -> str:
        main, workers = (self._seconds([self.me]) - self.start[0]), (self._seconds(self.workers) - self.start[1])
        return (f"CPU per job: main {1000 * main / n:.2f} ms, workers {1000 * workers / n:.2f} ms; "
                f"load {self.load:.1f}")

    def __exit__(self, *exc):
        return False


def raw(client: Client, n: int) -> float:
    start = time.perf_counter()
    futures = client.map(run_job, [NOOP] * n, [None] * n, ["memory://bench-raw"] * n, pure=False)
    client.gather(futures)
    return n / (time.perf_counter() - start)


def queued(folder: str, n: int) -> tuple[Catalog, int]:
    catalog = Catalog(f"sqlite:///{Path(folder) / 'catalog.sqlite'}")
    catalog.upgrade()
    module = catalog.add_module("noop", "1", NOOP)
    task = catalog.create_task(step="noop", module_id=module)
    catalog.create_jobs(task, [[] for _ in range(n)])
    return catalog, task


def full(client: Client, n: int, window: float, batch_time: float) -> tuple[float, list[tuple[float, int]]]:
    """jobs/s from the first dispatch to the last success; (time, dispatched, CPU time of the
    loop's thread) samples."""
    with tempfile.TemporaryDirectory() as folder:
        catalog, task = queued(folder, n)
        sched = Scheduler(catalog, Runner({"cpu": client}), window=window, batch_time=batch_time)
        samples = []
        start = time.perf_counter()
        while sched.dispatched < n or sched.live:
            sched.step(0.005)
            samples.append((time.perf_counter() - start, sched.dispatched, time.thread_time()))
        elapsed = time.perf_counter() - start
        sched.run(lambda: sched.tasks_done([task]), timeout=60)  # the task's state follows its jobs
        catalog.dispose()
    return n / elapsed, samples


def rate_between(samples: list[tuple[float, int, float]], low: int, high: int) -> tuple[float, float]:
    """Dispatches per second between ``low`` and ``high`` dispatched, and the loop's CPU
    microseconds per dispatch there (what the rate would be on an idle machine)."""
    t0, c0 = next((t, c) for t, d, c in samples if d >= low)
    t1, c1 = next((t, c) for t, d, c in samples if d >= high)
    return (high - low) / (t1 - t0), 1e6 * (c1 - c0) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--windows", default="2,50")
    parser.add_argument("--batch-times", default="0.05,0")
    args = parser.parse_args()
    windows = [float(w) for w in args.windows.split(",")]
    batch_times = [float(b) for b in args.batch_times.split(",")]
    with dask.config.set({"distributed.scheduler.worker-saturation": "inf"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         scheduler_kwargs=NO_DASHBOARD) as cluster, \
            Client(cluster) as client:
        raw(client, 500)  # warm the workers (imports)
        cpu = CPU(cluster)
        with cpu:
            base = raw(client, args.jobs)
        print(f"raw client.map: {args.jobs} noop jobs, {base:,.0f} jobs/s; {cpu.per_job(args.jobs)}")
        for batch_time in batch_times:
            for window in windows:
                with cpu:
                    rate, _ = full(client, args.jobs, window, batch_time)
                print(f"full path, window {window:g} x slots, batch time {batch_time:g} s: {rate:,.0f} jobs/s, "
                      f"ratio {rate / base:.2f} (target >= 0.7); {cpu.per_job(args.jobs)}")
        if args.queued:
            window, batch_time = windows[-1], batch_times[0]
            with cpu:
                rate, samples = full(client, args.queued, window, batch_time)
            first, first_cpu = rate_between(samples, 0, min(PART, args.queued))
            last, last_cpu = rate_between(samples, max(0, args.queued - PART), args.queued)
            print(f"{args.queued} queued (window {window:g} x slots, batch time {batch_time:g} s): "
                  f"{rate:,.0f} jobs/s overall; dispatch first {PART}: {first:,.0f}/s, last {PART}: {last:,.0f}/s, "
                  f"last/first {last / first:.2f} (target 0.9-1.1); the loop's CPU per dispatch first "
                  f"{first_cpu:.0f} us, last {last_cpu:.0f} us; {cpu.per_job(args.queued)}")


if __name__ == "__main__":
    main()
