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
    """``jupyter server`` in a subprocess, the extension enabled through ``$JUPYTER_CONFIG_PATH``."""

    def __init__(self, base: Path, adaptors: list[dict], credentials: dict | None = None,
                 options: list[str] = ()):
        from skerry.adaptors.config import write_config
        from skerry.extensions import CONFIG_DIR

        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.config = self.base / "adaptors.json"
        write_config(str(self.config), adaptors, credentials)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/skerry/api/v1/"
        self.log = self.base / "server.log"
        self.env = dict(os.environ, JUPYTER_TOKEN=self.token, SKERRY_ADAPTORS=str(self.config),
                        JUPYTER_CONFIG_PATH=CONFIG_DIR, JUPYTER_RUNTIME_DIR=str(self.base / "runtime"),
                        JUPYTER_DATA_DIR=str(self.base / "data"))
        self.argv = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                     "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                     f"--ServerApp.root_dir={self.base}", *options]
        self.proc = None

    def start(self):
        (self.base / "root").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._up, 60, what="jupyter server")
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

    def request(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token is not False:
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
