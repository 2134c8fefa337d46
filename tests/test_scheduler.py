"""The scheduler and the Dask runner on real LocalClusters (processes), real SQLite catalogs
(and a real PostgreSQL server where the database makes a difference).

Files are reached as ``skerry://home/...`` through a SkerryFileSystem whose ``home`` is a
local adaptor over a tmp folder (``$SKERRY_ADAPTORS``, set before the workers start so
they read the same adaptors).
"""

import hashlib
import json
import os
import random
import threading
import time

import dask
import pytest
from distributed import Client, Nanny, SpecCluster
from sqlalchemy import event, func, select, text, update

from helpers import dask_client, local_home
from skerry.workload.builtins import BUILTINS
from skerry.workload.manager import STEP_WAIT, Manager
from skerry.workload.catalog import Catalog
from skerry.workload.models import File, Job, JobAttempt, JobInput, Run, Task, now
from skerry.workload.pools import DASK_CONFIG, NO_DASHBOARD
from skerry.workload.runner import Pool, Runner
from skerry.workload import runs as runs_module
from skerry.workload import scheduler as scheduler_module
from skerry.workload.runs import Planner, start_run
from skerry.errors import ConfigError
from skerry.workload.scheduler import Scheduler, SchedulerError
from skerry.workload.scheduling.dispatch import fail_poolless
from skerry.workload.schedulerconfig import SchedulerConfig
from skerry.workload.states import RetryPolicy

MD5OF = {"name": "md5of", "version": "1", "inputs": [{"name": "input", "type": "md5"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "callable": "skerry.workload.builtins:md5"}
TWO_STEPS = {"name": "sums", "steps": [
    {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}},
    {"name": "again", "module": "md5of", "inputs": {"input": "sum.checksum"}}]}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A federation whose ``home`` is a local folder, named by ``$SKERRY_ADAPTORS``."""
    with local_home(tmp_path_factory.mktemp("sched")) as folder:
        yield folder


@pytest.fixture(scope="module")
def client(home):
    with dask_client() as c:
        yield c


def catalog(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cat.upgrade()
    return cat


def dataset(cat, home, name, n, size=64, close=True):
    folder = home / name
    folder.mkdir()
    entries = []
    for i in range(n):
        data = f"{name} file {i}\n".encode() * (size // 16 + 1)
        (folder / f"f{i:05d}.dat").write_bytes(data)
        entries.append({"uri": f"skerry://home/{name}/f{i:05d}.dat", "size": len(data),
                        "checksum": hashlib.md5(data).hexdigest()})
    cat.create_dataset(name, location=f"skerry://home/{name}")
    cat.register_files(name, entries)
    if close:
        cat.close_dataset(name)
    return entries


def noop_task(cat, n, rank=1.0, module="noop", params=None, output=None):
    spec = BUILTINS[module].model_dump(mode="json")
    try:
        mid = cat.get_module(module).id
    except Exception:
        mid = cat.add_module(module, "1", spec)
    task = cat.create_task(step=module, module_id=mid, rank=rank, params=params, output_dataset=output)
    cat.create_jobs(task, [[] for _ in range(n)])
    return task


def output_rows(cat, name):
    with cat.session() as s:
        return s.execute(text("SELECT f.uri, f.size, f.checksum, f.job_id FROM files f JOIN datasets d "
                              "ON d.id = f.dataset_id WHERE d.name = :n ORDER BY f.uri"), {"n": name}).all()


def expected_sums(entries):
    """(uri, size, checksum) of the md5 step's outputs and of the step after it."""
    first, second = [], []
    for e in entries:
        name = e["uri"].rsplit("/", 1)[1]
        line = f"{e['checksum']}  {name}\n".encode()
        first.append((e["uri"].replace("/raw", "/raw.sum", 1) + ".md5", len(line), hashlib.md5(line).hexdigest()))
        line2 = f"{hashlib.md5(line).hexdigest()}  {name}.md5\n".encode()
        second.append((first[-1][0].replace("/raw.sum/", "/raw.again/", 1) + ".md5", len(line2),
                       hashlib.md5(line2).hexdigest()))
    return sorted(first), sorted(second)


def two_step_setup(cat, home, name, n):
    entries = dataset(cat, home, name, n)
    cat.add_module("md5of", "1", MD5OF)
    cat.add_workflow("sums", TWO_STEPS)
    return entries


def test_two_step_workflow_over_1000_files_streams_and_registers_each_output_once(tmp_path, home, client):
    cat = catalog(tmp_path)
    entries = two_step_setup(cat, home, "raw", 1000)
    run = start_run(cat, "sums", "raw")
    sched = Scheduler(cat, Runner({"cpu": client}), planner=Planner(cat))
    sched.run(lambda: sched.run_done(run), timeout=600)

    first, second = expected_sums(entries)
    sums, again = output_rows(cat, "raw.sum"), output_rows(cat, "raw.again")
    assert [r[:3] for r in sums] == first and [r[:3] for r in again] == second
    assert len({r.job_id for r in sums}) == 1000 and len({r.job_id for r in again}) == 1000
    with cat.session() as s:
        assert s.execute(text("SELECT state FROM runs WHERE id = :r"), {"r": run}).scalar_one() == "succeeded"
        assert s.execute(text("SELECT step, state, jobs_total, jobs_succeeded FROM tasks ORDER BY id")).all() == [
            ("sum", "succeeded", 1000, 1000), ("again", "succeeded", 1000, 1000)]
        # streaming: the second step's first job started before the first step's last job ended
        first_down = s.execute(text("SELECT min(a.started) FROM job_attempts a JOIN jobs j ON j.id = a.job_id "
                                    "JOIN tasks t ON t.id = j.task_id WHERE t.step = 'again'")).scalar_one()
        last_up = s.execute(text("SELECT max(a.ended) FROM job_attempts a JOIN jobs j ON j.id = a.job_id "
                                 "JOIN tasks t ON t.id = j.task_id WHERE t.step = 'sum'")).scalar_one()
        assert first_down < last_up
        # every job ran once, on a worker of the cluster, and its attempt is closed
        workers = set(client.scheduler_info()["workers"])
        attempts = s.execute(select(JobAttempt.worker, JobAttempt.ended, JobAttempt.exit_code)).all()
        assert len(attempts) == 2000 and {a.worker for a in attempts} <= workers
        assert all(a.ended is not None and a.exit_code == 0 for a in attempts)
        assert s.execute(text("SELECT name, state FROM datasets WHERE name LIKE 'raw.%' ORDER BY name")).all() == [
            ("raw.again", "CLOSED"), ("raw.sum", "CLOSED")]


def dispatch_order(cat):
    with cat.session() as s:
        return s.execute(select(Job.task_id).join(JobAttempt, JobAttempt.job_id == Job.id)
                         .order_by(JobAttempt.id)).scalars().all()


def test_ranks_1_2_4_get_shares_within_5_percent_in_every_window_of_1000(tmp_path, client):
    cat = catalog(tmp_path)
    b, c = noop_task(cat, 2400, rank=2), noop_task(cat, 4800, rank=4)
    sched = Scheduler(cat, Runner({"cpu": client}), config=SchedulerConfig(window=25))
    while sched.dispatched < 300:
        sched.step(0.01)
    before = sched.dispatched
    a = noop_task(cat, 1000, rank=1)  # joins while b and c run
    sched.run(lambda: sched.tasks_done([a, b, c]) and sched.idle(), timeout=600)

    order = dispatch_order(cat)
    assert len(order) == 8200 and order[:before].count(a) == 0
    assert order[before:before + 7].count(a) >= 1  # its first job within one round (1 + 2 + 4 picks)
    start = order.index(a)
    end = len(order) - order[::-1].index(a)  # all three run together until a's last job
    together = order[start:end]
    assert len(together) >= 6900
    for i in range(0, len(together) - 1000 + 1):
        window = together[i:i + 1000]
        for task, share in ((a, 1 / 7), (b, 2 / 7), (c, 4 / 7)):
            assert abs(window.count(task) / 1000 - share) <= 0.05 * share, (i, task)
    with cat.session() as s:
        assert s.execute(select(func.count()).where(Job.state != "succeeded")).scalar_one() == 0


def test_gpu_jobs_run_only_on_the_gpu_worker_and_cpu_jobs_do_not_wait(tmp_path, home):
    cat = catalog(tmp_path)
    workers = {"cpu-0": {"cls": Nanny, "options": {"nthreads": 1}},
               "cpu-1": {"cls": Nanny, "options": {"nthreads": 1}},
               "gpu-0": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}
    from distributed.scheduler import Scheduler as DaskScheduler

    with dask.config.set(DASK_CONFIG), SpecCluster(workers=workers, scheduler={"cls": DaskScheduler,
                                                                          "options": NO_DASHBOARD}) as cluster, \
            Client(cluster) as c:
        c.wait_for_workers(3)
        gpu_module = {**BUILTINS["sleep"].model_dump(mode="json"), "name": "gpusleep",
                      "resources": {"gpu": 1}}
        gid = cat.add_module("gpusleep", "1", gpu_module)
        gpu_task = cat.create_task(step="gpu", module_id=gid, params={"seconds": 0.3})
        cat.create_jobs(gpu_task, [[] for _ in range(10)], pool="gpu")
        cpu_task = noop_task(cat, 200)
        runner = Runner({"cpu": Pool(c), "gpu": Pool(c, needs={"GPU": 1})})
        assert runner.slots("gpu") == 1 and runner.slots("cpu") == 2
        sched = Scheduler(cat, runner)
        sched.run(lambda: sched.tasks_done([gpu_task, cpu_task]), timeout=300)
        gpu_worker = next(a for a, w in c.scheduler_info()["workers"].items() if w.get("resources"))
        with cat.session() as s:
            rows = s.execute(select(Job.task_id, JobAttempt.worker, JobAttempt.started, JobAttempt.ended)
                             .join(JobAttempt, JobAttempt.job_id == Job.id)).all()
            states = s.execute(select(Task.state)).scalars().all()
    assert states == ["succeeded", "succeeded"]
    gpu_rows = [r for r in rows if r.task_id == gpu_task]
    cpu_rows = [r for r in rows if r.task_id == cpu_task]
    assert len(gpu_rows) == 10 and {r.worker for r in gpu_rows} == {gpu_worker}
    assert len(cpu_rows) == 200 and gpu_worker not in {r.worker for r in cpu_rows}
    # CPU jobs did not queue behind the GPU jobs (one at a time on one worker): they ran meanwhile
    assert min(r.started for r in cpu_rows) < max(r.started for r in gpu_rows)


def test_a_job_that_always_fails_stops_after_its_retry_limit_with_its_error_class_and_log(tmp_path, home,
                                                                                           client):
    cat = catalog(tmp_path)
    cat.create_dataset("failing", location="skerry://home/failing")
    task = noop_task(cat, 3, module="fail", params={"error": "ValueError", "message": "bad row 7"},
                     output="failing")
    sched = Scheduler(cat, Runner({"cpu": client}), config=SchedulerConfig(retry=RetryPolicy(limit=2, backoff=0.05)))
    sched.run(lambda: sched.tasks_done([task]), timeout=120)
    with cat.session() as s:
        jobs = s.execute(select(Job.state, Job.attempts, Job.error_class)).all()
        attempts = s.execute(select(JobAttempt.error_class, JobAttempt.error, JobAttempt.log)).all()
        assert s.get(Task, task).state == "failed" and s.get(Task, task).jobs_failed == 3
    assert jobs == [("failed", 3, "ValueError")] * 3
    assert len(attempts) == 9
    for error_class, error, log in attempts:
        assert error_class == "ValueError" and "bad row 7" in error
        assert log.startswith("skerry://home/failing/.skerry-logs/")
        local = home / log[len("skerry://home/"):]
        assert "ValueError: bad row 7" in local.read_text()  # the traceback


def test_a_hung_job_is_timed_out_and_retried(tmp_path, client):
    cat = catalog(tmp_path)
    task = noop_task(cat, 2, module="sleep", params={"seconds": 3.0})
    sched = Scheduler(cat, Runner({"cpu": client}),
                      config=SchedulerConfig(retry=RetryPolicy(limit=1, backoff=0.05), job_timeout=0.5))
    sched.run(lambda: sched.tasks_done([task]), timeout=120)
    with cat.session() as s:
        jobs = s.execute(select(Job.state, Job.attempts, Job.error_class)).all()
        attempts = s.execute(select(JobAttempt.job_id, JobAttempt.number, JobAttempt.error_class,
                                    JobAttempt.ended)).all()
    assert jobs == [("failed", 2, "timeout")] * 2
    assert sorted((a.number, a.error_class) for a in attempts) == [(1, "timeout"), (1, "timeout"),
                                                                   (2, "timeout"), (2, "timeout")]
    assert all(a.ended is not None for a in attempts)
    time.sleep(3)  # let the hung threads return before the next test uses the workers


def test_killing_workers_at_random_loses_no_job_and_registers_no_output_twice(tmp_path, home):
    cat = catalog(tmp_path)
    entries = dataset(cat, home, "chaos", 2000, size=16)
    cat.add_workflow("one", {"name": "one", "steps": [{"name": "sum", "module": "md5",
                                                       "inputs": {"input": "dataset"}}]})
    run = start_run(cat, "one", "chaos")
    with dask_client() as c:  # a cluster of its own: its workers are killed
        sched = Scheduler(cat, Runner({"cpu": c}), planner=Planner(cat),
                          config=SchedulerConfig(retry=RetryPolicy(limit=10, backoff=0.05)))
        kills = []
        stop = threading.Event()

        def lost_so_far() -> int:
            with cat.session() as s:
                return s.execute(select(func.count()).where(JobAttempt.error_class == "worker_lost")).scalar_one()

        def chaos():
            # five kills, and on until one hit a running attempt (a kill between two batches loses
            # nothing, and the catalog, not a guess, says when one did); never more than 30
            rng = random.Random(4)
            while not stop.is_set() and (len(kills) < 5 or not lost_so_far()) and len(kills) < 30:
                try:  # only a worker running attempts: a kill must hit some (else nothing is lost)
                    busy = sorted(w for w, keys in c.processing().items() if keys)
                    pids = c.run(os.getpid, workers=busy) if busy else {}
                except Exception:  # a worker is restarting
                    pids = {}
                if not pids:
                    stop.wait(0.01)
                    continue
                victim = rng.choice(sorted(pids))
                os.kill(pids[victim], 9)
                kills.append(victim)
                stop.wait(0.7)

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            sched.run(lambda: sched.run_done(run), timeout=600)
        finally:
            stop.set()
            killer.join()
    assert kills
    rows = output_rows(cat, "chaos.sum")
    expected = sorted((e["uri"].replace("/chaos/", "/chaos.sum/", 1) + ".md5",) for e in entries)
    assert sorted((r.uri,) for r in rows) == expected  # every output, each once
    assert len({r.job_id for r in rows}) == 2000
    with cat.session() as s:
        assert s.execute(select(Job.state, func.count()).group_by(Job.state)).all() == [("succeeded", 2000)]
        lost = s.execute(select(func.count()).where(JobAttempt.error_class == "worker_lost")).scalar_one()
    assert lost >= 1  # the kills hit running attempts, and those were run again


def test_a_restarted_scheduler_finishes_with_the_catalog_of_an_undisturbed_run(tmp_path, home, client):
    (tmp_path / "q").mkdir()
    (tmp_path / "b").mkdir()
    quiet, broken = catalog(tmp_path / "q"), catalog(tmp_path / "b")
    entries = two_step_setup(quiet, home, "raw2", 300)
    broken.add_module("md5of", "1", MD5OF)
    spec = quiet.get_workflow("sums").spec
    broken.add_workflow("sums", spec)
    broken.create_dataset("raw2", location="skerry://home/raw2")
    broken.register_files("raw2", [{k: e[k] for k in ("uri", "size", "checksum")} for e in entries])
    broken.close_dataset("raw2")

    run = start_run(quiet, "sums", "raw2", output_location="skerry://home/quiet")
    sched = Scheduler(quiet, Runner({"cpu": client}), planner=Planner(quiet))
    sched.run(lambda: sched.run_done(run), timeout=300)

    run2 = start_run(broken, "sums", "raw2", output_location="skerry://home/broken")
    first = Scheduler(broken, Runner({"cpu": client}), planner=Planner(broken))
    while first.dispatched < 250:
        first.step(0.01)
    assert first.live  # dropped with attempts in flight
    del first
    second = Scheduler(broken, Runner({"cpu": client}), planner=Planner(broken))
    second.run(lambda: second.run_done(run2), timeout=300)

    for step in ("raw2.sum", "raw2.again"):
        a = [(r.uri.replace("/quiet/", "/"), r.size, r.checksum) for r in output_rows(quiet, step)]
        b = [(r.uri.replace("/broken/", "/"), r.size, r.checksum) for r in output_rows(broken, step)]
        assert a == b and len(a) == 300
        assert len({r.job_id for r in output_rows(broken, step)}) == 300
    with broken.session() as s:
        assert s.execute(select(Job.state, func.count()).group_by(Job.state)).all() == [("succeeded", 600)]
        assert s.execute(text("SELECT state FROM runs")).scalar_one() == "succeeded"


def test_bad_settings_are_refused(tmp_path, client):
    cat = catalog(tmp_path)
    with pytest.raises(ConfigError, match="'window'"):
        SchedulerConfig(window=0)
    with pytest.raises(ConfigError, match="'job_timeout'"):
        SchedulerConfig(job_timeout=-1)
    for bad in (-0.1, float("nan"), "0.05", True):
        with pytest.raises(ConfigError, match="'batch_time'"):
            SchedulerConfig(batch_time=bad)
    with pytest.raises(SchedulerError, match="SchedulerConfig"):
        Scheduler(cat, Runner({"cpu": client}), config={"window": 2})
    sched = Scheduler(cat, Runner({"cpu": client}))
    with pytest.raises(SchedulerError, match="rank"):
        sched.set_rank(1, 0)
    with pytest.raises(SchedulerError, match="no task"):
        sched.set_rank(999, 2)


def test_an_idle_loop_waits_its_planning_interval_and_a_wake_ends_the_wait(tmp_path, client):
    """With nothing in flight the platform's loop steps once per planning interval (every
    50 ms, an idle loop took 4% of a core); a run started elsewhere wakes it at once."""
    cat = catalog(tmp_path)
    sched = Scheduler(cat, Runner({"cpu": client}), planner=Planner(cat))
    manager = Manager(str(tmp_path))
    manager.scheduler = sched
    assert manager._wait() == sched.config.plan_interval  # nothing in flight
    sched.retry_due[1] = time.monotonic() + 60
    assert manager._wait() == STEP_WAIT  # a retry is due soon: the loop keeps its pace
    del sched.retry_due[1]
    sched.step()  # recovery: nothing to take over
    began = time.monotonic()
    sched.step(0.3)
    assert time.monotonic() - began >= 0.3  # idle: the step waited
    made = []

    def start_elsewhere():  # as the service does: the job made, then the loop woken
        made.append(noop_task(cat, 1))
        sched.wake()

    threading.Timer(0.2, start_elsewhere).start()
    began = time.monotonic()
    sched.step(30)
    assert time.monotonic() - began < 10  # woken, not 30 s
    sched.run(lambda: sched.tasks_done(made), timeout=60)


@pytest.mark.parametrize("catalog_url", ["sqlite", "postgresql"], indirect=True)
def test_a_job_for_a_pool_nobody_runs_fails_with_no_pool(catalog_url, client):
    """Pools nobody runs, below, between and above the ones run, are found among 2,000
    queued jobs by one index probe per pool, not by reading every queued job."""
    cat = Catalog(catalog_url)
    cat.upgrade()
    mid = cat.add_module("noop", "1", BUILTINS["noop"].model_dump(mode="json"))
    task = cat.create_task(step="x", module_id=mid)
    cat.create_jobs(task, [[]] * 1000, pool="cpu")
    cat.create_jobs(task, [[]] * 1000, pool="gpu")
    for pool in ("a-tpu", "fpga", "tpu"):
        cat.create_jobs(task, [[]], pool=pool)
    if cat.dialect == "postgresql":
        with cat.writing() as s:
            s.connection().exec_driver_sql("ANALYZE jobs")  # as after a run's bulk planning
    runner = Runner({"cpu": Pool(client), "gpu": Pool(client)})
    reads = []

    @event.listens_for(cat.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):
        if "queued_pools" in statement:
            reads.append((statement, parameters))

    assert fail_poolless(cat, runner) == {task}  # what the scheduler's loop checks every 5 s
    event.remove(cat.engine, "before_cursor_execute", seen)
    statement, parameters = reads[0]
    with cat.session() as s:  # the 2,000 jobs of the pools run are still queued
        conn = s.connection()
        if cat.dialect == "postgresql":
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar_one()
            nodes, read = [plan[0]["Plan"]], 0
            while nodes:
                node = nodes.pop()
                if node.get("Relation Name") == "jobs":  # rows a scan of it read, per loop
                    read += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
                nodes += node.get("Plans", [])
            assert read <= 10, (read, plan)
        else:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                                          parameters))
            assert "INDEX ix_jobs_state_pool (state=? AND pool>?)" in plan, plan
    sched = Scheduler(cat, runner)
    sched.run(lambda: sched.tasks_done([task]), timeout=120)
    with cat.session() as s:
        ends = s.execute(select(Job.pool, Job.state, Job.error_class, func.count())
                         .group_by(Job.pool, Job.state, Job.error_class).order_by(Job.pool)).all()
    assert ends == [("a-tpu", "failed", "no_pool", 1), ("cpu", "succeeded", None, 1000),
                    ("fpga", "failed", "no_pool", 1), ("gpu", "succeeded", None, 1000),
                    ("tpu", "failed", "no_pool", 1)]


def test_cancel_ends_a_task_and_its_jobs(tmp_path, client):
    cat = catalog(tmp_path)
    task = noop_task(cat, 50, module="sleep", params={"seconds": 0.05})
    sched = Scheduler(cat, Runner({"cpu": client}))
    while sched.dispatched < 4:
        sched.step(0.01)
    sched.cancel_task(task)
    for _ in range(20):
        sched.step(0.01)
    with cat.session() as s:
        states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        assert s.get(Task, task).state == "cancelled"
    assert set(states) <= {"succeeded", "cancelled"} and states["cancelled"] >= 40
    assert sched.dispatched < 50


def test_files_table_is_untouched_by_jobs_without_outputs(tmp_path, client):
    cat = catalog(tmp_path)
    task = noop_task(cat, 20)
    sched = Scheduler(cat, Runner({"cpu": client}))
    sched.run(lambda: sched.tasks_done([task]), timeout=60)
    with cat.session() as s:
        assert s.execute(select(func.count()).select_from(File)).scalar_one() == 0
        assert s.get(Task, task).jobs_succeeded == 20


def test_a_job_kept_off_a_pool_moves_to_another_and_fails_when_none_is_left(tmp_path, client):
    cat = catalog(tmp_path)
    task = noop_task(cat, 1, module="fail", params={"error": "MemoryError"})
    policy = RetryPolicy.from_dict({"rules": {"MemoryError": "another_pool"}, "backoff": 0.05})
    sched = Scheduler(cat, Runner({"cpu": Pool(client), "big": Pool(client)}), config=SchedulerConfig(retry=policy))
    sched.run(lambda: sched.tasks_done([task]), timeout=60)
    with cat.session() as s:
        pools = s.execute(select(JobAttempt.pool, JobAttempt.error_class).order_by(JobAttempt.number)).all()
        assert s.execute(select(Job.state, Job.error_class)).all() == [("failed", "no_pool")]
    assert pools == [("cpu", "MemoryError"), ("big", "MemoryError")]


def test_a_job_moved_to_a_pool_that_has_read_past_it_is_still_dispatched_there(tmp_path, client):
    """A pool reads a task's queued jobs from after the last one it dispatched: a job kept off
    its own pool and moved to one that has already dispatched the task's later jobs is read
    there all the same (the task is read from its first job again)."""
    cat = catalog(tmp_path)
    task = noop_task(cat, 0)
    [moved] = cat.create_jobs(task, [[]], pool="cpu")
    later = cat.create_jobs(task, [[] for _ in range(20)], pool="big")
    assert moved < min(later)
    with cat.writing() as s:  # its first attempt ran out of memory on cpu, which the policy now keeps it off
        s.execute(update(Job).where(Job.id == moved).values(attempts=1))
        s.add(JobAttempt(job_id=moved, number=1, pool="cpu", error_class="MemoryError", ended=now(), exit_code=1))
    policy = RetryPolicy.from_dict({"rules": {"MemoryError": "another_pool"}})
    # big is refilled first: it dispatches the later jobs before cpu moves the first one to it
    sched = Scheduler(cat, Runner({"big": Pool(client), "cpu": Pool(client)}), config=SchedulerConfig(retry=policy))
    sched.run(lambda: sched.tasks_done([task]), timeout=60)
    with cat.session() as s:
        assert s.get(Task, task).jobs_succeeded == 21
        pools = s.execute(select(JobAttempt.pool).where(JobAttempt.job_id == moved)
                          .order_by(JobAttempt.number)).scalars().all()
    assert pools == ["cpu", "big"]


@pytest.mark.parametrize("catalog_url", ["sqlite", "postgresql"], indirect=True)
def test_a_tasks_next_queued_jobs_are_read_from_after_the_last_one_dispatched(catalog_url, client):
    """Not from its first job: PostgreSQL, with statistics taken while a run's jobs were all
    queued, read them by primary key and passed over every ended job on each read."""
    cat = Catalog(catalog_url)
    cat.upgrade()
    task = noop_task(cat, 3000)
    postgres = cat.dialect == "postgresql"
    if postgres:
        with cat.writing() as s:
            s.connection().exec_driver_sql("ANALYZE jobs")  # as after a run's bulk planning
    reads = []

    @event.listens_for(cat.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):
        if "FROM jobs" in statement and "ORDER BY jobs.id" in statement and "LIMIT" in statement:
            reads.append((statement, parameters, context.compiled_parameters[0]["after"]))

    sched = Scheduler(cat, Runner({"cpu": client}), config=SchedulerConfig(batch_time=0))  # a window of hundreds
    sched.run(lambda: sched.dispatched >= 2000, timeout=120)
    event.remove(cat.engine, "before_cursor_execute", seen)
    statement, parameters, after = reads[-1]
    with cat.session() as s:
        conn = s.connection()
        ended = s.execute(select(func.count()).where(Job.state != "queued")).scalar_one()
        beyond = s.execute(select(func.count()).where(Job.state != "queued", Job.id > after)).scalar_one()
        assert beyond < ended - 1000  # it reads from after the jobs that left the queue before it
        if postgres:
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar_one()
            nodes, passed = [plan[0]["Plan"]], 0
            while nodes:
                node = nodes.pop()
                passed += node.get("Rows Removed by Filter", 0)
                nodes += node.get("Plans", [])
            # and passes over only the jobs that left the queue since (not the 2,000 before)
            assert passed <= beyond, (passed, beyond, plan)
        else:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                                          parameters))
            assert "INDEX ix_jobs_task_state_id (task_id=? AND state=? AND id>?)" in plan, plan
    sched.run(lambda: sched.tasks_done([task]), timeout=120)
    with cat.session() as s:
        assert s.execute(select(Job.state, func.count()).group_by(Job.state)).all() == [("succeeded", 3000)]
        assert s.execute(select(func.count()).select_from(JobAttempt)).scalar_one() == 3000


def test_retries_raise_a_tasks_rank_up_to_the_cap(tmp_path, client):
    from skerry.workload.states import RankParams

    cat = catalog(tmp_path)
    task = noop_task(cat, 6, rank=2, module="fail")
    sched = Scheduler(cat, Runner({"cpu": client}), config=SchedulerConfig(retry=RetryPolicy(limit=2, backoff=0.01),
                      rank=RankParams(beta=1.0, cap=5.0), rank_interval=0.01))
    sched.run(lambda: sched.tasks_done([task]), timeout=60)
    sched.step()
    with cat.session() as s:
        rank = s.get(Task, task).rank
    assert rank == 5.0  # 12 retries would give 14: the cap holds


def test_a_task_cancelled_in_the_catalog_leaves_the_scheduler_and_stays_cancelled(tmp_path, client):
    """The REST API cancels by writing the catalog; the scheduler notices within plan_interval."""
    from skerry.hub.service.workload import Workload

    cat = catalog(tmp_path)
    failing = noop_task(cat, 2, module="fail")  # retried only after 600 s: they wait in retry_due
    sleeping = noop_task(cat, 30, module="sleep", params={"seconds": 0.5})
    sched = Scheduler(cat, Runner({"cpu": client}),
                      config=SchedulerConfig(retry=RetryPolicy(limit=3, backoff=600, max_backoff=600)))
    while len(sched.retry_due) < 2 or not any(live.task == sleeping for live in sched.live.values()):
        sched.step(0.01)
    Workload(cat).cancel(failing, None)
    Workload(cat).cancel(sleeping, None)
    with cat.session() as s:
        after_cancel = s.execute(select(Job.id, Job.state).order_by(Job.id)).all()
    sched.run(lambda: not sched.live and not sched.retry_due, timeout=60)

    later = noop_task(cat, 20, module="sleep", params={"seconds": 0.01})
    sched.run(lambda: sched.tasks_done([later]) and sched.idle(), timeout=120)
    with cat.session() as s:
        states = dict(s.execute(select(Task.id, Task.state)).all())
        jobs = s.execute(select(Job.id, Job.state).where(Job.task_id != later).order_by(Job.id)).all()
        open_attempts = s.execute(select(func.count()).where(JobAttempt.ended.is_(None))).scalar_one()
    assert states == {failing: "cancelled", sleeping: "cancelled", later: "succeeded"}
    assert jobs == after_cancel  # a result that came after the cancel changed nothing
    assert {state for _, state in jobs} <= {"succeeded", "cancelled"}
    assert sum(state == "cancelled" for _, state in jobs) >= 2 + 20
    assert open_attempts == 0


def test_a_finished_attempt_whose_end_event_never_comes_is_gathered_once(client):
    from skerry.workload.runner import END_GRACE, TOPIC, Finished, JobSpec
    from skerry.workload.scheduler import NO_OUTPUT

    runner = Runner({"cpu": client})
    client.unsubscribe_topic(TOPIC)  # no start/end event reaches this runner: only the future does
    runner.submit("cpu", JobSpec(1, 1, BUILTINS["noop"].model_dump(mode="json"), {}, NO_OUTPUT, {}))
    got = []
    deadline = time.monotonic() + 60
    while not any(isinstance(e, Finished) for e in got) and time.monotonic() < deadline:
        got += runner.events(timeout=0.1)
    for _ in range(int(END_GRACE / 0.1) + 5):  # and nothing more comes
        got += runner.events(timeout=0.1)
    finished = [e for e in got if isinstance(e, Finished)]
    assert len(finished) == 1
    assert finished[0].result.ok and not finished[0].lost
    assert finished[0].worker in client.scheduler_info()["workers"]
    assert runner.in_flight() == 0


def test_a_refill_sent_while_batches_are_in_flight_is_spread_over_the_workers(client):
    from skerry.workload.runner import Finished, JobSpec
    from skerry.workload.scheduler import NO_OUTPUT

    sleep = BUILTINS["sleep"].model_dump(mode="json")

    def batches(first, n):  # n batches of one 0.1 s job each
        return [[JobSpec(job, 1, sleep, {}, NO_OUTPUT, {"seconds": 0.1})] for job in range(first, first + n)]

    runner = Runner({"cpu": client})
    runner.submit_batches("cpu", batches(1, 20))
    runner.submit_batches("cpu", batches(101, 10))  # a refill while the first 20 are in flight
    where = {}
    deadline = time.monotonic() + 60
    while len(where) < 30 and time.monotonic() < deadline:
        where |= {e.job: e.worker for e in runner.events(timeout=0.1) if isinstance(e, Finished)}
    assert len(where) == 30 and runner.in_flight() == 0
    refill = [where[job] for job in range(101, 111)]
    # keyed by strings (one Dask task group), all 10 went to one worker (Dask's root-task
    # co-assignment), which ran 20 jobs while the other ran 10 and then idled
    counts = sorted(refill.count(w) for w in client.scheduler_info()["workers"])
    assert counts[0] >= 4, counts


def test_a_scheduler_json_in_the_data_dir_changes_the_scheduler(tmp_path, client):
    cat = catalog(tmp_path)
    task = noop_task(cat, 1, module="sleep", params={"seconds": 2.0})
    assert SchedulerConfig.for_data_dir(tmp_path).job_timeout is None  # no file: no limit
    (tmp_path / "scheduler.json").write_text(json.dumps({"job_timeout": 0.5, "retry": {"limit": 0}}))
    sched = Scheduler(cat, Runner({"cpu": client}), config=SchedulerConfig.for_data_dir(tmp_path))
    sched.run(lambda: sched.tasks_done([task]), timeout=60)
    with cat.session() as s:
        assert s.execute(select(Job.state, Job.attempts, Job.error_class)).all() == [("failed", 1, "timeout")]
    time.sleep(2)  # let the hung thread return before the next test uses the workers


def test_a_horizon_that_is_not_a_positive_number_is_refused(tmp_path, client):
    with pytest.raises(ConfigError, match="'horizon'"):
        SchedulerConfig(horizon=0)


# ---- batches: several short jobs in one Dask task ----


@pytest.mark.parametrize("jobs, took, dispatched", [
    (430, 0.001, 430),  # 30 more than the room, less than a batch (50 jobs of 0.001 s): all go now
    (460, 0.001, 400),  # 60 more: a batch's worth waits for room
    (401, None, 400),  # not measured short: never more than the window
])
def test_a_queue_less_than_a_batch_longer_than_the_room_goes_in_one_refill(tmp_path, client, jobs, took, dispatched):
    cat = catalog(tmp_path)
    task = noop_task(cat, jobs)
    # 2 slots: a window of 400, and 2 slots x 0.2 s / 0.001 s = 400 when measured; batches of
    # at most 400 / (2 x 2) = 100 jobs and 0.05 s of work: 50 jobs of 0.001 s
    sched = Scheduler(cat, Runner({"cpu": client}), config=SchedulerConfig(window=200, horizon=0.2, batch_time=0.05))
    if took is not None:
        sched.inflight.took[task] = took
    with cat.writing() as s:
        got = sched.dispatcher.refill(s)
    assert sched.window_of("cpu") == 400
    assert len(got) == dispatched
    with cat.session() as s:
        assert s.execute(select(func.count()).where(Job.state == "queued")).scalar_one() == jobs - dispatched



class RecordingRunner(Runner):
    """A real runner that also keeps the batches it hands to Dask: [[(job, attempt), ...]]."""

    def __init__(self, pools):
        super().__init__(pools)
        self.sent = []

    def submit_batches(self, pool, batches, avoid=None):
        self.sent += [[(s.job, s.attempt) for s in b] for b in batches if b]
        super().submit_batches(pool, batches, avoid)


def task_of_jobs(cat):
    with cat.session() as s:
        return dict(s.execute(select(Job.id, Job.task_id)).all())


def test_short_jobs_share_batches_and_each_keeps_its_own_attempt(tmp_path, client):
    cat = catalog(tmp_path)
    task = noop_task(cat, 300)
    runner = RecordingRunner({"cpu": client})
    sched = Scheduler(cat, runner, config=SchedulerConfig(batch_time=1.0))
    sched.run(lambda: sched.tasks_done([task]), timeout=120)
    assert max(len(b) for b in runner.sent) > 1  # measured as short: they went together
    assert len(runner.sent[0]) == 1  # not measured yet: alone
    assert sorted(a for b in runner.sent for a in b) == sorted((j, 1) for j in task_of_jobs(cat))
    with cat.session() as s:
        attempts = s.execute(select(JobAttempt.job_id, JobAttempt.number, JobAttempt.worker, JobAttempt.started,
                                    JobAttempt.ended, JobAttempt.exit_code)).all()
        assert s.get(Task, task).jobs_succeeded == 300
    assert len(attempts) == 300 and {a.number for a in attempts} == {1}
    assert all(a.worker and a.started and a.ended and a.exit_code == 0 for a in attempts)
    assert runner.in_flight() == 0


def test_cancelling_a_task_drops_only_its_jobs_from_the_batches_it_shares(tmp_path, client):
    cat = catalog(tmp_path)
    a = noop_task(cat, 150, module="sleep", params={"seconds": 0.02})
    b = noop_task(cat, 150, module="sleep", params={"seconds": 0.02})
    runner = RecordingRunner({"cpu": client})
    sched = Scheduler(cat, runner, config=SchedulerConfig(batch_time=1.0, window=10))
    task_of = task_of_jobs(cat)

    def shared():  # a batch in flight with jobs of both tasks still to run
        for batch in runner.sent:
            waiting = {task_of[j] for j, _ in batch if j in sched.live}
            if waiting == {a, b}:
                return batch
        return None

    deadline = time.monotonic() + 60
    while shared() is None and time.monotonic() < deadline:
        sched.step(0.005)
    batch = shared()
    assert batch is not None
    mine = [j for j, _ in batch if j in sched.live and task_of[j] == a]
    sched.cancel_task(b)
    sched.run(lambda: sched.tasks_done([a, b]) and not sched.live, timeout=120)

    with cat.session() as s:
        a_jobs = s.execute(select(Job.id, Job.state, Job.attempts).where(Job.task_id == a)).all()
        b_states = dict(s.execute(select(Job.state, func.count()).where(Job.task_id == b)
                                  .group_by(Job.state)).all())
        open_attempts = s.execute(select(func.count()).where(JobAttempt.ended.is_(None))).scalar_one()
        tasks = dict(s.execute(select(Task.id, Task.state)).all())
    # the other task's jobs in the same batches ran on, once each: none lost, none retried
    assert {(state, n) for _, state, n in a_jobs} == {("succeeded", 1)} and len(a_jobs) == 150
    assert mine and all(j in {row.id for row in a_jobs} for j in mine)
    assert set(b_states) <= {"succeeded", "cancelled"} and b_states["cancelled"] >= 1
    assert tasks == {a: "succeeded", b: "cancelled"}
    assert open_attempts == 0 and runner.in_flight() == 0


def test_a_worker_killed_mid_batch_loses_only_the_jobs_of_it_not_reported_yet(tmp_path):
    cat = catalog(tmp_path)
    task = noop_task(cat, 100, module="sleep", params={"seconds": 0.1})
    with dask_client() as c:  # a cluster of its own: a worker is killed
        runner = RecordingRunner({"cpu": c})
        sched = Scheduler(cat, runner, config=SchedulerConfig(batch_time=2.0, window=10,
                                                              retry=RetryPolicy(limit=5, backoff=0.05)))

        def half_done():  # a batch of which some jobs succeeded and several still run
            for batch in runner.sent:
                waiting = [j for j, _ in batch if j in sched.live]
                if len(batch) - len(waiting) >= 1 and len(waiting) >= 3:
                    return batch, waiting
            return None, None

        pids = c.run(os.getpid)  # asked before: on a busy machine the round trip outlasted the batch
        deadline = time.monotonic() + 60
        while half_done()[0] is None and time.monotonic() < deadline:
            sched.step(0.005)
        batch, waiting = half_done()
        assert batch is not None
        done = [j for j, _ in batch if j not in waiting]
        with cat.session() as s:
            worker = s.execute(select(JobAttempt.worker).where(JobAttempt.job_id == done[0])).scalar_one()
        os.kill(pids[worker], 9)
        sched.run(lambda: sched.tasks_done([task]), timeout=300)

    with cat.session() as s:
        attempts = s.execute(select(JobAttempt.job_id, JobAttempt.number, JobAttempt.error_class,
                                    JobAttempt.exit_code, JobAttempt.ended)).all()
        assert s.execute(select(Job.state, func.count()).group_by(Job.state)).all() == [("succeeded", 100)]
    by_job = {}
    for a in attempts:
        by_job.setdefault(a.job_id, []).append(a)
    # what the batch had reported stays: run once; what it had not is lost and run again
    assert all(len(by_job[j]) == 1 and by_job[j][0].exit_code == 0 for j in done)
    lost = [j for j in waiting if any(a.error_class == "worker_lost" for a in by_job[j])]
    assert lost
    for rows in by_job.values():  # every job: one success, its last attempt; every attempt ended
        assert [a.exit_code == 0 and a.error_class is None for a in sorted(rows, key=lambda a: a.number)][-1]
        assert sum(a.exit_code == 0 and a.error_class is None for a in rows) == 1
        assert all(a.ended is not None for a in rows)


def test_a_hung_job_does_not_hold_the_jobs_behind_it_in_its_batch(tmp_path, home, client):
    """Each job waits for the test's go (``gated``), given once the test saw its batch: the
    job the test never lets go hangs mid-batch, where the test chose."""
    from gated import GATED

    cat = catalog(tmp_path)
    entries = dataset(cat, home, "held", 40, size=16)
    holds = tmp_path / "holds"
    holds.mkdir()
    for e in entries:
        (holds / e["uri"].rsplit("/", 1)[1]).touch()
    cat.add_module("gated", "1", GATED)
    cat.add_workflow("one", {"name": "one", "steps": [{"name": "sum", "module": "gated",
                                                       "inputs": {"input": "dataset"},
                                                       "params": {"holds": str(holds)}}]})
    start_run(cat, "one", "held")
    runner = RecordingRunner({"cpu": client})
    sched = Scheduler(cat, runner, planner=Planner(cat), config=SchedulerConfig(batch_time=5.0, job_timeout=3.0,
                                                                       retry=RetryPolicy(limit=0)))

    def let_go(job):
        with cat.session() as s:
            uri = s.execute(select(File.uri).join(JobInput, JobInput.file_id == File.id)
                            .where(JobInput.job_id == job)).scalar_one()
        (holds / uri.rsplit("/", 1)[1]).unlink(missing_ok=True)

    seen, hung, mates = 0, None, []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sched.step(0.005)
        for batch in runner.sent[seen:]:  # a batch's jobs are let go only once it was seen
            jobs = [j for j, _ in batch]
            if hung is None and len(jobs) >= 3:
                hung, mates = jobs[1], jobs[2:]
            for j in jobs:
                if j != hung:
                    let_go(j)
        seen = len(runner.sent)
        with cat.session() as s:
            states = dict(s.execute(select(Job.id, Job.state)).all())
        if hung is not None and states[hung] == "failed" and all(states[j] == "succeeded" for j in mates):
            break  # the jobs behind the hung one finished while it still hangs
    assert hung is not None and mates
    assert states[hung] == "failed" and all(states[j] == "succeeded" for j in mates)
    let_go(hung)  # its thread returns; its late result is dropped
    # to the end, each batch sent is let go once seen: jobs not yet sent when the loop above
    # ended would otherwise wait for a go that never comes (seen in CI: 4 attempts held)
    deadline = time.monotonic() + 120
    while not sched.idle():
        assert time.monotonic() < deadline, f"not idle within 120 s ({len(sched.live)} attempts in flight)"
        sched.step(0.005)
        for batch in runner.sent[seen:]:
            for j, _ in batch:
                let_go(j)
        seen = len(runner.sent)

    with cat.session() as s:
        jobs = {r.id: r for r in s.execute(select(Job.id, Job.state, Job.attempts, Job.error_class))}
        attempts = s.execute(select(JobAttempt.job_id, JobAttempt.error_class, JobAttempt.ended)).all()
    assert (jobs[hung].state, jobs[hung].attempts, jobs[hung].error_class) == ("failed", 1, "timeout")
    # (a job let go later than job_timeout after its start, on a busy machine, fails as timed out)
    others = {j: (r.state, r.attempts, r.error_class) for j, r in jobs.items() if j != hung}
    assert all(v == ("succeeded", 1, None) for v in others.values()), others
    assert len(attempts) == 40 and all(a.ended is not None for a in attempts)
    rows = output_rows(cat, "held.sum")
    assert len(rows) == 39 and len({r.job_id for r in rows}) == 39  # each output once


def test_with_nothing_in_flight_a_new_run_is_planned_dispatched_and_ended_without_waiting_an_interval(
        tmp_path, home, client):
    """No interval on the path of a lone run: with the planner's interval at an hour, a
    one-job run started while the scheduler idles still runs and ends; the steps it takes
    are counted (two Dask round trips need a few), not timed."""
    cat = catalog(tmp_path)
    cat.add_workflow("one", {"name": "one", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]})
    sched = Scheduler(cat, Runner({"cpu": client}), planner=Planner(cat),
                      config=SchedulerConfig(plan_interval=3600))
    for _ in range(3):
        sched.step(0.01)  # the first plan and task pass happen here: the hour starts now
    for name in ("lone1", "lone2"):
        [entry] = dataset(cat, home, name, 1)
        run = start_run(cat, "one", name)
        sched.run(lambda r=run: sched.run_done(r), timeout=60, wait=0.01)
        with cat.session() as s:
            assert s.get(Run, run).state == "succeeded"
            [(uri, job)] = s.execute(select(File.uri, File.job_id).join(Task, Task.output_dataset_id == File.dataset_id)
                                     .where(Task.run_id == run)).all()
        assert uri.endswith("f00000.dat.md5") and job is not None  # its one output, registered with its job


class SlowPlanner(Planner):
    """A planner whose every pass takes at least 0.2 s, and which notes, at each pass made
    while it was behind, what the scheduler had in flight."""

    def __init__(self, cat):
        super().__init__(cat)
        self.sched = None
        self.passes_behind = []  # (attempts in flight, their work in s, the last pass's time in s)

    def advance(self):
        if self.behind:
            self.passes_behind.append((len(self.sched.live), self.sched._work_in_flight(), self.sched._page_time))
        time.sleep(0.2)
        return super().advance()


@pytest.mark.parametrize("hold", [3600.0, 0.0])
def test_a_planner_behind_plans_its_next_page_only_when_the_pools_hold_as_much_work_as_a_page_takes(
        tmp_path, home, client, monkeypatch, hold):
    """A page of a big run is planned in the scheduler's loop: planned while the workers
    hold less work than a page takes, it leaves them idle. With the hold (``RAMP_HOLD``
    an hour here), every page after the first comes with nothing in flight or with at
    least a page's time of work in flight, and every file still gets its one job; with
    no hold (0 s), pages come while the pools hold a few no-op jobs: the case the rule
    is for."""
    monkeypatch.setattr(scheduler_module, "RAMP_HOLD", hold)
    monkeypatch.setattr(runs_module, "PLAN_FIRST", 10)
    monkeypatch.setattr(runs_module, "PLAN_STEP", 40)
    cat = catalog(tmp_path)
    dataset(cat, home, f"paged{int(hold)}", 200)
    cat.add_workflow("noops", {"name": "noops", "steps": [{"name": "n", "module": "noop",
                                                           "inputs": {"input": "dataset"}}]})
    planner = SlowPlanner(cat)
    sched = planner.sched = Scheduler(cat, Runner({"cpu": client}), planner=planner)
    run = start_run(cat, "noops", f"paged{int(hold)}")
    sched.run(lambda: sched.run_done(run), timeout=120, wait=0.01)
    with cat.session() as s:
        assert s.get(Run, run).state == "succeeded"
        files = s.execute(select(JobInput.file_id).join(Job).join(Task).where(Task.run_id == run)).scalars().all()
    assert len(files) == len(set(files)) == 200  # every file in one job
    assert len(planner.passes_behind) >= 5  # 10, then 40 at a time: 200 files
    early = [(n, work, page) for n, work, page in planner.passes_behind if n and work < page]
    if hold:
        assert not early, f"pages planned while the pools held less than a page's work: {early}"
    else:
        assert early, "no page came while the pools held little work: the test shows nothing"
