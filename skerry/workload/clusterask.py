"""How the platform's service gets a user's Dask cluster from the workload manager, and wakes it.

The manager owns the clusters (it starts them and feeds them jobs); the service, which
answers ``POST /services/skerry/api/v1/clusters/{pool}`` for a user's kernel, asks it::

    serve(data_dir, answer, wake)   # in the manager: answer(user, pool) -> dict, a thread per ask
    ask(data_dir, user, pool)       # in the service: that dict, or the manager's SkerryError
    wake(data_dir)                  # in the service: a run was started, the manager calls wake()

Rules:
- a Unix socket in the abstract namespace, named after the data dir (a path in ``run/``
  can pass the 108 bytes a socket path may hold); each side checks the other's uid
  (SO_PEERCRED) is its own, the platform's: no account can ask, nor pose as the manager;
- one JSON line each way: ``{"user", "pool"}``, then the answer or ``{"error", "message"}``;
  ``{"op": "wake"}`` gets no answer: the manager's ``wake()`` is called, and ``wake`` on
  the service's side never fails (no manager listening: it will see the run when it
  starts; the scheduler also looks for new runs on its own, every step);
- an ask with no manager listening raises ``ManagerUnavailable``; an error of ``answer``
  comes back as a ``SkerryError`` with the same code and sentence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

from ..errors import SkerryError, Unavailable

__all__ = ["serve", "ask", "wake", "ManagerUnavailable", "ASK_S"]

log = logging.getLogger("skerry.scheduler")
ASK_S = 150.0  # how long an ask waits: a cluster starting on a busy machine, and its queue
LINE_MAX = 64 * 1024


class ManagerUnavailable(Unavailable):
    code = "manager_unavailable"


def _address(data_dir: str | os.PathLike) -> bytes:
    digest = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:24]
    return b"\0skerry-clusters-" + digest.encode()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def serve(data_dir: str | os.PathLike, answer: Callable[[str, str], dict],
          wake: Callable[[], None] = lambda: None) -> socket.socket:
    """Listen for asks in a daemon thread; the listening socket (close it to stop)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(_address(data_dir))
    listener.listen(64)

    def one(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            try:
                if _peer_uid(conn) != os.geteuid():
                    return  # an account: not a word
                msg = json.loads(f.readline(LINE_MAX))
                if msg.get("op") == "wake":
                    wake()
                    return
                user, pool = msg["user"], msg["pool"]
                if not isinstance(user, str) or not isinstance(pool, str):
                    raise ValueError("user and pool must be names")
                reply = answer(user, pool)
            except SkerryError as e:
                reply = {"error": e.code, "message": e.message}
            except (ValueError, KeyError, TypeError) as e:
                reply = {"error": "bad_request", "message": f"a bad ask: {e}"}
            except Exception as e:  # noqa: BLE001 - the asker gets a sentence, the log the trace
                log.exception("answering an ask for a cluster failed")
                reply = {"error": "cluster_error", "message": f"{type(e).__name__}: {e}"}
            try:
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()
            except OSError:
                pass  # the asker gave up

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the manager stops
            threading.Thread(target=one, args=(conn,), daemon=True, name="skerry-ask").start()

    threading.Thread(target=accept, daemon=True, name="skerry-asks").start()
    return listener


def ask(data_dir: str | os.PathLike, user: str, pool: str, timeout: float = ASK_S) -> dict:
    """The manager's answer for ``user``'s cluster of ``pool`` (module docstring)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(_address(data_dir))
        except OSError:
            raise ManagerUnavailable("the workload manager is not running (it starts with the hub; "
                                     "see run/hub.log): no Dask cluster can be started now") from None
        if _peer_uid(conn) != os.geteuid():
            raise ManagerUnavailable("something that is not the platform's workload manager listens "
                                     "in its place; no cluster is asked of it")
        conn.sendall(json.dumps({"user": user, "pool": pool}).encode() + b"\n")
        with conn.makefile("rb") as f:
            try:
                line = f.readline(LINE_MAX)
            except TimeoutError:
                line = b""
    finally:
        conn.close()
    if not line:
        raise ManagerUnavailable(f"the workload manager gave no answer within {timeout:g} s")
    reply = json.loads(line)
    if "error" in reply:
        error = SkerryError(reply["message"])
        error.code = reply["error"]
        raise error
    return reply


def wake(data_dir: str | os.PathLike) -> bool:
    """Tell the manager a run was started (module docstring); whether one was told."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn.settimeout(1.0)
    try:
        conn.connect(_address(data_dir))
        if _peer_uid(conn) != os.geteuid():
            return False
        conn.sendall(b'{"op": "wake"}\n')
        return True
    except OSError:
        return False
    finally:
        conn.close()
