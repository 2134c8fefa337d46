"""A real ``jupyter server`` with the skerry extension, and a real webhook receiver, for tests.

The server gets its token from ``$JUPYTER_TOKEN`` and its adaptors from a 0600 file
named by ``$SKERRY_ADAPTORS``: no secret on its command line.
"""

import json
import os
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from helpers import free_port, wait_for


class JupyterServer:
    """``jupyter server`` in a subprocess, configured like a micro-infrastructure's: the
    extensions enabled through ``$JUPYTER_CONFIG_PATH``, the adaptors in a 0600 file.

    ``url`` is the data API's, ``base_url`` the server's own (``/api/contents``, ``/files``,
    ``/lab`` hang off it).
    """

    def __init__(self, base: Path, adaptors: list[dict] | Path, credentials: dict | None = None,
                 options: list[str] = (), *, root: Path | None = None, auth: bool = True,
                 name: str = "server"):
        """``adaptors``: the adaptor specs, or the path of a configuration already written
        (two servers can share one); ``root``: the server's folder and working folder
        (default ``base``); ``auth``: False for a server without a token (a browser could
        only get one through its argv); ``name``: of the log and runtime folder, so that
        two servers can share ``base``."""
        from skerry.adaptors.config import write_config
        from skerry.extensions import CONFIG_DIR

        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        if isinstance(adaptors, (str, Path)):
            self.config = Path(adaptors)
        else:
            self.config = self.base / "adaptors.json"
            write_config(str(self.config), adaptors, credentials)
        self.root = Path(root) if root else self.base
        self.token = secrets.token_hex(16) if auth else None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/skerry/api/v1/"
        self.log = self.base / f"{name}.log"
        self.env = dict(os.environ, SKERRY_ADAPTORS=str(self.config),
                        JUPYTER_CONFIG_PATH=CONFIG_DIR, JUPYTER_RUNTIME_DIR=str(self.base / f"{name}-runtime"),
                        JUPYTER_DATA_DIR=str(self.base / "data"))
        self.env.pop("JUPYTER_TOKEN", None)
        if self.token:
            self.env["JUPYTER_TOKEN"] = self.token
        # port_retries=0: another port than ours would be a server no test can reach
        self.argv = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                     "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                     f"--ServerApp.root_dir={self.root}", *options]
        if not self.token:
            self.argv.append("--IdentityProvider.token=")
        self.proc = None

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.root, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._up, 60, what=f"jupyter server (log: {self.log})")
        return self

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"jupyter server exited:\n{self.log.read_text()[-3000:]}")
        try:
            r = self.get("adaptors")
        except httpx.HTTPError:
            return False
        if r.status_code == 503:
            raise AssertionError(f"the data API has no adaptors: {r.text}")
        return r.status_code == 200

    @property
    def headers(self) -> dict:
        """The token header, as a client of this server sends it (none without a token)."""
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def request(self, method, path, token=None, **kwargs):
        """A data API request; ``token``: another token, or False for none."""
        headers = kwargs.pop("headers", {})
        if token is not False and (token or self.token):
            headers.setdefault("Authorization", f"token {token or self.token}")
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def copy(self, items) -> list[str]:
        r = self.post("copy", json=items)
        assert r.status_code == 202, r.text
        return r.json()["ids"]

    def wait_copy(self, copy_id, timeout=600) -> dict:
        def finished():
            state = self.get(f"copy/{copy_id}").json()
            return state if state["state"] in ("done", "failed") else None

        return wait_for(finished, timeout, interval=0.5, what=f"copy {copy_id}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WebhookReceiver:
    """An HTTP server recording every POSTed JSON body; can be stopped and restarted on its port."""

    def __init__(self, port: int | None = None, answers: list[int] = ()):
        """``answers``: statuses for the first POSTs (recorded all the same), then 204."""
        self.answers = list(answers)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[dict] = []
        self.server = None

    def start(self):
        received, answers = self.received, self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(answers.pop(0) if answers else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def bodies_for(self, copy_id) -> list[dict]:
        return [b for b in self.received if b.get("id") == copy_id]
