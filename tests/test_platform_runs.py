"""Runs on a running platform: ``skerry up`` schedules the catalog's jobs on its own Dask pool.

- ``kill -9`` of every process of the platform in the middle of a two-step run over 200
  files, then ``skerry up`` again: ``skerry status RUN --wait`` sees the run finish, and
  its catalog is the one an undisturbed run produces: the same run over a copy of the
  dataset, started afterwards with ``skerry run ... --wait`` (the CLI end to end).
- Each job reads and writes its owner's storage: alice's jobs see alice's home.
- With ``SKERRY_CATALOG_URL`` (a real PostgreSQL server), the service and the scheduler
  both keep the catalog there.

Everything is real: ``skerry up`` (JupyterHub, proxy, service, scheduler), a LocalCluster
of two worker processes, the SQLite catalog, the CLI in a subprocess.
"""

import hashlib
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from helpers import Platform, descendants, kill_leftovers, ok, pids_of, wait_for
from skerry.workload.catalog import Catalog
from skerry.workload.models import Dataset, File, Job, JobAttempt, Run, Task

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"
FILES = 200
# a step slow enough (0.2 s a job) that the platform can be killed in its middle
SLOW_MD5 = {"name": "slowmd5", "version": "1",
            "inputs": [{"name": "input", "kind": "single", "type": "file"}],
            "outputs": [{"name": "checksum", "kind": "single", "type": "md5", "file_name": "{name}.md5"}],
            "command": ["sh", "-c", 'sleep 0.2 && md5sum < "$0" | cut -c1-32 > "$1"', "{input}", "{output}"]}
MD5OF = {"name": "md5of", "version": "1", "inputs": [{"name": "input", "type": "md5"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "callable": "skerry.workload.builtins:md5"}
SUMS = {"name": "sums", "steps": [
    {"name": "sum", "module": "slowmd5", "inputs": {"input": "dataset"}},
    {"name": "again", "module": "md5of", "inputs": {"input": "sum.checksum"}}]}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    data = tmp_path_factory.mktemp("runs") / "data"
    data.mkdir()
    (data / "pools.json").write_text('{"cpu": {"workers": 2, "threads": 1}, "gpu": null}')
    p = Platform(data).start()
    yield p
    p.stop()
    kill_leftovers(p.data_dir)


def dataset_of_files(platform, token, name: str, folder: str, content: dict[str, bytes]) -> None:
    """``content`` as files in alice's home ``folder``, registered in a CLOSED dataset."""
    home = platform.data_dir / "users" / "alice" / folder
    home.mkdir(parents=True)
    for file_name, data in content.items():
        (home / file_name).write_bytes(data)
    platform.give(home, "alice")  # her files, as if she had written them
    ok(platform.api("POST", API + "/datasets", token=token, json={"name": name, "location": f"skerry://home/{folder}"}),
       201)
    entries = [{"uri": f"skerry://home/{folder}/{n}", "size": len(d), "checksum": hashlib.md5(d).hexdigest()}
               for n, d in content.items()]
    ok(platform.api("POST", API + f"/datasets/{name}/files", token=token, json={"files": entries}))
    ok(platform.api("POST", API + f"/datasets/{name}/close", token=token))


def cli(platform, token, *args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SKERRY_URL=platform.url, SKERRY_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "skerry", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def outputs(catalog, run_id: int) -> dict[str, dict[str, tuple]]:
    """step -> {file name: (size, checksum)} of the run's output datasets; each URI once."""
    got = {}
    with catalog.session() as s:
        for step, dataset_id in s.execute(select(Task.step, Task.output_dataset_id).where(Task.run_id == run_id)):
            rows = s.execute(select(File.uri, File.size, File.checksum, File.job_id)
                             .where(File.dataset_id == dataset_id)).all()
            names = [uri.rsplit("/", 1)[-1] for uri, *_ in rows]
            assert len(names) == len(set(names)), f"{step}: an output registered twice"
            assert len({job for *_, job in rows}) == len(rows), f"{step}: a job registered two outputs"
            got[step] = {uri.rsplit("/", 1)[-1]: (size, checksum) for uri, size, checksum, _ in rows}
    return got


def jobs_by_state(catalog, run_id: int) -> dict[str, dict[str, int]]:
    with catalog.session() as s:
        rows = s.execute(select(Task.step, Job.state, func.count()).join(Job, Job.task_id == Task.id)
                         .where(Task.run_id == run_id).group_by(Task.step, Job.state)).all()
    out = {}
    for step, state, n in rows:
        out.setdefault(step, {})[state] = n
    return out


def kill_everything(platform) -> set[int]:
    """SIGKILL ``skerry up`` and every process below it at once; the pids killed."""
    pids = {platform.proc.pid} | descendants(platform.proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    platform.proc.wait(30)
    return pids


def test_kill_9_of_the_platform_mid_run_then_up_finishes_with_the_undisturbed_catalog(platform):
    platform.create_user("alice")
    alice = platform.user_token("alice")
    ok(platform.api("POST", API + "/modules", token=alice, json=SLOW_MD5), 201)
    ok(platform.api("POST", API + "/modules", token=alice, json=MD5OF), 201)
    ok(platform.api("POST", API + "/workflows", token=alice, json=SUMS), 201)
    content = {f"f{i:03d}.bin": os.urandom(1000 + i) for i in range(FILES)}
    dataset_of_files(platform, alice, "alice.in", "in", content)
    dataset_of_files(platform, alice, "alice.ref", "ref", content)  # a copy, for the undisturbed run
    catalog = Catalog.for_data_dir(platform.data_dir)

    run = ok(platform.api("POST", API + "/runs", token=alice, json={"workflow": "sums", "dataset": "alice.in"}),
             201)["id"]

    def midway():
        done = jobs_by_state(catalog, run).get("sum", {}).get("succeeded", 0)
        return 40 <= done < FILES - 40

    wait_for(midway, 120, 0.05, "the run to be midway")
    catalog.dispose()
    killed = kill_everything(platform)
    assert len(killed) >= 6  # skerry up, hub, proxy, service, scheduler, 2 workers (+ nannies' helpers)
    # nothing of the platform is left: workers die with the scheduler that started them
    wait_for(lambda: not (pids_of(str(platform.data_dir), environ=True) - {os.getpid()}), 30, what="no orphans")
    before = jobs_by_state(catalog, run)
    assert before["sum"].get("succeeded", 0) < FILES

    platform.start()
    waited = cli(platform, alice, "status", str(run), "--wait")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "succeeded" in waited.stdout

    # the undisturbed run, through the CLI end to end, with its progress bar
    fresh = cli(platform, alice, "run", "sums", "alice.ref", "--wait")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "100%" in fresh.stdout + fresh.stderr and "started run" in fresh.stdout
    with catalog.session() as s:
        ref = s.execute(select(Run.id).where(Run.id != run)).scalar_one()
        states = dict(s.execute(select(Run.id, Run.state)).all())
        closed = s.execute(select(Dataset.state).join(Task, Task.output_dataset_id == Dataset.id)
                           .where(Task.run_id == run)).scalars().all()
        retried = s.execute(select(func.count()).select_from(JobAttempt).join(Job, Job.id == JobAttempt.job_id)
                            .join(Task, Task.id == Job.task_id).where(Task.run_id == run)).scalar()
    assert states == {run: "succeeded", ref: "succeeded"} and closed == ["CLOSED", "CLOSED"]

    interrupted, undisturbed = outputs(catalog, run), outputs(catalog, ref)
    assert interrupted == undisturbed  # the same output files, each once, same sizes and checksums
    assert len(interrupted["sum"]) == len(interrupted["again"]) == FILES
    assert jobs_by_state(catalog, run) == jobs_by_state(catalog, ref) == {"sum": {"succeeded": FILES},
                                                                         "again": {"succeeded": FILES}}
    # what the jobs wrote is right: the md5 of each input, read from alice's home
    sums = platform.data_dir / "users" / "alice"
    written = next(p for p in sums.iterdir() if p.is_dir() and p.name.startswith("alice.in") and "sum" in p.name)
    for name in ("f000.bin", "f123.bin"):
        assert (written / f"{name}.md5").read_text().strip() == hashlib.md5(content[name]).hexdigest()
    assert retried >= 2 * FILES  # every job has its attempt row (those cut by the kill and run again: two)
    catalog.dispose()


def test_each_job_sees_its_owners_storage(platform):
    """bob's dataset names skerry://home/in/f000.bin: bob's job reads bob's home, never alice's
    (alice has that file from the test above, bob has only his own)."""
    platform.create_user("bob")
    bob = platform.user_token("bob")
    mine = os.urandom(500)
    (platform.data_dir / "users" / "bob" / "in").mkdir(parents=True)
    (platform.data_dir / "users" / "bob" / "in" / "mine.bin").write_bytes(mine)
    platform.give(platform.data_dir / "users" / "bob" / "in", "bob")
    ok(platform.api("POST", API + "/datasets", token=bob, json={"name": "bob.in", "location": "skerry://home/in"}),
       201)
    ok(platform.api("POST", API + "/datasets/bob.in/files", token=bob, json={"files": [
        {"uri": "skerry://home/in/mine.bin", "size": 500},
        {"uri": "skerry://home/in/f000.bin", "size": 1000}]}))  # alice's file name, not in bob's home
    ok(platform.api("POST", API + "/datasets/bob.in/close", token=bob))
    ok(platform.api("POST", API + "/workflows", token=bob, json={"name": "one", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}), 201)
    r = cli(platform, bob, "run", "one", "bob.in", "--wait")
    assert r.returncode == 1, r.stdout + r.stderr  # one job of two failed: the run failed
    home = platform.data_dir / "users" / "bob"
    written = [p for p in home.rglob("*.md5")]
    assert [p.name for p in written] == ["mine.bin.md5"]
    assert written[0].read_text().split()[0] == hashlib.md5(mine).hexdigest()
    assert not list((platform.data_dir / "users" / "alice").rglob("mine.bin.md5"))
    catalog = Catalog.for_data_dir(platform.data_dir)
    with catalog.session() as s:
        run = s.execute(select(Run.id).where(Run.owner == "bob")).scalar_one()
        failed = s.execute(select(Job.error_class).join(Task, Task.id == Job.task_id)
                           .where(Task.run_id == run, Job.state == "failed")).scalars().all()
    catalog.dispose()
    assert failed == ["MissingInput"]  # the executor checks its inputs are there first


def test_stopping_the_platform_stops_the_scheduler_and_its_workers(platform):
    scheduler = pids_of("skerry.workload.manager") & ({platform.proc.pid} | descendants(platform.proc.pid))
    assert len(scheduler) == 1, "the scheduler runs as a hub service"
    workers = descendants(next(iter(scheduler)))
    assert len(workers) >= 2
    platform.stop()
    assert platform.proc.returncode == 0
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers | scheduler), 30,
             what="the scheduler and its workers to stop")


def test_skerry_up_with_a_catalog_url_keeps_the_whole_catalog_in_postgresql(tmp_path):
    """``SKERRY_CATALOG_URL`` in ``skerry up``'s environment reaches the service (datasets,
    workflows, runs) and the scheduler (jobs, attempts): a run ends ``succeeded`` in
    PostgreSQL, and no SQLite catalog is made in the data dir."""
    from postgres import Postgres, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL binaries are missing (apt-get install -y postgresql)")
    server = Postgres().start()
    platform = None
    try:
        url = server.create_database("platform")
        data = tmp_path / "data"
        data.mkdir()
        (data / "pools.json").write_text('{"cpu": {"workers": 1, "threads": 1}, "gpu": null}')
        platform = Platform(data, env={**os.environ, "SKERRY_CATALOG_URL": url}).start()
        platform.create_user("alice")
        token = platform.user_token("alice")
        dataset_of_files(platform, token, "pg.in", "pg", {"a.txt": b"a", "b.txt": b"b"})
        ok(platform.api("POST", API + "/workflows", token=token, json={"name": "pgsums", "steps": [
            {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}), 201)
        run = ok(platform.api("POST", API + "/runs", token=token, json={"workflow": "pgsums", "dataset": "pg.in"}),
                 201)["id"]
        wait_for(lambda: ok(platform.api("GET", API + f"/runs/{run}", token=token))["state"] != "running",
                 timeout=120)
        assert ok(platform.api("GET", API + f"/runs/{run}", token=token))["state"] == "succeeded"
        catalog = Catalog(url)
        with catalog.session() as s:
            assert s.execute(select(Run.state).where(Run.id == run)).scalar_one() == "succeeded"
            ended = s.execute(select(func.count()).select_from(JobAttempt).where(JobAttempt.ended.is_not(None))
                              ).scalar_one()
        catalog.dispose()
        assert ended == 2  # the scheduler wrote both jobs' attempts there
        assert not (data / "catalog.sqlite").exists()
    finally:
        if platform is not None:
            platform.stop()
            kill_leftovers(platform.data_dir)
        server.stop()
