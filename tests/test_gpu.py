"""The GPU pool on a real NVIDIA GPU: an opt-in check, run where ``nvidia-smi -L`` lists GPUs.

On a machine without one the platform tests skip, saying so (CI accepts that skip,
``tests/ciskips.py``); no GPU has been at hand to run them yet. Where there are GPUs,
on a platform (``skerry up`` with the default pools: a ``cpu`` pool, and a ``gpu`` pool of
one worker per GPU, each seeing only its own), alice's work shows:

- one worker per GPU, each seeing its own device: ``4 x GPUs`` jobs of the built-in
  ``gpumatmul`` module (``gpu: 1``; matrix products on its GPU with PyTorch or CuPy) all
  succeed, each job saw exactly one device, and the jobs together saw every GPU, by its
  ``CUDA_VISIBLE_DEVICES``;
- the GPU kernel's client (``skerry.client`` in "Python 3 (skerry, GPU)") runs a function
  on a GPU worker, which sees one device of the machine's;
- ``notebooks/04_gpu_pool.ipynb`` takes its GPU branch and ends without error.

How busy the GPU is during a 1,000-job run is ``bench/gpu.py``'s figure. Everywhere, a
``gpumatmul`` job on a worker with neither PyTorch nor CuPy fails saying what it needs.
"""

import json
import os
import subprocess
import sys
import uuid

import nbformat
import pytest

from helpers import REPO, Platform, kill_leftovers, ok, open_for_accounts, wait_for
from skerry.workload.builtins import BUILTINS
from skerry.workload.executors import run_job
from skerry.workload.pools import gpu_count

API = "/services/skerry/api/v1"
NO_GPU = "no NVIDIA GPU on this machine (nvidia-smi -L lists none): the GPU pool check runs where there is one"


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_gpumatmul_without_pytorch_or_cupy_fails_saying_what_it_needs(tmp_path):
    if _has("torch") or _has("cupy"):
        pytest.skip("PyTorch or CuPy is installed here: the GPU tests below run the module for real")
    (tmp_path / "a.txt").write_text("x")
    result = run_job(BUILTINS["gpumatmul"], str(tmp_path / "a.txt"), str(tmp_path / "out"))
    assert result.error_class == "RuntimeError"
    assert "gpumatmul needs PyTorch or CuPy built for CUDA" in result.error
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing half-written


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    gpus = gpu_count()
    if not gpus:
        pytest.skip(NO_GPU)
    data = open_for_accounts(tmp_path_factory.mktemp("gpu")) / "data"
    data.mkdir()
    p = Platform(data).start()  # no pools.json: the defaults, a gpu worker per GPU
    p.gpus = gpus
    p.create_user("alice")
    p.start_server("alice")
    yield p
    p.stop()
    kill_leftovers(p.data_dir)


def test_each_gpu_worker_sees_its_own_device_and_gpu_jobs_use_it(platform):
    token = platform.user_token("alice")
    n = 4 * platform.gpus
    folder = platform.data_dir / "users" / "alice" / "gpuin"
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i}.txt").write_text(str(i))
    platform.give(folder, "alice")
    ok(platform.api("POST", API + "/datasets", token=token, json={"name": "gpu.in", "location": "skerry://home/gpuin"}),
       201)
    ok(platform.api("POST", API + "/datasets/gpu.in/files", token=token, json={"files": [
        {"uri": f"skerry://home/gpuin/f{i}.txt", "size": len(str(i))} for i in range(n)]}))
    ok(platform.api("POST", API + "/datasets/gpu.in/close", token=token))
    ok(platform.api("POST", API + "/workflows", token=token, json={"name": "gpuinfo", "steps": [
        {"name": "mm", "module": "gpumatmul", "inputs": {"input": "dataset"}, "params": {"repeat": 200}}]}), 201)
    run = ok(platform.api("POST", API + "/runs", token=token, json={"workflow": "gpuinfo", "dataset": "gpu.in"}),
             201)["id"]
    wait_for(lambda: ok(platform.api("GET", API + f"/runs/{run}", token=token))["state"] != "running", timeout=600)
    assert ok(platform.api("GET", API + f"/runs/{run}", token=token))["state"] == "succeeded"
    seen = [line.split() for line in
            (p.read_text() for p in (platform.data_dir / "users" / "alice").rglob("*.gpu.txt"))]
    assert len(seen) == n
    facts = [dict(item.split("=", 1) for item in line if "=" in item) for line in seen]
    assert all(f["devices"] == "1" for f in facts), facts  # each job sees one GPU: its worker's
    assert {f["visible"] for f in facts} == {str(i) for i in range(platform.gpus)}, facts  # together: all of them


def _papermill(platform, notebook, out, kernel: str | None = None) -> nbformat.NotebookNode:
    """``notebook`` run by papermill as alice, in her server's environment; the executed notebook."""
    alice = platform.account("alice")
    with open(f"/proc/{platform.group_of('alice')}/environ", "rb") as f:
        env = dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item)
    open_for_accounts(out.parent)
    os.chown(out.parent, alice.pw_uid, alice.pw_gid)
    argv = [sys.executable, "-m", "papermill", str(notebook), str(out), "--no-progress-bar",
            *(["-k", kernel] if kernel else []), "-p", "suffix", f"gpu{uuid.uuid4().hex[:8]}"]
    done = subprocess.run(argv, env=env, cwd=out.parent, capture_output=True, text=True, timeout=540,
                          user=alice.pw_uid, group=alice.pw_gid, extra_groups=[], umask=0o077)
    assert done.returncode == 0, done.stderr[-6000:]
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    return executed


def _text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.timeout(600)
def test_the_gpu_kernels_client_runs_a_function_on_a_gpu_worker(platform, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "skerry-gpu", "display_name": "Python 3 (skerry, GPU)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('suffix = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(
                    "import json, os\n"
                    "seen = skerry.client.submit(lambda: os.environ.get('CUDA_VISIBLE_DEVICES'), pure=False).result()\n"
                    "print('SEEN', json.dumps(seen))")]
    source = tmp_path / "src" / "client.ipynb"
    source.parent.mkdir()
    nbformat.write(nb, source)
    executed = _papermill(platform, source, tmp_path / "run" / "client.ipynb", kernel="skerry-gpu")
    line = next(line for line in _text(executed).splitlines() if line.startswith("SEEN "))
    assert json.loads(line.removeprefix("SEEN ")) in {str(i) for i in range(platform.gpus)}


@pytest.mark.timeout(600)
def test_the_gpu_tutorial_takes_its_gpu_branch(platform, tmp_path):
    executed = _papermill(platform, REPO / "notebooks" / "04_gpu_pool.ipynb", tmp_path / "run" / "04.ipynb")
    assert "This platform runs a GPU pool: the next cells run a job on it." in _text(executed)
