"""The workload CLI (``skerry datasets|workflows|run|status|cancel``) against a running
platform: real subprocesses, the token in ``$SKERRY_TOKEN`` or ``--token-file``, never in argv.

Bad input, refusals by the platform and an unreachable platform exit with status 2 and a
sentence on stderr; a waited-for run that does not succeed exits with 1.
"""

import json
import os
import queue
import subprocess
import sys
import threading

import pytest
from sqlalchemy import update

from skerry.workload.catalog import Catalog
from skerry.workload.models import Job, Run, Task

from helpers import REPO, free_port

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"
# no scheduler: these tests seed jobs themselves and watch them stand still or move as they write
POOLS = {"cpu": None, "gpu": None}
MD5 = "0" * 32


def skerry(platform, token, *args, url=None, env=None, input=None):
    environ = {**os.environ, "SKERRY_URL": url or platform.url, **(env or {})}
    environ.pop("SKERRY_TOKEN", None)
    if token:
        environ["SKERRY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "skerry", *args], env=environ, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def failed(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("skerry: error: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def catalog(platform):
    cat = Catalog.for_data_dir(platform.data_dir)
    yield cat
    cat.dispose()


def test_datasets_create_register_list_close(platform, alice, tmp_path):
    r = skerry(platform, alice, "datasets", "create", "cli.raw", "--location", "skerry://home/cli",
               "--metadata", '{"detector": "spd"}')
    assert r.returncode == 0, r.stderr
    assert "created dataset cli.raw (OPEN)" in r.stdout
    listing = tmp_path / "files.json"
    listing.write_text(json.dumps([{"uri": f"skerry://home/cli/f{i}", "size": 10 + i, "checksum": MD5}
                                   for i in range(1500)]))
    r = skerry(platform, alice, "datasets", "files", "cli.raw", "--register", str(listing))
    assert r.returncode == 0, r.stderr
    assert "registered 1500 files in cli.raw" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "URI", "SIZE", "CHECKSUM", "STATE"] and len(lines) == 1501  # two pages
    assert lines[1].split()[1:] == ["skerry://home/cli/f0", "10", MD5, "AVAILABLE"]

    r = skerry(platform, alice, "datasets")
    assert r.returncode == 0, r.stderr
    assert ["cli.raw", "OPEN", "alice"] in [line.split()[:3] for line in r.stdout.splitlines()[1:]]
    r = skerry(platform, alice, "datasets", "close", "cli.raw")
    assert r.returncode == 0 and "dataset cli.raw is CLOSED (1500 files)" in r.stdout

    # the token from a file instead of the environment
    token_file = tmp_path / "token"
    token_file.write_text(alice + "\n")
    r = skerry(platform, None, "datasets", "list", "--token-file", str(token_file))
    assert r.returncode == 0 and "cli.raw" in r.stdout


def test_errors_exit_2_with_a_sentence(platform, alice, bob, tmp_path, catalog):
    skerry(platform, alice, "datasets", "create", "cli.errors")
    failed(skerry(platform, alice, "datasets", "create", "cli.errors"),
           "A dataset named 'cli.errors' already exists.")
    failed(skerry(platform, alice, "datasets", "create", "../x"), "Dataset name '../x' is not valid")
    failed(skerry(platform, alice, "datasets", "create", "cli.meta", "--metadata", "{oops"),
           "--metadata is not valid JSON")
    failed(skerry(platform, bob, "datasets", "close", "cli.errors"), "No dataset named 'cli.errors'.")
    failed(skerry(platform, bob, "datasets", "files", "cli.errors"), "No dataset named 'cli.errors'.")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"uri": "skerry://home/e/a", "size": 1}, {"uri": "/etc/passwd", "size": 1}]))
    failed(skerry(platform, alice, "datasets", "files", "cli.errors", "--register", str(bad)), "File 1: '/etc/passwd'")
    assert catalog.get_dataset("cli.errors").files == 0  # all or none
    failed(skerry(platform, alice, "datasets", "files", "cli.errors", "--register", str(tmp_path / "none.json")),
           "cannot read")

    # no token, a bad token, an unreadable token file, nobody at the URL, not a URL
    failed(skerry(platform, None, "datasets"), "no token", "SKERRY_TOKEN")
    failed(skerry(platform, "not-a-token", "datasets"), "This token is not valid")
    failed(skerry(platform, None, "datasets", "--token-file", str(tmp_path / "missing")), "cannot read the token file")
    failed(skerry(platform, alice, "datasets", url=f"http://127.0.0.1:{free_port()}"),
           "cannot reach the skerry platform")
    failed(skerry(platform, alice, "datasets", url="ftp:/nowhere"), "is not a platform URL")
    # there is no --token (argv is visible to every user), not even as an abbreviation of --token-file
    r = skerry(platform, None, "datasets", "list", "--token", alice)
    assert r.returncode == 2 and "unrecognized arguments: --token" in r.stderr
    # argparse's own refusals are status 2 as well
    r = skerry(platform, alice, "cancel", "seven")
    assert r.returncode == 2 and "invalid int value" in r.stderr


def test_workflows_add_and_list(platform, alice, tmp_path):
    spec = tmp_path / "checksums.yaml"
    spec.write_text("name: cli-checksums\nmask: 'cli.raw*'\nsteps:\n"
                    "  - name: checksum\n    module: md5\n    inputs: {input: dataset}\n")
    r = skerry(platform, alice, "workflows", "add", str(spec))
    assert r.returncode == 0, r.stderr
    assert "added workflow cli-checksums: checksum" in r.stdout
    r = skerry(platform, alice, "workflows")
    assert r.returncode == 0 and ["cli-checksums", "checksum", "cli.raw*"] in [
        line.split() for line in r.stdout.splitlines()]

    cyclic = tmp_path / "cyclic.json"
    cyclic.write_text(json.dumps({"name": "cli-loop", "steps": [
        {"name": "a", "module": "md5", "inputs": {"input": "b.checksum"}},
        {"name": "b", "module": "md5", "inputs": {"input": "a.checksum"}}]}))
    failed(skerry(platform, alice, "workflows", "add", str(cyclic)), "Workflow 'cli-loop'")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"name": "cli-unknown", "steps": [{"name": "a", "module": "nope"}]}))
    failed(skerry(platform, alice, "workflows", "add", str(unknown)), "unknown module 'nope'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsteps: [\n  {name: a\n")
    failed(skerry(platform, alice, "workflows", "add", str(broken)), "broken.yaml is neither JSON nor YAML", "line")
    failed(skerry(platform, alice, "workflows", "add", str(spec)), "already exists")
    assert [w["name"] for w in platform.api("GET", API + "/workflows").json()["workflows"]].count("cli-checksums") == 1


def test_run(platform, alice):
    skerry(platform, alice, "datasets", "create", "cli.torun", "--location", "skerry://home/torun/in")
    r = skerry(platform, alice, "run", "cli-checksums", "cli.torun", "--rank", "2")
    assert r.returncode == 0, r.stderr
    run = int(r.stdout.split()[2])
    assert r.stdout.startswith(f"started run {run} of cli-checksums over cli.torun")
    r = skerry(platform, alice, "status", str(run))
    assert r.returncode == 0 and f"run {run}: cli-checksums over cli.torun, running" in r.stdout
    assert ["checksum", "md5@1", "defined", "2"] == r.stdout.splitlines()[2].split()[1:5]
    failed(skerry(platform, alice, "run", "cli-checksums", "cli.torun"), "already exists")
    failed(skerry(platform, alice, "run", "no-such-workflow", "cli.torun"), "no-such-workflow")
    failed(skerry(platform, alice, "run", "cli-checksums", "cli.torun", "--rank", "0"), "'rank' must be a number > 0")


def _relay(platform):
    """A module and a one-step workflow over it (again: 409, the same)."""
    platform.api("POST", API + "/modules", json={"name": "cli-relay", "inputs": [
        {"name": "input", "kind": "single", "type": "any"}], "callable": "skerry.workload.builtins:noop"})
    platform.api("POST", API + "/workflows", json={"name": "cli-seeded", "steps": [
        {"name": "a", "module": "cli-relay", "inputs": {"input": "dataset"}}]})


def _seed_run(platform, catalog, jobs=10):
    """A run as the scheduler writes it: two tasks, ``jobs`` queued jobs on the first."""
    platform.api("POST", API + "/datasets", json={"name": "cli.in", "owner": "alice"})
    platform.api("POST", API + "/datasets/cli.in/files",
                 json={"files": [{"uri": f"skerry://home/in/{i}", "size": 1} for i in range(jobs)]})
    _relay(platform)
    module = catalog.get_module("cli-relay").id
    run = catalog.create_run("cli-seeded", input_dataset="cli.in", owner="alice")
    first = catalog.create_task(step="a", module_id=module, input_dataset="cli.in", run_id=run)
    second = catalog.create_task(step="b", module_id=module, input_dataset="cli.in", run_id=run)
    ids = catalog.create_jobs(first, [[f.id] for f in catalog.list_files("cli.in").files])
    return run, first, second, ids


def _lines(proc) -> queue.Queue:
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    return lines


def _until(lines: queue.Queue, text: str) -> list[str]:
    seen = []
    while True:
        line = lines.get(timeout=60)
        seen.append(line)
        if text in line:
            return seen


def test_status_wait_progress_bar_and_cancel(platform, alice, bob, catalog):
    run, first, second, ids = _seed_run(platform, catalog)
    r = skerry(platform, alice, "status")
    assert r.returncode == 0
    assert [str(run), "cli-seeded", "cli.in", "running", "0/10", "0"] in [
        line.split() for line in r.stdout.splitlines()]
    r = skerry(platform, alice, "status", str(run))
    assert r.returncode == 0 and f"run {run}: cli-seeded over cli.in, running" in r.stdout
    assert [str(first), "a", "cli-relay@1", "defined", "1", "0/10", "0", "0", "10"] in [
        line.split() for line in r.stdout.splitlines()]
    failed(skerry(platform, bob, "status", str(run)), f"No run with id {run}.")

    environ = {**os.environ, "SKERRY_URL": platform.url, "SKERRY_TOKEN": alice}
    proc = subprocess.Popen([sys.executable, "-m", "skerry", "status", str(run), "--wait"], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines(proc)
        _until(lines, "0/10 jobs")
        for n, job in enumerate(ids[:4], 1):  # the scheduler's part: jobs succeed one by one
            catalog.start_attempt(job, worker="w")
            catalog.register_outputs_and_succeed(job, [])
            seen = _until(lines, f"{n}/10 jobs")
        assert seen[-1].startswith("[############") and "40% 4/10 jobs" in seen[-1]
        assert proc.poll() is None  # still waiting: the run goes on

        # cancelling a task through the CLI ends the waiter's run as cancelled: status 1
        r = skerry(platform, alice, "cancel", str(first))
        assert r.returncode == 0 and f"task {first} (a) is cancelled; 6 jobs cancelled" in r.stdout
        failed(skerry(platform, alice, "cancel", str(first)), "final")
        failed(skerry(platform, bob, "cancel", str(second)), f"No task with id {second}.")
        r = skerry(platform, alice, "cancel", str(second))
        assert r.returncode == 0
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert f"run {run} cancelled: 4 of 10 jobs succeeded, 0 failed" in out
    finally:
        proc.kill()


def test_wait_for_a_run_that_succeeds(platform, alice, catalog):
    _relay(platform)
    platform.api("POST", API + "/datasets", json={"name": "cli.in2", "owner": "alice"})
    platform.api("POST", API + "/datasets/cli.in2/files", json={"files": [{"uri": "skerry://home/in2/a", "size": 1}]})
    module = catalog.get_module("cli-relay").id
    run = catalog.create_run("cli-seeded", input_dataset="cli.in2", owner="alice")
    task = catalog.create_task(step="a", module_id=module, input_dataset="cli.in2", run_id=run)
    (job,) = catalog.create_jobs(task, [[catalog.list_files("cli.in2").files[0].id]])
    catalog.start_attempt(job, worker="w")
    catalog.register_outputs_and_succeed(job, [])
    with catalog.writing() as s:  # the scheduler marks the task and the run done
        s.execute(update(Task).where(Task.id == task).values(state="succeeded"))
        s.execute(update(Run).where(Run.id == run).values(state="succeeded"))
    r = skerry(platform, alice, "status", str(run), "--wait")
    assert r.returncode == 0, r.stderr
    assert "[##############################] 100% 1/1 jobs" in r.stderr
    assert f"run {run} succeeded: 1 of 1 jobs succeeded, 0 failed" in r.stdout


def test_a_failed_run_lists_its_failed_jobs_with_reasons_and_log_links(platform, alice, catalog):
    """Issue 15, must show 3 (the CLI's part): ``status RUN`` and ``--wait`` list each failed
    job with its error class, its sentence and a link that opens its log (the output notebook
    of a notebook step, in the owner's JupyterLab)."""
    _relay(platform)
    platform.api("POST", API + "/datasets", json={"name": "cli.in3", "owner": "alice"})
    platform.api("POST", API + "/datasets/cli.in3/files",
                 json={"files": [{"uri": f"skerry://home/in3/{i}", "size": 1} for i in range(3)]})
    module = catalog.get_module("cli-relay").id
    run = catalog.create_run("cli-seeded", input_dataset="cli.in3", owner="alice")
    task = catalog.create_task(step="a", module_id=module, input_dataset="cli.in3", run_id=run)
    good, bad, odd = catalog.create_jobs(task, [[f.id] for f in catalog.list_files("cli.in3").files])
    catalog.start_attempt(good, worker="w")
    catalog.register_outputs_and_succeed(good, [])
    log = f"skerry://home/out/.skerry-logs/{bad}.ipynb"
    for job, error, where in ((bad, "no calibration for f01 (cell 3 of the notebook, In [2]).", log),
                              (odd, "the storage did not answer", "s3://elsewhere/x.log")):
        catalog.start_attempt(job, worker="w", log=where)
        catalog.end_attempt(job, exit_code=1, error_class="LookupError", error=error)
    with catalog.writing() as s:  # the scheduler's part: the jobs, the task and the run end failed
        s.execute(update(Job).where(Job.id.in_([bad, odd])).values(state="failed"))
        s.execute(update(Task).where(Task.id == task).values(state="failed", jobs_total=3, jobs_succeeded=1,
                                                             jobs_failed=2))
        s.execute(update(Run).where(Run.id == run).values(state="failed"))
    for args in (("status", str(run)), ("status", str(run), "--wait")):
        r = skerry(platform, alice, *args)
        assert r.returncode == (1 if "--wait" in args else 0), r.stderr
        lines = r.stdout.splitlines()
        at = lines.index("failed jobs (2):")
        assert lines[at + 1].split() == ["JOB", "STEP", "ERROR", "REASON", "LOG"]
        rows = {line.split()[0]: line for line in lines[at + 2:at + 4]}
        assert rows[str(bad)].split()[1:3] == ["a", "LookupError"]
        assert "no calibration for f01 (cell 3 of the notebook, In [2])." in rows[str(bad)]
        assert rows[str(bad)].endswith(f"{platform.url}/user/alice/lab/tree/home/out/.skerry-logs/{bad}.ipynb")
        assert rows[str(odd)].endswith("s3://elsewhere/x.log")  # no link to it: shown as it is
