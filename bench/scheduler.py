"""The scheduler as a user sees it: no-op runs through the REST API against Dask by hand.

    python bench/scheduler.py [--jobs 10000,100000] [--one-runs 20] [--postgres]   # as root

One run prints every figure:

1. the platform (``skerry up`` as root, ``pools.json`` cpu of 2 single-threaded workers,
   so alice's own cluster has 2; its catalog SQLite, or with ``--postgres`` a real
   PostgreSQL server started for the run, ``tests/postgres.py``): alice's runs of the
   ``noop`` module over ``--jobs`` files of her home, each timed from her ``POST /runs``
   until ``GET /runs/<id>?wait=25`` (answered when the run has ended, as ``skerry run
   --wait`` asks) says ``succeeded``, her cluster already
   running (a warm-up run started it). From the catalog, for each run: when its last job
   was made (the planning time: target 100,000 within 2 s on SQLite), when its first job
   started, and the rate at which its first and its last 10,000 jobs started (target:
   within 10%), and each 10,000's in turn (how much equal parts of one run differ). The
   CPU time of the platform's processes per job, by role (the scheduler, her cluster's
   workers, its Dask scheduler and jobs runner, the service, PostgreSQL, the rest).
2. one-job latency: ``--one-runs`` runs of one job each, timed the same way: p50 and p95
   (target: p50 at most 50 ms), and where the time goes: the p50 of each step from the
   POST to its answer, the job made, started and ended, the run over (the catalog's
   stamps) and the end's answer.
3. the baselines, with the platform stopped, on a ``LocalCluster`` of the same size
   (2 single-threaded worker processes, warm; the better of two tries up to 10,000 jobs):
   the same no-op over the same files as a user would run it by hand, ``client.map`` one
   task per file and ``client.map`` batched 100 files per task (the strongest
   alternative), and ``client.submit(...).result()`` of
   one file for the latency.
4. the ratios: the full path against each baseline (target: at least 0.3x the batched one
   at 10,000 jobs), one-job p50 against ``client.submit``'s.

Asserts only that every run succeeded. The machine's other load shows in the figures:
run it on an idle machine, and compare ratios, not absolutes.
"""

import argparse
import hashlib
import math
import os
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

import dask
import httpx
import psutil
from distributed import Client, LocalCluster
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Platform, bench_platform  # noqa: E402

from skerry.workload.builtins import BUILTINS  # noqa: E402
from skerry.workload.catalog import Catalog  # noqa: E402
from skerry.workload.executors import run_job  # noqa: E402
from skerry.workload.models import Job, JobAttempt, Run, Task  # noqa: E402
from skerry.workload.pools import NO_DASHBOARD  # noqa: E402
from skerry.workload.states import FINAL  # noqa: E402

NOOP = BUILTINS["noop"].model_dump(mode="json")
PART = 10_000  # the first and last jobs whose start rates are compared
BATCH = 100  # files per task of the batched baseline (the scheduler's own limit)
API = "/services/skerry/api/v1"
POOLS = {"cpu": {"workers": 2, "threads": 1}, "gpu": None}


def run_files(files: list[str]) -> int:
    """The noop job over each file, one after the other, as a user would batch it."""
    for path in files:
        run_job(NOOP, {"input": [path]}, "memory://bench-by-hand")
    return len(files)


def p50_p95(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return ms[len(ms) // 2], ms[max(0, math.ceil(0.95 * len(ms)) - 1)]


# the platform's processes by what they do (a part of their command line -> a name)
ROLES = (("skerry.workload.manager", "scheduler"), ("spawn_main", "workers"), ("clusters worker", "workers"),
         ("clusters jobs", "jobs runner"), ("clusters scheduler", "Dask scheduler"), ("service.app", "service"))


def platform_cpu(platform: Platform, database: str | None) -> dict[str, float]:
    """CPU seconds so far of the platform's processes alive now, by role (the rest: "other"),
    and of the PostgreSQL server whose data folder is ``database``."""
    def tree(root):
        return [root, *root.children(recursive=True)]

    procs = [(p, None) for p in tree(psutil.Process(platform.proc.pid))]
    if database:
        procs += [(p, "PostgreSQL") for server in psutil.process_iter(["cmdline"])
                  if database in (server.info["cmdline"] or []) for p in tree(server)]
    out: dict[str, float] = {}
    for proc, role in procs:
        try:
            times = proc.cpu_times()
            role = role or next((name for part, name in ROLES if part in " ".join(proc.cmdline())), "other")
        except psutil.NoSuchProcess:
            continue
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def from_catalog(data: Path, run_id: int, wall: float) -> dict:
    """What the catalog says of a run: seconds after its POST until its last job was made, its
    first job started, its last job ended and the run was over, and the start rate of its
    first and last ``PART`` jobs and of each ``PART`` in turn."""
    catalog = Catalog.for_data_dir(data)
    try:
        with catalog.session() as s:
            jobs = select(Job.id).join(Task, Task.id == Job.task_id).where(Task.run_id == run_id)
            made = s.execute(select(func.max(Job.created)).where(Job.id.in_(jobs))).scalar_one()
            starts = s.execute(select(JobAttempt.started).where(JobAttempt.job_id.in_(jobs))
                               .order_by(JobAttempt.started)).scalars().all()
            ended = s.execute(select(func.max(JobAttempt.ended)).where(JobAttempt.job_id.in_(jobs))).scalar_one()
            over = s.execute(select(Run.updated).where(Run.id == run_id)).scalar_one()
    finally:
        catalog.dispose()

    def at(t) -> float:
        return t.replace(tzinfo=t.tzinfo or UTC).timestamp()

    starts = [at(t) for t in starts]
    part = min(PART, len(starts))

    def rate(seq):
        return (len(seq) - 1) / max(seq[-1] - seq[0], 1e-6)

    return {"made": at(made) - wall, "first": starts[0] - wall, "ended": at(ended) - wall, "over": at(over) - wall,
            "rate_first": rate(starts[:part]), "rate_last": rate(starts[-part:]),
            "rates": [rate(starts[i:i + part]) for i in range(0, len(starts) - part + 1, part)]}


# where one job's time goes: the bench's clock, then the catalog's stamps, then the bench's clock
STEPS = ("POST answered", "job made", "job started (worker)", "job ended (worker)", "run over", "answer received")


def one_job_steps(data: Path, runs: list[tuple[int, float, float, float]]) -> list[float]:
    """For one-job runs ``(id, wall clock at the POST, seconds to the end, seconds to the
    POST's answer)``: the p50 of the ms each of ``STEPS`` took after the one before it
    (the first after the POST was sent)."""
    steps = []
    for run_id, wall, took, posted in runs:
        r = from_catalog(data, run_id, wall)
        at = [posted, r["made"], r["first"], r["ended"], r["over"], took]
        steps.append([1000 * (b - a) for a, b in zip([0.0, *at], at)])
    return [sorted(column)[len(column) // 2] for column in zip(*steps)]


def on_platform(sizes: list[int], one_runs: int, catalog_url: str | None, database: str | None) -> dict:
    """The platform's figures (module docstring, 1 and 2), and the files, kept for the baselines."""
    results = {"runs": {}}
    tmp = tempfile.mkdtemp(prefix="skerry-bench-")
    if catalog_url:  # for skerry up, and for this process's look at the catalog
        os.environ["SKERRY_CATALOG_URL"] = catalog_url
    with bench_platform(Path(tmp), POOLS) as platform:
        data = platform.data_dir
        platform.create_user("alice")
        token = platform.user_token("alice")
        home = data / "users" / "alice" / "in"
        home.mkdir(parents=True)
        names = [f"f{i:06d}.txt" for i in range(max(sizes))]
        for name in names:
            (home / name).write_bytes(b"x")
        platform.give(home, "alice")
        entries = [{"uri": f"skerry://home/in/{name}", "size": 1, "checksum": hashlib.md5(b"x").hexdigest()}
                   for name in names]

        # one kept-alive connection, as a user's client keeps (a new httpx client costs 15 ms)
        client = httpx.Client(base_url=platform.url + API, headers={"Authorization": f"token {token}"}, timeout=60)

        def call(method, path, **kw):
            r = client.request(method, path, **kw)
            assert r.status_code < 300, r.text
            return r.json()

        def dataset(name: str, files: list[dict]) -> None:
            call("POST", "/datasets", json={"name": name, "location": "skerry://home/in"})
            for i in range(0, len(files), 50_000):
                call("POST", f"/datasets/{name}/files", json={"files": files[i:i + 50_000]})
            call("POST", f"/datasets/{name}/close")

        def run(name: str) -> tuple[int, float, float, float]:
            wall, start = time.time(), time.perf_counter()
            run_id = call("POST", "/runs", json={"workflow": "noops", "dataset": name})["id"]
            posted = time.perf_counter() - start
            while (state := call("GET", f"/runs/{run_id}", params={"wait": 25})["state"]) not in FINAL:
                pass  # 25 s passed with the run still going: ask again
            took = time.perf_counter() - start
            assert state == "succeeded", call("GET", f"/runs/{run_id}")
            return run_id, wall, took, posted

        call("POST", "/workflows", json={"name": "noops", "steps": [
            {"name": "noop", "module": "noop", "inputs": {"input": "dataset"}}]})
        dataset("warm", entries[:200])
        run("warm")  # starts her cluster; its workers import the module's code
        for n in sizes:
            dataset(f"in{n}", entries[:n])
            cpu = platform_cpu(platform, database)
            run_id, wall, took, _ = run(f"in{n}")
            after = platform_cpu(platform, database)
            cpu = {role: 1000 * (after[role] - cpu.get(role, 0.0)) / n for role in after}
            results["runs"][n] = {"took": took, "cpu": cpu, **from_catalog(data, run_id, wall)}
            print(f"  platform, {n:,} jobs: {n / took:,.0f} jobs/s ({took:.2f} s)", flush=True)
        ones, posts, marks = [], [], []
        for i in range(one_runs):
            dataset(f"one{i}", entries[i:i + 1])
            run_id, wall, took, posted = run(f"one{i}")
            ones.append(1000 * took)
            posts.append(1000 * posted)
            marks.append((run_id, wall, took, posted))
        results["one"], results["post"] = p50_p95(ones), p50_p95(posts)
        results["steps"] = one_job_steps(data, marks)
    results["files"] = [str(home / name) for name in names]
    results["tmp"] = tmp
    return results


def by_hand(files: list[str], sizes: list[int], one_runs: int) -> dict:
    """The baselines (module docstring, 3): jobs/s per size, one task per file and batched,
    and ``client.submit`` latency (p50, p95) in ms."""
    out = {}
    with dask.config.set({"distributed.scheduler.worker-saturation": "inf"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         scheduler_kwargs=NO_DASHBOARD) as cluster, Client(cluster) as client:
        client.gather(client.map(run_files, [files[:100], files[100:200]], pure=False))  # imports
        for n in sizes:
            for kind, size in (("one", 1), ("batched", BATCH)):
                out[(kind, n)] = 0.0
                for _ in range(2 if n <= 10_000 else 1):  # the better of two: the strongest baseline
                    start = time.perf_counter()
                    client.gather(client.map(run_files, [files[i:i + size] for i in range(0, n, size)], pure=False))
                    out[(kind, n)] = max(out[(kind, n)], n / (time.perf_counter() - start))
                print(f"  by hand, {n:,} jobs, {size} per task: {out[(kind, n)]:,.0f} jobs/s", flush=True)
        ms = []
        for i in range(one_runs):
            start = time.perf_counter()
            client.submit(run_files, files[i:i + 1], pure=False).result()
            ms.append(1000 * (time.perf_counter() - start))
        out["submit"] = p50_p95(ms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="10000,100000", help="run sizes, comma-separated")
    parser.add_argument("--one-runs", type=int, default=20, help="one-job runs timed")
    parser.add_argument("--postgres", action="store_true", help="the catalog on a PostgreSQL server")
    args = parser.parse_args()
    sizes = [int(n) for n in args.jobs.split(",")]
    if os.geteuid() != 0:
        sys.exit("bench/scheduler.py runs the platform, which makes OS accounts: run it as root")
    server, url = None, None
    if args.postgres:
        from postgres import Postgres

        server = Postgres().start()
        url = server.create_database("bench_scheduler")
    load = os.getloadavg()[0]
    try:
        mine = on_platform(sizes, args.one_runs, url, server and server.data)
    finally:
        if server is not None:
            server.stop()
    try:
        hand = by_hand(mine["files"], sizes, args.one_runs)
    finally:
        import shutil

        shutil.rmtree(mine["tmp"], ignore_errors=True)
    print(f"\ncatalog: {'PostgreSQL' if url else 'SQLite'}; load before: {load:.1f}; "
          f"2 single-threaded Dask workers each side")
    for n, r in mine["runs"].items():
        rate = n / r["took"]
        one, batched = hand[("one", n)], hand[("batched", n)]
        print(f"{n:,} no-op jobs, POST /runs to succeeded: {rate:,.0f} jobs/s ({r['took']:.2f} s); "
              f"client.map one per task {one:,.0f} (ratio {rate / one:.2f}), batched {BATCH} per task "
              f"{batched:,.0f} (ratio {rate / batched:.2f}{', target >= 0.3' if n == 10_000 else ''})")
        print(f"    last job made at {r['made']:.2f} s (planning), first started at {r['first']:.2f} s, last "
              f"ended at {r['ended']:.2f} s, the run over at {r['over']:.2f} s; "
              f"start rate of the first {min(PART, n):,} {r['rate_first']:,.0f}/s, of the last "
              f"{r['rate_last']:,.0f}/s (last/first {r['rate_last'] / r['rate_first']:.2f}); "
              + (f"each {PART:,} in turn {', '.join(f'{x:,.0f}' for x in r['rates'])}/s "
                 f"(the highest / the lowest {max(r['rates']) / min(r['rates']):.2f}); " if len(r['rates']) > 1 else "")
              + f"the platform's CPU per job {sum(r['cpu'].values()):.3f} ms: "
              + ", ".join(f"{role} {ms:.3f}" for role, ms in sorted(r["cpu"].items(), key=lambda i: -i[1])))
    (p50, p95), (s50, s95) = mine["one"], hand["submit"]
    print(f"one-job runs ({args.one_runs}): POST /runs to succeeded p50 {p50:.0f} ms, p95 {p95:.0f} ms "
          f"(target p50 <= 50 ms; the POST's answer alone p50 {mine['post'][0]:.0f} ms); client.submit "
          f"p50 {s50:.0f} ms, p95 {s95:.0f} ms: ratio {p50 / s50:.1f}")
    print("    where the time goes, p50 of each step after the one before: "
          + ", ".join(f"{step} {ms:.1f}" for step, ms in zip(STEPS, mine["steps"])) + " ms")


if __name__ == "__main__":
    main()
