"""Spawn latency: SkerrySpawner (Jupyter + WebDAV) versus JupyterHub's SimpleLocalProcessSpawner.

    python bench/spawn.py [--runs 5]

Both run on this machine behind the same configurable-http-proxy; SkerrySpawner runs the
server as the user's own OS account (made at the first start, shown apart), the baseline
as root (``--allow-root``). A run is the time from
``POST /hub/api/users/<name>/server`` until every endpoint of the server answers through
the proxy: ``/user/<name>/api/status`` (200) for both, and for skerry also a PROPFIND
(207) on ``/dav/<name>/``. Each spawner starts and stops its server ``--runs`` times;
the script prints each run, the medians and their ratio (target: <= 1.5x).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Platform, free_port, remove_accounts, wait_for  # noqa: E402

from skerry.nodeproxy import find_proxy  # noqa: E402

BASELINE_CONFIG = """
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/cookie_secret"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.pid_file = "{dir}/proxy.pid"
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{dir}/users/{{username}}"
c.Spawner.default_url = "/lab"
c.Spawner.args = {args}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
with open("{dir}/token") as f:
    c.JupyterHub.services = [{{"name": "bench", "api_token": f.read().strip()}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["bench"]}}]
"""


class Baseline(Platform):
    """Plain JupyterHub with SimpleLocalProcessSpawner, driven like a skerry platform."""

    def start(self, timeout=120):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "secrets").mkdir(exist_ok=True)
        token = os.urandom(32).hex()
        (self.data_dir / "secrets" / "admin-api-token").write_text(token)
        (self.data_dir / "token").write_text(token)
        config = self.data_dir / "jupyterhub_config.py"
        config.write_text(BASELINE_CONFIG.format(
            port=self.port, hub_port=free_port(), api_port=free_port(), dir=self.data_dir,
            chp=find_proxy(), args=["--allow-root"] if os.geteuid() == 0 else []))
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)],
                                     cwd=self.data_dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self._answers(), timeout, what="the baseline hub")
        return self

    def _answers(self):
        try:
            return httpx.get(self.url + "/hub/api/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)


def spawn_once(p: Platform, name: str, token: str, dav: bool) -> float:
    status = f"{p.url}/user/{name}/api/status"
    davurl = f"{p.url}/dav/{name}/"
    headers = {"Authorization": f"token {token}"}
    with httpx.Client(timeout=10) as client:
        start = time.perf_counter()
        r = p.api("POST", f"/hub/api/users/{name}/server")
        assert r.status_code in (201, 202), r.text
        jupyter_ok = dav_ok = not dav
        while not (jupyter_ok and dav_ok):
            if not jupyter_ok:
                jupyter_ok = client.get(status, headers=headers).status_code == 200
            if not dav_ok:
                dav_ok = client.request("PROPFIND", davurl, headers={**headers, "Depth": "0"}).status_code == 207
            if not (jupyter_ok and dav_ok):
                time.sleep(0.02)
        elapsed = time.perf_counter() - start
    p.stop_server(name)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results = {"simple": [], "skerry": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hubs = {"simple": Baseline(tmp / "baseline"), "skerry": Platform(tmp / "skerry")}
        try:
            tokens = {}
            for kind, hub in hubs.items():
                hub.start()
                hub.create_user("bench")
                tokens[kind] = hub.user_token("bench")
                # warm-up: for skerry the user's first start, which also makes their OS account
                print(f"  first start {kind}: {spawn_once(hub, 'bench', tokens[kind], kind == 'skerry'):.2f} s",
                      flush=True)
            # interleaved, so that a slow moment of the machine hits both alike
            for i in range(args.runs):
                for kind, hub in hubs.items():
                    results[kind].append(spawn_once(hub, "bench", tokens[kind], kind == "skerry"))
                    print(f"  run {i + 1} {kind}: {results[kind][-1]:.2f} s", flush=True)
        finally:
            for hub in hubs.values():
                hub.stop()
            remove_accounts(hubs["skerry"].account_template)
    b, s = statistics.median(results["simple"]), statistics.median(results["skerry"])
    print(f"SimpleLocalProcessSpawner median: {b:.2f} s (Jupyter answering)")
    print(f"SkerrySpawner median:             {s:.2f} s (Jupyter and WebDAV answering)")
    print(f"ratio skerry/simple: {s / b:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
