"""The tutorial notebooks (``notebooks/*.ipynb``) run for real, through papermill.

Each notebook found in ``notebooks/`` is executed on a running platform (``skerry up``, a
``cpu`` pool, no ``gpu`` pool: alice's jobs run on a Dask cluster of her account) as alice would from a terminal of her
server: ``python -m papermill NB OUT -k skerry -p suffix ...`` in a subprocess running as
her OS account, whose environment is her micro-infrastructure process's own (read from
``/proc/<pid>/environ``).
They run a second way, from a plain shell with only ``SKERRY_URL`` and ``SKERRY_TOKEN``
(the kernel specs installed with ``python -m skerry.kernels.install``).
A notebook passes when papermill exits 0 and the executed notebook has no error output;
a new notebook is tested by being there.

The suffix is new at each test run, so the notebooks (which name what they make after it)
can run again on the same platform.
"""

import os
import subprocess
import sys
import uuid

import nbformat
import pytest

from helpers import REPO, open_for_accounts

pytestmark = pytest.mark.platform

POOLS = {"cpu": {"workers": 1, "threads": 2}, "gpu": None}
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def environment_of(pid: int) -> dict[str, str]:
    """The environment of process ``pid``: what a terminal of that server would have."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


@pytest.fixture(scope="module")
def alice_env(platform, alice):
    """The environment of alice's running micro-infrastructure."""
    env = environment_of(platform.group_of("alice"))
    assert env.get("JUPYTERHUB_USER") == "alice" and env.get("SKERRY_URL") == platform.url
    return env


def error_outputs(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def text_of(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_every_notebook_is_found_and_kept_without_outputs():
    assert [p.name for p in NOTEBOOKS][:4] == ["01_storage_tour.ipynb", "02_first_pipeline.ipynb",
                                               "03_notebook_step.ipynb", "04_gpu_pool.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "skerry", path.name
        assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])], f"{path.name}: no parameters cell"
        assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
            f"{path.name} is committed with outputs: clear them"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_platform_without_error(notebook, platform, alice_env, tmp_path):
    alice = platform.account("alice")
    open_for_accounts(tmp_path)
    os.chown(tmp_path, alice.pw_uid, alice.pw_gid)  # where her papermill writes the executed notebook
    out = tmp_path / notebook.name
    suffix = f"ci{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "papermill", str(notebook), str(out), "-k", "skerry",
            "-p", "suffix", suffix, "--no-progress-bar"]
    done = subprocess.run(argv, env=alice_env, cwd=tmp_path, capture_output=True, text=True, timeout=540,
                          user=alice.pw_uid, group=alice.pw_gid, extra_groups=[], umask=0o077)
    executed = nbformat.read(out, as_version=4) if out.exists() else None
    assert done.returncode == 0, done.stderr[-6000:]
    assert error_outputs(executed) == []
    if notebook.stem == "04_gpu_pool":  # this platform runs no gpu pool: it says so, no error
        assert "This platform runs no GPU pool (pools: cpu)" in text_of(executed)


@pytest.mark.timeout(900)
def test_every_notebook_runs_from_a_plain_shell_with_only_the_url_and_a_token(platform, alice, tmp_path):
    """Issue 15, must show 4: on a machine of one's own, with only ``SKERRY_URL`` and
    ``SKERRY_TOKEN`` set (no variable of the platform or of a server, a fresh home), the
    kernel specs installed once (``python -m skerry.kernels.install``), papermill runs every
    tutorial: ``skerry://`` reaches alice's storage through her WebDAV endpoint, the API
    through the hub's URL."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SKERRY_URL": platform.url, "SKERRY_TOKEN": alice}
    installed = subprocess.run([sys.executable, "-m", "skerry.kernels.install"], env=env, cwd=home,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    assert (home / ".local" / "share" / "jupyter" / "kernels" / "skerry" / "kernel.json").exists()
    failures = []
    for notebook in NOTEBOOKS:
        out = home / notebook.name
        argv = [sys.executable, "-m", "papermill", str(notebook), str(out), "-k", "skerry",
                "-p", "suffix", f"sh{uuid.uuid4().hex[:8]}", "--no-progress-bar"]
        done = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=540)
        errors = error_outputs(nbformat.read(out, as_version=4)) if out.exists() else ["no output notebook"]
        if done.returncode != 0 or errors:
            failures.append(f"{notebook.name}: exit {done.returncode}, {errors}: {done.stderr[-2000:]}")
    assert not failures, "\n".join(failures)
