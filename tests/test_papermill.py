"""papermill over ``skerry://``, inside and outside the platform, and notebook steps at scale.

Must show 3 (issue 5): ``papermill skerry://home/... skerry://s3data/...`` from a plain
shell with a token works; a notebook step over a 100-file dataset produces 100 output
notebooks, and a deliberately failing notebook fails only its own jobs, with the cell
index in the error.

- outside the platform: ``papermill`` in a subprocess whose environment names only the
  platform and alice's token (``$SKERRY_URL``, ``$SKERRY_TOKEN``; no ``$SKERRY_ADAPTORS``)
  reads a notebook in alice's home and writes the executed one into her S3 adaptor
  (a real S3-API server), both through her WebDAV endpoint of a real running platform;
  the token is in no argument and in no file of the platform's data dir (its logs);
- inside (``$SKERRY_ADAPTORS``): ``papermill.execute_notebook`` between two
  ``skerry://home`` URLs, found through the ``papermill.io`` entry point;
- notebook steps: the real scheduler, runner and planner on a real LocalCluster (two
  single-threaded worker processes, a real SQLite catalog), one papermill execution
  (one kernel) per job.

The platform test comes first: its platform starts before ``home`` sets
``$SKERRY_ADAPTORS`` in this process (the platform must not inherit it).
"""

import hashlib
import os
import subprocess
import sys

import fsspec
import nbformat
import pytest
from sqlalchemy import select, text

from helpers import dask_client, files_holding, local_home
from skerry.errors import ConfigError
from skerry.workload.catalog import Catalog
from skerry.workload.models import Job, JobAttempt, Run, Task
from skerry.workload.runner import Runner
from skerry.workload.runs import Planner, start_run
from skerry.workload.scheduler import Scheduler
from skerry.workload.schedulerconfig import SchedulerConfig
from skerry.workload.states import DEFAULT_RULES, Decision, RetryPolicy

API = "/services/skerry/api/v1"
POOLS = {"cpu": None, "gpu": None}  # the platform's own scheduler is not used here
FILES = 100
BAD_FILES = 3


def notebook(*cells, params="x = 0"):
    """A python3 notebook: a ``parameters`` cell, then ``cells`` (code)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first] + [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def injected(nb) -> str:
    """The source of papermill's injected-parameters cell."""
    [cell] = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    return cell.source


# -- outside the platform: a plain shell with a token ----------------------------------------


@pytest.fixture(scope="module")
def s3data(platform, alice, s3server):
    """alice's S3 adaptor ``s3data`` (bucket ``pm-alice``), her server restarted to mount it."""
    s3server.make_bucket("pm-alice")
    for path, body in [("credentials/pm-bucket", {"kind": "s3", **s3server.credentials()}),
                       ("adaptors/s3data", {"type": "s3", "bucket": "pm-alice", "endpoint_url": s3server.url,
                                            "credentials": "pm-bucket"})]:
        r = platform.api("PUT", f"{API}/users/alice/{path}", token=alice, json=body)
        assert r.status_code == 200, r.text
    platform.stop_server("alice")
    platform.start_server("alice")
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                             client_kwargs={"endpoint_url": s3server.url})


@pytest.mark.platform
def test_papermill_from_a_plain_shell_with_a_token_reads_home_and_writes_s3(platform, alice, s3data, tmp_path):
    source = platform.data_dir / "users" / "alice" / "papermill-in.ipynb"
    nbformat.write(notebook("y = x + 41\nprint('answer', y)"), source)
    alice_account = platform.account("alice")
    os.chown(source, alice_account.pw_uid, alice_account.pw_gid)  # hers, whatever this process's umask made it
    bindir = os.path.dirname(sys.executable)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SKERRY_URL": platform.url, "SKERRY_TOKEN": alice}
    argv = [os.path.join(bindir, "papermill"), "skerry://home/papermill-in.ipynb", "skerry://s3data/out.ipynb",
            "-p", "x", "1", "--no-progress-bar"]
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    with s3data.open("pm-alice/out.ipynb", "r") as f:
        out = nbformat.read(f, as_version=4)
    assert "x = 1" in injected(out) and "answer 42" in outputs_text(out)
    assert out.metadata.papermill.input_path == "skerry://home/papermill-in.ipynb"
    # the token went by the environment only: in no argument, no output, no file of the platform
    assert alice not in " ".join(argv) and alice not in done.stdout + done.stderr
    token = alice.encode()
    hub_log = platform.data_dir / "run" / "hub.log"  # the hub's, the proxy's and the users' servers' log
    assert "GET /hub/api/user (alice@" in hub_log.read_text()
    assert files_holding(platform.data_dir, alice) == [] and token not in platform.output


@pytest.mark.platform
def test_a_token_the_hub_refuses_is_named_not_shown(platform, monkeypatch):
    from skerry.adaptors.federation import SkerryFileSystem

    monkeypatch.delenv("SKERRY_ADAPTORS", raising=False)
    monkeypatch.setenv("SKERRY_URL", platform.url)
    monkeypatch.setenv("SKERRY_TOKEN", "not-a-hub-token-4711")
    with pytest.raises(ConfigError, match=r"refused the token in \$SKERRY_TOKEN") as e:
        SkerryFileSystem(skip_instance_cache=True)
    assert "4711" not in str(e.value)


def test_skerry_needs_adaptors_or_a_platform_and_a_token(monkeypatch):
    from skerry.adaptors.federation import SkerryFileSystem

    for name in ("SKERRY_ADAPTORS", "SKERRY_URL", "SKERRY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKERRY_URL", "http://127.0.0.1:1")  # a URL without a token is not enough
    with pytest.raises(ConfigError, match=r"skerry:// needs \$SKERRY_ADAPTORS \(inside a micro-infrastructure\) "
                                          r"or \$SKERRY_URL and \$SKERRY_TOKEN .*; "
                                          r"\$SKERRY_ADAPTORS is not set, nor is \$SKERRY_TOKEN$"):
        SkerryFileSystem(skip_instance_cache=True)


# -- inside: $SKERRY_ADAPTORS ----------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A federation whose ``home`` is a local folder, named by ``$SKERRY_ADAPTORS``."""
    with local_home(tmp_path_factory.mktemp("papermill")) as folder:
        yield folder


def test_execute_notebook_between_skerry_urls_injects_the_parameters(home):
    import papermill

    nbformat.write(notebook("print('twice', 2 * x)"), home / "in.ipynb")
    papermill.execute_notebook("skerry://home/in.ipynb", "skerry://home/done/out.ipynb",
                               parameters={"x": 21}, progress_bar=False)
    out = nbformat.read(home / "done" / "out.ipynb", as_version=4)
    assert "x = 21" in injected(out) and "twice 42" in outputs_text(out)
    assert papermill.iorw.papermill_io.listdir("skerry://home/done") == ["skerry://home/done/out.ipynb"]


# -- notebook steps at scale ------------------------------------------------------------------

# a notebook step: the job's input and output paths and the step's parameters are injected
SCALE_NB = notebook(
    "data = open(input, 'rb').read()",
    "open(result, 'w').write(f'{scale} x {len(data)} {job_id}\\n')",
    params="input = None\nresult = None\nscale = 1\njob_id = None")
# raises in its 3rd code cell (the parameters cell is the 1st)
BAD_NB = notebook(
    "import os\nname = os.path.basename(input)",
    "raise LookupError(f'no calibration for {name}')",
    params="input = None\nresult = None")


def nb_module(name, url):
    return {"name": name, "version": "1", "inputs": [{"name": "input"}],
            "outputs": [{"name": "result", "file_name": "{stem}.txt"}],
            "parameters": {"scale": {"type": "int", "default": 1}}, "notebook": url}


@pytest.fixture(scope="module")
def client(home):
    with dask_client() as c:
        yield c


def dataset(cat, home, name, n):
    folder = home / name
    folder.mkdir()
    for i in range(n):
        (folder / f"f{i:03d}.dat").write_bytes(b"x" * (i + 1))
    cat.create_dataset(name, location=f"skerry://home/{name}")
    cat.register_files(name, [{"uri": f"skerry://home/{name}/f{i:03d}.dat", "size": i + 1,
                               "checksum": hashlib.md5(b"x" * (i + 1)).hexdigest()} for i in range(n)])
    cat.close_dataset(name)


@pytest.mark.timeout(600)  # 103 kernels on two workers, on a shared machine: minutes
def test_a_notebook_step_over_100_files_and_a_failing_notebook_that_fails_only_its_jobs(tmp_path, home, client):
    (home / "nb").mkdir()
    nbformat.write(SCALE_NB, home / "nb" / "scale.ipynb")
    nbformat.write(BAD_NB, home / "nb" / "bad.ipynb")
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    cat.upgrade()
    dataset(cat, home, "nb100", FILES)
    dataset(cat, home, "nbbad", BAD_FILES)
    cat.add_module("scale", "1", nb_module("scale", "skerry://home/nb/scale.ipynb"))
    cat.add_module("bad", "1", nb_module("bad", "skerry://home/nb/bad.ipynb"))
    cat.add_workflow("scaled", {"name": "scaled", "steps": [
        {"name": "scaled", "module": "scale", "inputs": {"input": "dataset"}, "params": {"scale": 3}}]})
    cat.add_workflow("failing", {"name": "failing", "steps": [
        {"name": "failing", "module": "bad", "inputs": {"input": "dataset"}}]})
    good, bad = start_run(cat, "scaled", "nb100"), start_run(cat, "failing", "nbbad")
    # the failing notebook's LookupError is never retried; anything else is, as on the platform
    # (a kernel can die at start when two workers' kernels race for one port: seen in CI)
    policy = RetryPolicy(rules={**DEFAULT_RULES, "LookupError": Decision.NO_RETRY}, limit=2, backoff=0.1)
    sched = Scheduler(cat, Runner({"cpu": client}), planner=Planner(cat), config=SchedulerConfig(retry=policy))
    sched.run(lambda: sched.run_done(good) and sched.run_done(bad), timeout=540)

    with cat.session() as s:
        runs = dict(s.execute(select(Run.id, Run.state)).all())
        tasks = s.execute(text("SELECT step, state, jobs_total, jobs_succeeded, jobs_failed FROM tasks "
                               "ORDER BY step")).all()
        outputs = s.execute(text("SELECT f.uri, f.job_id FROM files f JOIN datasets d ON d.id = f.dataset_id "
                                 "WHERE d.name = 'nb100.scaled' ORDER BY f.uri")).all()
        failed = s.execute(select(Job.id, Job.state, JobAttempt.error_class, JobAttempt.error, JobAttempt.log)
                           .join(JobAttempt, JobAttempt.job_id == Job.id).join(Task, Task.id == Job.task_id)
                           .where(Task.step == "failing")).all()
    assert runs == {good: "succeeded", bad: "failed"}
    assert tasks == [("failing", "failed", BAD_FILES, 0, BAD_FILES), ("scaled", "succeeded", FILES, FILES, 0)]

    # 100 outputs registered, each written with the step's parameter and its job's id
    assert [u for u, _ in outputs] == [f"skerry://home/nb100.scaled/f{i:03d}.txt" for i in range(FILES)]
    for i, (uri, job) in enumerate(outputs):
        with fsspec.open(uri, "r") as f:
            assert f.read() == f"3 x {i + 1} {job}\n"
    # 100 output notebooks, the jobs' logs: executed with the job's paths and parameters injected
    logs = sorted(p.name for p in (home / "nb100.scaled" / ".skerry-logs").iterdir())
    assert logs == sorted(f"{job}.ipynb" for _, job in outputs)
    one = nbformat.read(home / "nb100.scaled" / ".skerry-logs" / logs[0], as_version=4)
    assert "scale = 3" in injected(one) and f"job_id = \"{logs[0][:-6]}\"" in injected(one)

    # the failing notebook: each of its jobs failed once, with the exception's name, the
    # failing cell's number in the error, and its output notebook as the log
    assert len(failed) == BAD_FILES
    for job, state, error_class, error, log in failed:
        assert (state, error_class) == ("failed", "LookupError")
        assert log == f"skerry://home/nbbad.failing/.skerry-logs/{job}.ipynb"
        with fsspec.open(log, "r") as f:
            done = nbformat.read(f, as_version=4)
        [cell] = [c for c in done.cells if any(o.get("ename") == "LookupError" for o in c.get("outputs", []))]
        assert cell.source == BAD_NB.cells[2].source  # the 3rd code cell of the notebook
        assert error.startswith("LookupError: no calibration for f00") and \
            error.endswith(f"(cell 3 of the notebook, In [{cell.execution_count}]).")
    assert not (home / "nbbad.failing").exists() or \
        [p.name for p in (home / "nbbad.failing").iterdir()] == [".skerry-logs"]
