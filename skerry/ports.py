"""Ports of users' servers that cannot be handed to two processes, and a check that the server
answering on a port is the one the hub started, before the hub routes to it.

Measured (``jupyterhub.utils.random_port`` binds port 0 and closes the socket): 200 picks in a
row gave 4 ports twice. The spawner picked ``dav_port`` so and JupyterHub picked the Jupyter
port so; between choosing and binding another start took the same port, and the hub, whose
readiness check accepts any HTTP answer (even a 404), routed alice's ``/user/alice/`` to bob's
WebDAV endpoint.

Rules:

- **held**: :meth:`PortLeases.lease` picks ports and keeps each bound (``SO_REUSEADDR``, never
  listening) in the hub until :meth:`PortLeases.release`. Linux then lets the user's server
  bind and listen on it (Tornado, cheroot and granian set ``SO_REUSEADDR``), but no ``bind(0)`` anywhere
  (``random_port``, ZMQ kernels, other hubs) is given that port, and a bind without
  ``SO_REUSEADDR`` is refused; the hub never leases a port twice while it is leased;
- **checked**: each endpoint answers ``GET <prefix>skerry-identity?challenge=C`` with
  ``{"user", "server", "role", "proof"}``, proof = HMAC-SHA256(per-spawn key, C|user|server|role).
  The key is made by the spawner for each start (:func:`new_key`) and handed to the server
  in ``$SKERRY_IDENTITY_KEY`` only (never sent over the wire, so a stranger that is asked learns
  nothing it can answer with). :func:`check_identity` waits for the answer and raises
  :class:`WrongServer` at once if anything else answers on the port;
- nothing here assumes root: the holds are the hub's own sockets, the servers may run as any uid;
- Unix sockets (``http+unix://``) were not chosen for the Jupyter side: JupyterHub 6.1.1 stores a
  user server as proto/ip/port and builds the proxy target ``http+unix://<path>:80``, which
  configurable-http-proxy 5.3 decodes to the socket path ``<path>:80``.
"""

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import threading
from urllib.parse import parse_qs

from . import config
from .errors import SetupError

IDENTITY_PATH = "skerry-identity"  # under each endpoint's URL prefix
ROLES = ("jupyter", "webdav")


# ---- ports chosen now, bound later ------------------------------------------------------------


def quiet_port(ip: str = "127.0.0.1", tries: int = 100, avoid=frozenset()) -> int:
    """A port free now, chosen at random below the kernel's ephemeral range: a port the kernel
    hands out (to a socket bound to port 0, a held lease, an outgoing connection) could be
    taken by another process between this choice and the bind, which may be seconds later
    (three platforms starting at once lost their proxy's API port to each other's servers).
    Never one of ``avoid``: ports already chosen, free now but bound later."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    floor = max(1024, low - 12000)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for _ in range(tries):
        port = floor + secrets.randbelow(low - floor)
        if port in avoid:
            continue
        with socket.socket(family) as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
            return port
    raise SetupError(f"no free port below {low} on {ip} in {tries} tries")


# ---- held ports ----------------------------------------------------------------------------


class PortLeases:
    """The ports the hub handed to its users' servers, each held by a bound socket of the hub."""

    def __init__(self, host: str = ""):
        self.host = host  # "": hold on every address, so no bind on any address takes the port
        self._held: dict[int, tuple[str, socket.socket | None]] = {}
        self._lock = threading.Lock()  # the hub calls from its loop, maybe from threads too

    def lease(self, owner: str, count: int = 1) -> list[int]:
        """``count`` distinct ports for ``owner`` (e.g. ``"alice/"``), held until :meth:`release`."""
        got: list[tuple[int, socket.socket]] = []
        try:
            with self._lock:
                tries = 0
                while len(got) < count:
                    tries += 1
                    if tries > 100 * count:
                        raise OSError(f"no free port could be held for {owner}")
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server may bind it too
                    sock.bind((self.host, 0))
                    port = sock.getsockname()[1]
                    if port in self._held:  # adopted after a restart, not held: never twice
                        sock.close()
                        continue
                    got.append((port, sock))
                    self._held[port] = (owner, sock)
        except BaseException:
            self._drop([port for port, _ in got])
            raise
        return [port for port, _ in got]

    def adopt(self, owner: str, ports) -> None:
        """Record ``ports`` of a server found running after a hub restart (its server holds them)."""
        with self._lock:
            for port in ports:
                if port:
                    self._held.setdefault(int(port), (owner, None))

    def release(self, owner: str) -> list[int]:
        """Give back every port of ``owner`` (at stop); the ports released."""
        with self._lock:
            ports = [p for p, (o, _) in self._held.items() if o == owner]
        self._drop(ports)
        return ports

    def owner(self, port: int) -> str | None:
        with self._lock:
            entry = self._held.get(port)
        return entry[0] if entry else None

    def _drop(self, ports) -> None:
        with self._lock:
            for port in list(ports):
                _, sock = self._held.pop(port, (None, None))
                if sock is not None:
                    sock.close()


_LEASES: PortLeases | None = None


def port_leases() -> PortLeases:
    """The hub process's leases."""
    global _LEASES
    if _LEASES is None:
        _LEASES = PortLeases()
    return _LEASES


# ---- identity: the server proves it is the one the hub started -------------------------------


def new_key() -> str:
    """A fresh per-start key, for ``$SKERRY_IDENTITY_KEY`` of that start only."""
    return secrets.token_hex(32)


def proof(key: str, challenge: str, user: str, server: str, role: str) -> str:
    message = "|".join((challenge, user, server, role)).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def answer(key: str, challenge: str, user: str, server: str, role: str) -> bytes:
    """The JSON body an endpoint answers to ``skerry-identity?challenge=...``."""
    return json.dumps({"user": user, "server": server, "role": role,
                       "proof": proof(key, challenge, user, server, role)}).encode()


def identity_wsgi(app, prefix: str, role: str = "webdav", key: str | None = None,
                  user: str | None = None, server: str | None = None):
    """``app`` answering ``<prefix>/skerry-identity`` itself (key, user and server default to
    ``$SKERRY_IDENTITY_KEY``, ``$SKERRY_USER``, ``$SKERRY_SERVER``)."""
    key = key if key is not None else config.IDENTITY_KEY.get()
    user = user if user is not None else config.USER.get() or ""
    server = server if server is not None else config.SERVER.get()
    path = prefix.rstrip("/") + "/" + IDENTITY_PATH

    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") != path:
            return app(environ, start_response)
        challenge = (parse_qs(environ.get("QUERY_STRING", "")).get("challenge") or [""])[0]
        if not key or not challenge:  # no key: this server cannot prove anything, say so
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no identity key or no challenge\n"]
        body = answer(key, challenge, user, server, role)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    return wrapped


def tornado_handlers(base_url: str, role: str = "jupyter", key: str | None = None,
                     user: str | None = None, server: str | None = None) -> list:
    """The Jupyter server's identity handler: ``web_app.add_handlers(".*$", tornado_handlers(base_url))``."""
    import tornado.web

    key = key if key is not None else config.IDENTITY_KEY.get()
    user = user if user is not None else config.USER.get() or ""
    server = server if server is not None else config.SERVER.get()

    class IdentityHandler(tornado.web.RequestHandler):  # plain tornado: no login, it reveals nothing
        def get(self):
            challenge = self.get_argument("challenge", "")
            if not key or not challenge:
                raise tornado.web.HTTPError(404)
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.finish(answer(key, challenge, user, server, role))

    return [(base_url.rstrip("/") + "/" + IDENTITY_PATH, IdentityHandler)]


class IdentityError(SetupError):
    """The server on a port did not prove it is the one the hub started: the start fails (500)."""

    code = "identity_unproven"


class WrongServer(IdentityError):
    """Something other than the server the hub started answers on its port."""

    code = "port_taken"


class NoAnswer(IdentityError):
    """Nothing answered in time (or the server's process ended)."""

    code = "endpoint_timeout"


async def _get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(1 << 16), timeout)
        while True:  # HTTP/1.0 with Connection: close: read to the end
            more = await asyncio.wait_for(reader.read(1 << 16), timeout)
            if not more:
                break
            raw += more
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), body


async def check_identity(port: int, prefix: str, key: str, user: str, server: str, role: str,
                         timeout: float, alive=None) -> None:
    """Wait until the server on ``port`` proves it is ``user``'s ``server``'s ``role`` endpoint
    started with ``key``. WrongServer at once if anything else answers there; NoAnswer after
    ``timeout`` seconds, or as soon as ``alive()`` (if given) says the server's process ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    who = f"{user}'s {role} endpoint" + (f" of server {server!r}" if server else "")
    delay = 0.05
    while True:
        challenge = secrets.token_hex(16)
        path = f"{prefix.rstrip('/')}/{IDENTITY_PATH}?challenge={challenge}"
        try:
            status, body = await _get(port, path, max(1.0, min(10.0, deadline - loop.time())))
        except (TimeoutError, OSError, IndexError, ValueError):
            status = None  # not listening yet (or a half-open start): wait
        if status is not None:
            expected = proof(key, challenge, user, server, role)
            try:
                got = json.loads(body)
            except ValueError:
                got = None
            if isinstance(got, dict) and hmac.compare_digest(str(got.get("proof", "")), expected):
                return
            if isinstance(got, dict) and "proof" in got:
                said = f"another skerry endpoint (it says: {got.get('user')!r}'s {got.get('role')})"
            else:
                said = f"a process that is not this server (HTTP {status} to {prefix}{IDENTITY_PATH})"
            raise WrongServer(f"port {port} is answered by {said}, not {who} started now: another "
                              f"process took the port; the hub does not route there")
        if alive is not None and not alive():
            raise NoAnswer(f"{who} ended before it answered on port {port}")
        if loop.time() >= deadline:
            raise NoAnswer(f"{who} did not answer on port {port} within {timeout:g}s")
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 0.5)
