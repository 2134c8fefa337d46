"""Run code in a kernel of a user's Jupyter server from outside it, as JupyterLab does.

    with RemoteKernel("http://127.0.0.1:8000/user/alice/", token, "skerry") as kernel:
        result = kernel.execute("skerry.fs.ls('home')")
        result.value, result.stdout, result.stderr, result.error

The kernel is started with the server's REST API (``POST api/kernels``) and driven over
its websocket (``api/kernels/<id>/channels``, Jupyter's JSON messages); leaving the
``with`` block shuts it down. The token goes in the ``Authorization`` header only, never
in a URL. For tests, benchmarks and scripts: notebooks need none of it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, UTC

import httpx
import websocket  # websocket-client, a dependency of jupyter_server

from skerry.errors import Unavailable

__all__ = ["RemoteKernel", "Result", "KernelError", "KernelDied"]

TIMEOUT_S = 60.0


class KernelError(Unavailable, RuntimeError):  # RuntimeError: what scripts caught before
    """The server refused the kernel, or the kernel stopped answering."""

    code = "kernel_unavailable"


class KernelDied(KernelError):
    """The kernel died while running the code (its server says it is restarting it, or gave up)."""

    code = "kernel_died"


@dataclass
class Result:
    """What one execution showed: streams, the value's ``text/plain`` and its error, if any."""

    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: dict | None = None  # {"ename", "evalue", "traceback"}
    status: str = ""
    messages: list = field(default_factory=list, repr=False)


class RemoteKernel:
    """One kernel of ``kernel_name`` on the Jupyter server at ``server_url`` (ending in ``/``)."""

    def __init__(self, server_url: str, token: str, kernel_name: str = "skerry", timeout: float = TIMEOUT_S):
        self.server_url = server_url.rstrip("/") + "/"
        self.kernel_name = kernel_name
        self.timeout = timeout
        self._headers = {"Authorization": f"token {token}"}
        self._session = uuid.uuid4().hex
        self.id: str | None = None
        self._ws = None

    def start(self) -> RemoteKernel:
        r = httpx.post(self.server_url + "api/kernels", json={"name": self.kernel_name},
                       headers=self._headers, timeout=self.timeout)
        if r.status_code != 201:
            raise KernelError(f"the server refused a {self.kernel_name!r} kernel: {r.status_code} {r.text[:300]}")
        self.id = r.json()["id"]
        url = "ws" + self.server_url[4:] + f"api/kernels/{self.id}/channels?session_id={self._session}"
        self._ws = websocket.create_connection(url, header=[f"{k}: {v}" for k, v in self._headers.items()],
                                               timeout=self.timeout)
        return self

    def execute(self, code: str, timeout: float | None = None) -> Result:
        """Run ``code``; what it showed, once the kernel is idle again and has replied."""
        msg_id = uuid.uuid4().hex
        self._ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": self._session,
                       "username": "", "version": "5.3", "date": datetime.now(UTC).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        result, idle, replied = Result(), False, False
        deadline = time.monotonic() + (timeout or self.timeout)
        while not (idle and replied):
            if time.monotonic() > deadline:
                raise KernelError(f"the kernel did not finish {code[:60]!r} in {timeout or self.timeout:g} s")
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                raise KernelError(f"the kernel did not finish {code[:60]!r} in {timeout or self.timeout:g} s") from None
            state = msg.get("content", {}).get("execution_state") if msg.get("msg_type") == "status" else None
            if state in ("restarting", "dead"):  # sent by the server, for no request: the kernel is gone
                raise KernelDied(f"the kernel died running {code[:60]!r} (its server says {state!r})")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            result.messages.append(msg)
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                setattr(result, content["name"], getattr(result, content["name"]) + content["text"])
            elif kind == "execute_result":
                result.value = content["data"].get("text/plain")
            elif kind == "error":
                result.error = {k: content[k] for k in ("ename", "evalue", "traceback")}
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied, result.status = True, content["status"]
        return result

    def shutdown(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self.id is not None:
            httpx.delete(self.server_url + f"api/kernels/{self.id}", headers=self._headers, timeout=self.timeout)
            self.id = None

    def __enter__(self) -> RemoteKernel:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
