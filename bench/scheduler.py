"""Scheduler throughput: noop jobs through the full path versus raw ``client.map``.

    python bench/scheduler.py [--jobs 10000] [--queued 100000] [--windows 2,50] [--batch-times 0.05,0]
    python bench/scheduler.py --platform [--jobs 2000]     # as root: per-user clusters, REST to end

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
4. one-job latency, ``--latency`` times (0 skips it): a one-step run over a dataset of one
   file in a fresh SQLite catalog, timed from ``start_run`` (the work of ``POST /runs``)
   until the catalog says the run succeeded, the scheduler stepping in this process,
   against ``client.submit(...).result()`` of the same job: p50 and p95 of each (target:
   p50 at most 50 ms on an idle cluster);
5. ``--plan`` files (0 skips it): a closed dataset of that many files and a one-step run
   over it in a fresh SQLite catalog; the planner (``runs.Planner``, as the scheduler
   calls it) makes their jobs a page at a time: the time to the first page's jobs and to
   the last (target: 100,000 planned within 2 s).
Each line also gives the CPU time per job of this process (the scheduler loop, the Dask
scheduler and client) and of the two worker processes, and the load average before it.

``--platform``: the whole platform instead (``skerry up`` as root, ``pools.json`` cpu of 2
single-threaded workers, so each user's cluster has 2): alice's run of ``--jobs`` noop
jobs over a dataset of that many files in her home, timed from ``POST /runs`` until ``GET
/runs/<id>`` says it succeeded (polled every 50 ms): first with her cluster not running
(its start is part of the run), then again with it running; then ``ONE_RUNS`` one-job
runs, each timed the same way (polled every 2 ms). Against the same noop over
the same files on a ``LocalCluster`` of the same size, as a user would run it by hand:
``client.map`` one task per file (the issue's target: >= 0.7 of it), and batched (one
task per worker's share: the strongest alternative); both ratios are printed. Asserts nothing.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import dask
import psutil
from sqlalchemy import func, select
from distributed import Client, LocalCluster

from skerry.workload.builtins import BUILTINS
from skerry.workload.catalog import Catalog
from skerry.workload.states import FINAL
from skerry.workload.executors import run_job
from skerry import config
from skerry.adaptors.config import write_config
from skerry.workload.models import Job, Run
from skerry.workload.pools import NO_DASHBOARD
from skerry.workload.runner import Runner
from skerry.workload.runs import PLAN_STEP, Planner, start_run
from skerry.workload.scheduler import Scheduler
from skerry.workload.schedulerconfig import SchedulerConfig

NOOP = BUILTINS["noop"].model_dump(mode="json")
PART = 10_000
ONE_RUNS = 20  # one-job runs timed through the REST API (--platform)


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
        sched = Scheduler(catalog, Runner({"cpu": client}),
                          config=SchedulerConfig(window=window, batch_time=batch_time))
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


def run_files(urls: list[str]) -> int:
    """The noop job over each file, one after the other (a batch, as a user would write it)."""
    for url in urls:
        run_job(NOOP, {"input": [url]}, "memory://bench-raw")
    return len(urls)


def by_hand(files: list[str]) -> tuple[float, float]:
    """jobs/s of ``client.map`` one task per file, and batched one task per worker, on a
    LocalCluster of 2 single-threaded workers (best of 2 tries each, warm workers)."""
    with dask.config.set({"distributed.scheduler.worker-saturation": "inf"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         scheduler_kwargs=NO_DASHBOARD) as cluster, Client(cluster) as client:
        client.gather(client.map(run_files, [files[:50], files[50:100]], pure=False))  # imports
        rates = {"one": 0.0, "batched": 0.0}
        for _ in range(2):
            start = time.perf_counter()
            client.gather(client.map(run_files, [[f] for f in files], pure=False))
            rates["one"] = max(rates["one"], len(files) / (time.perf_counter() - start))
            start = time.perf_counter()
            client.gather(client.map(run_files, [files[0::2], files[1::2]], pure=False))
            rates["batched"] = max(rates["batched"], len(files) / (time.perf_counter() - start))
    return rates["one"], rates["batched"]


def phases(data: Path, run_id: int, wall: float) -> str:
    """Where a run's time went, from the catalog: seconds after POST /runs until its jobs
    were made, the first attempt started, the last ended."""
    from sqlalchemy import func, select

    from skerry.workload.models import Job, JobAttempt, Task

    catalog = Catalog.for_data_dir(data)
    try:
        with catalog.session() as s:
            jobs = select(Job.id).join(Task, Task.id == Job.task_id).where(Task.run_id == run_id)
            made = s.execute(select(func.max(Job.created)).where(Job.id.in_(jobs))).scalar_one()
            first, last = s.execute(select(func.min(JobAttempt.started), func.max(JobAttempt.ended))
                                    .where(JobAttempt.job_id.in_(jobs))).one()
    finally:
        catalog.dispose()
    at = [t.replace(tzinfo=t.tzinfo or __import__("datetime").timezone.utc).timestamp() - wall
          for t in (made, first, last)]
    return f"jobs made at {at[0]:.2f} s, first started {at[1]:.2f} s, last ended {at[2]:.2f} s"


def platform_runs(n: int) -> None:
    """The ``--platform`` measurement (module docstring)."""
    import hashlib
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import Platform, open_for_accounts, remove_accounts

    from skerry.accounts import AccountPolicy, ensure_account

    api = "/services/skerry/api/v1"
    with tempfile.TemporaryDirectory() as tmp:
        data = open_for_accounts(Path(tmp)) / "data"
        data.mkdir()
        (data / "pools.json").write_text(json.dumps({"cpu": {"workers": 2, "threads": 1}, "gpu": None}))
        platform = Platform(data).start()
        try:
            platform.create_user("alice")
            token = platform.user_token("alice")
            account = ensure_account("alice", data / "users" / "alice",
                                     AccountPolicy(template=platform.account_template))
            home = data / "users" / "alice" / "in"
            home.mkdir()
            os.chown(home, account.uid, account.gid)
            entries = []
            for i in range(n):
                (home / f"f{i:05d}.txt").write_bytes(b"x")
                os.chown(home / f"f{i:05d}.txt", account.uid, account.gid)
                entries.append({"uri": f"skerry://home/in/f{i:05d}.txt", "size": 1,
                                "checksum": hashlib.md5(b"x").hexdigest()})

            def call(method, path, **kw):
                r = platform.api(method, api + path, token=token, **kw)
                assert r.status_code < 300, r.text
                return r.json()

            call("POST", "/workflows", json={"name": "noops", "steps": [
                {"name": "noop", "module": "noop", "inputs": {"input": "dataset"}}]})
            for label in ("her cluster not running", "her cluster running"):
                name = f"in.{len(label)}"
                call("POST", "/datasets", json={"name": name, "location": "skerry://home/in"})
                call("POST", f"/datasets/{name}/files", json={"files": entries})
                call("POST", f"/datasets/{name}/close")
                wall, start = time.time(), time.perf_counter()
                run_id = call("POST", "/runs", json={"workflow": "noops", "dataset": name})["id"]
                while (state := call("GET", f"/runs/{run_id}")["state"]) not in FINAL:
                    time.sleep(0.05)
                took = time.perf_counter() - start
                assert state == "succeeded", call("GET", f"/runs/{run_id}")
                print(f"platform, {label}: {n} noop jobs from POST /runs to succeeded in {took:.2f} s, "
                      f"{n / took:,.0f} jobs/s; {phases(data, run_id, wall)}", flush=True)
            ones, posts = [], []
            for i in range(ONE_RUNS):  # her cluster running: one-job runs, each timed from its POST /runs
                name = f"one.{i}"
                call("POST", "/datasets", json={"name": name, "location": "skerry://home/in"})
                call("POST", f"/datasets/{name}/files", json={"files": entries[i:i + 1]})
                call("POST", f"/datasets/{name}/close")
                start = time.perf_counter()
                run_id = call("POST", "/runs", json={"workflow": "noops", "dataset": name})["id"]
                posts.append(1000 * (time.perf_counter() - start))
                while (state := call("GET", f"/runs/{run_id}")["state"]) not in FINAL:
                    time.sleep(0.002)
                ones.append(1000 * (time.perf_counter() - start))
                assert state == "succeeded", call("GET", f"/runs/{run_id}")
            ones.sort()
            print(f"platform, one-job runs ({ONE_RUNS}, her cluster running, GET polled every 2 ms): from POST /runs "
                  f"to succeeded p50 {ones[len(ones) // 2]:.0f} ms, p95 {ones[int(0.95 * len(ones)) - 1]:.0f} ms "
                  f"(target p50 <= 50 ms); the POST alone p50 {sorted(posts)[len(posts) // 2]:.0f} ms", flush=True)
        finally:
            platform.stop()
            remove_accounts(platform.account_template)
        one, batched = by_hand([str(home / f"f{i:05d}.txt") for i in range(n)])
    print(f"by hand on a LocalCluster of the same size: client.map one task per file {one:,.0f} jobs/s, "
          f"batched one task per worker {batched:,.0f} jobs/s")
    print(f"ratio, her cluster running: {n / took / one:.2f} of client.map one task per file (target >= 0.7), "
          f"{n / took / batched:.2f} of client.map batched (the strongest by hand)")


def latency(client: Client, n: int, home: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(p50, p95) in ms of a one-job run through the scheduler, and of ``client.submit`` of the
    same job (module docstring, 4); ``home``: the workers' ``skerry://home/``."""
    def p50_p95(times):
        times = sorted(1000 * t for t in times)
        return times[len(times) // 2], times[max(0, int(0.95 * len(times)) - 1)]

    submits = []
    for _ in range(n):
        start = time.perf_counter()
        client.submit(run_job, NOOP, None, "memory://bench-one", pure=False).result()
        submits.append(time.perf_counter() - start)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        catalog = Catalog(f"sqlite:///{folder}/catalog.sqlite")
        catalog.upgrade()
        catalog.add_workflow("one", {"name": "one", "steps": [
            {"name": "noop", "module": "noop", "inputs": {"input": "dataset"}}]})
        sched = Scheduler(catalog, Runner({"cpu": client}), planner=Planner(catalog))
        sched.step()
        for i in range(n):
            Path(home, f"one{i}").mkdir()
            Path(home, f"one{i}", "a").write_text("a")
            catalog.create_dataset(f"one{i}", location=f"skerry://home/one{i}")
            catalog.register_files(f"one{i}", [{"uri": f"skerry://home/one{i}/a", "size": 1}])
            catalog.close_dataset(f"one{i}")
            start = time.perf_counter()
            run = start_run(catalog, "one", f"one{i}")
            sched.run(lambda r=run: sched.run_done(r), timeout=60, wait=0.005)
            runs.append(time.perf_counter() - start)
            with catalog.session() as s:
                state = s.execute(select(Run.state).where(Run.id == run)).scalar_one()
            assert state == "succeeded", state
        catalog.dispose()
    return p50_p95(runs), p50_p95(submits)


def planning(n: int) -> tuple[float, float, int]:
    """(seconds to the first page of jobs, to all of them, planner calls) for a run over a
    closed dataset of ``n`` files, timed from the run's start (the REST call's work)."""
    with tempfile.TemporaryDirectory() as folder:
        catalog = Catalog(f"sqlite:///{folder}/catalog.sqlite")
        catalog.upgrade()
        catalog.create_dataset("in", location="skerry://home/in")
        catalog.register_files("in", [{"uri": f"skerry://home/in/{i:07d}.dat", "size": 1} for i in range(n)])
        catalog.close_dataset("in")
        catalog.add_workflow("one", {"name": "one", "steps": [
            {"name": "sum", "module": "noop", "inputs": {"input": "dataset"}}]})
        start = time.perf_counter()
        start_run(catalog, "one", "in")
        planner, calls, first = Planner(catalog), 0, None
        while True:
            planner.advance()
            calls += 1
            first = first or time.perf_counter() - start
            if not planner.behind:
                break
        whole = time.perf_counter() - start
        with catalog.session() as s:
            made = s.execute(select(func.count()).select_from(Job)).scalar_one()
        catalog.dispose()
    assert made == n, (made, n)
    return first, whole, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", action="store_true", help="per-user clusters through the REST API (as root)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per measurement (10000; 2000 with --platform)")
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--latency", type=int, default=30, help="one-job runs timed (0: none)")
    parser.add_argument("--plan", type=int, default=100_000, help="files of the planning measurement (0: none)")
    parser.add_argument("--windows", default="2,50")
    parser.add_argument("--batch-times", default="0.05,0")
    args = parser.parse_args()
    if args.platform:
        platform_runs(args.jobs or 2000)
        return
    args.jobs = args.jobs or 10_000
    home = tempfile.TemporaryDirectory(prefix="bench-home-")  # skerry://home/ of the one-job runs
    write_config(f"{home.name}/adaptors.json", [{"name": "home", "type": "local", "path": home.name}])
    config.ADAPTORS.set(f"{home.name}/adaptors.json")  # before the workers start: they inherit it
    if args.plan:
        first, whole, calls = planning(args.plan)
        print(f"planning {args.plan:,} files: the first {min(PLAN_STEP, args.plan):,} jobs in {first:.2f} s, "
              f"all in {whole:.2f} s ({calls} passes; target <= 2 s for 100,000)")
    windows = [float(w) for w in args.windows.split(",")]
    batch_times = [float(b) for b in args.batch_times.split(",")]
    with dask.config.set({"distributed.scheduler.worker-saturation": "inf"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         scheduler_kwargs=NO_DASHBOARD) as cluster, \
            Client(cluster) as client:
        raw(client, 500)  # warm the workers (imports)
        if args.latency:
            mine, submit = latency(client, args.latency, home.name)
            print(f"one job, {args.latency} times: a run from start_run to succeeded p50 {mine[0]:.1f} ms, "
                  f"p95 {mine[1]:.1f} ms; client.submit(...).result() p50 {submit[0]:.1f} ms, p95 {submit[1]:.1f} ms; "
                  f"p50 ratio {mine[0] / submit[0]:.1f}x (target p50 <= 50 ms)")
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
