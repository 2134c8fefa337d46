"""The skerry kernels: "Python 3 (skerry)" and "Python 3 (skerry, GPU)".

- the kernel specs are found by ``jupyter kernelspec list`` with the micro-infrastructure's
  ``$JUPYTER_PATH``, and alice's running server offers both;
- on a real platform (``skerry up``, a LocalCluster ``cpu`` pool, no ``gpu`` pool), a
  "skerry" kernel started through alice's Jupyter server (REST API and websocket, as
  JupyterLab does) has a ready ``skerry`` session: ``skerry://`` is alice's storage, the
  Dask client, made on first use, is connected over TLS to her own cluster of the cpu
  pool (its tasks run as her account), the workload API knows her;
- the GPU kernel on that platform says there is no gpu pool when skerry.client is used,
  and runs on;
- a part of a session that cannot be made says why, hides the token, and is tried
  again when used: a cluster the platform answers later is connected to (a real HTTP
  server standing in for the platform's API, a real LocalCluster).

Nothing is mocked: JupyterHub, the proxy, the service, the scheduler's pool, the kernels.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading

import pytest

from skerry.kernels import JUPYTER_PATH_DIR, KERNELS
from skerry.kernels.remote import RemoteKernel
from skerry.kernels.session import Session, SessionError

POOLS = {"cpu": {"workers": 1, "threads": 2}, "gpu": None}
API = "/services/skerry/api/v1"
DISPLAY = {"skerry": "Python 3 (skerry)", "skerry-gpu": "Python 3 (skerry, GPU)"}


def test_kernelspecs_are_listed_with_the_micro_infrastructures_jupyter_path(tmp_path):
    env = dict(os.environ, JUPYTER_PATH=JUPYTER_PATH_DIR, JUPYTER_DATA_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    specs = json.loads(out)["kernelspecs"]
    for name, pool in KERNELS.items():
        spec = specs[name]["spec"]
        assert spec["display_name"] == DISPLAY[name]
        assert spec["language"] == "python"
        assert spec["argv"][1:5] == ["-m", "skerry.kernels.launch", "--pool", pool]
        assert "{connection_file}" in spec["argv"]


def test_a_part_that_cannot_be_made_says_why_and_is_tried_again_when_used(tmp_path):
    from distributed import LocalCluster

    secret = "kernel-token-never-shown-5d1e"
    # port 9 (discard): nothing answers there
    session = Session("gpu", url="http://127.0.0.1:9", token=secret).start()
    status = session.ready(60)
    assert status["pool"] == "made on the first use of skerry.client"  # nothing asked yet
    assert status["api"].startswith("the workload API at http://127.0.0.1:9 cannot be used")
    with pytest.raises(SessionError, match="skerry.client is unavailable: cannot reach the skerry platform"):
        session.client  # noqa: B018 (the lookup is the test)
    assert secret not in repr(session) and secret not in json.dumps(session.status())

    # a stand-in for the platform's API (a real HTTP server): refuses once, then answers a real cluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as cluster, _api_answering(cluster.scheduler_address, secret) as url:
        session = Session("gpu", url=url, token=secret).start()
        with pytest.raises(SessionError, match="the workload manager is not running"):
            session.client  # noqa: B018 (the lookup is the test)
        try:
            assert session.client.scheduler.address == cluster.scheduler_address
            assert session.client.submit(lambda x: x * 2, 21).result() == 42
            assert isinstance(session.ready()["pool"], float)
        finally:
            session.close()


@contextlib.contextmanager
def _api_answering(address: str, token: str):
    """An HTTP server on a free port answering ``POST .../clusters/gpu`` as the platform does:
    503 the first time, then ``address``; a request without ``token`` gets 401."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.headers.get("Authorization") != f"token {token}":
                self._answer(401, {"error": "invalid_token", "message": "no"})
            elif self.path != "/services/skerry/api/v1/clusters/gpu":
                self._answer(404, {"error": "not_found", "message": self.path})
            else:
                asked.append(self.path)
                self._answer(*((503, {"error": "manager_unavailable", "message": "the workload manager is "
                                      "not running"}) if len(asked) == 1 else
                               (200, {"pool": "gpu", "address": address, "tls": None})))

        def _answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---- on a running platform ------------------------------------------------------------


@pytest.fixture(scope="module")
def alice_server(platform, alice):
    """alice's server URL and token, and a file in her home."""
    home = platform.data_dir / "users" / "alice"
    (home / "kernels-notes").mkdir(parents=True, exist_ok=True)
    (home / "kernels-notes" / "hello.txt").write_text("hello from alice's home\n")
    account = platform.account("alice")
    os.chown(home / "kernels-notes", account.pw_uid, account.pw_gid)
    os.chown(home / "kernels-notes" / "hello.txt", account.pw_uid, account.pw_gid)
    return f"{platform.url}/user/alice/", alice


def run(kernel, code):
    result = kernel.execute(code)
    assert result.error is None, "\n".join(result.error["traceback"])
    return result


@pytest.mark.platform
def test_alices_server_offers_both_kernels(platform, alice_server):
    import httpx

    url, token = alice_server
    r = httpx.get(url + "api/kernelspecs", headers={"Authorization": f"token {token}"}, timeout=60)
    assert r.status_code == 200, r.text
    specs = r.json()["kernelspecs"]
    assert {name: specs[name]["spec"]["display_name"] for name in KERNELS} == DISPLAY


@pytest.mark.platform
def test_skerry_kernel_has_alices_adaptors_the_cpu_pool_and_the_api_as_alice(platform, alice_server):
    url, token = alice_server
    with RemoteKernel(url, token, "skerry") as kernel:
        ready = json.loads(run(kernel, "import json; print(json.dumps(skerry.ready()))").stdout)
        assert set(ready) == {"adaptors", "pool", "api"}
        assert isinstance(ready["adaptors"], float) and isinstance(ready["api"], float), ready
        assert ready["pool"] == "made on the first use of skerry.client"  # no cluster for a kernel without Dask

        # skerry:// is alice's storage, through the session and through fsspec alike
        assert run(kernel, "skerry.fs.ls('home/kernels-notes', detail=False)").value == \
            "['home/kernels-notes/hello.txt']"
        text = run(kernel, "import fsspec\n"
                           "print(fsspec.open('skerry://home/kernels-notes/hello.txt', 'r').open().read())")
        assert text.stdout == "hello from alice's home\n\n"

        # the Dask client: made on first use, over TLS to her own cluster of the cpu pool, whose
        # tasks run as her account; Dask's default client
        address = run(kernel, "print(skerry.client.scheduler.address)").stdout.strip()
        assert address.startswith("tls://127.0.0.1:")
        clusters = platform.api("GET", f"{API}/clusters", token=token).json()
        assert clusters == {"pools": ["cpu"], "clusters": {"cpu": address}}
        assert run(kernel, "skerry.client.submit(lambda x: x + 1, 41).result()").value == "42"
        assert run(kernel, "import os; skerry.client.submit(os.getuid, pure=False).result()").value == \
            str(platform.account("alice").pw_uid)
        assert run(kernel, "import dask.bag as db; db.from_sequence(range(10)).sum().compute()").value == "45"
        assert isinstance(json.loads(run(kernel, "print(json.dumps(skerry.ready()))").stdout)["pool"], float)

        # the workload API as alice: her dataset is hers
        run(kernel, "skerry.api.create_dataset('kernel.made')")
        # (among what other modules on this shared platform left her: tests/sharing.py)
        assert run(kernel, "'kernel.made' in [d['name'] for d in skerry.api.datasets()]").value == "True"
        owned = platform.api("GET", f"{API}/datasets", params={"owner": "alice"}).json()["datasets"]
        assert "kernel.made" in [d["name"] for d in owned]

        # the session shows what it is connected to, never the token
        shown = run(kernel, "import os; t = os.environ['JUPYTERHUB_API_TOKEN']; s = repr(skerry.session); "
                            "print(s); print(bool(t) and t not in s)").stdout
        assert "alice" in shown and address in shown and "skerry:// home" in shown
        assert shown.rstrip().endswith("True")

        # `skerry` is the package: importing it changes nothing, and the pipeline API is there
        assert run(kernel, "import skerry; skerry.fs is skerry.session.fs").value == "True"
        assert run(kernel, "type(skerry.Pipeline('p')).__name__").value == "'Pipeline'"


@pytest.mark.platform
def test_gpu_kernel_without_a_gpu_pool_says_so_and_runs_on(platform, alice_server):
    url, token = alice_server
    with RemoteKernel(url, token, "skerry-gpu") as kernel:
        first = run(kernel, "1 + 1")
        assert first.value == "2" and "skerry:" not in first.stderr  # nothing is wrong until Dask is used

        refused = kernel.execute("skerry.client")
        assert refused.error["ename"] == "SessionError"
        assert "this platform runs no 'gpu' pool (pools: cpu)" in refused.error["evalue"]
        assert 'Use the "Python 3 (skerry)" kernel for the cpu pool' in refused.error["evalue"]

        # the rest of the session works in the GPU kernel too
        assert run(kernel, "skerry.fs.ls('home/kernels-notes', detail=False)").value == \
            "['home/kernels-notes/hello.txt']"
        assert run(kernel, "isinstance(skerry.api.datasets(), list)").value == "True"
        assert "skerry:" not in run(kernel, "2 + 2").stderr  # said once
