"""``SkerryHAProxy``: HAProxy as the hub's proxy, with the WebDAV routes (``DavRoutes``).

HAProxy is one process (2 threads) the hub starts with a configuration it writes to
``config_file``. The routing table is a map from a route's prefix to the server's address,
changed through HAProxy's runtime API (a Unix socket only root opens): a route added or
deleted is in effect when the call returns, and no reload ever cuts a transfer or a
kernel's WebSocket. A request goes to the route with the longest prefix of its path with a
``/`` added (the map is a prefix tree: ``/dav/alice`` goes to ``/dav/alice/``, as with
configurable-http-proxy, and ``/dav/alicex`` does not). Paths reach the servers as sent, as
behind the other proxies (each server refuses what a path may not reach). A body is moved
from socket to socket by the kernel (``splice``), not copied through HAProxy.

Rules:
- a target is ``http://<address>:<port>``, IPv4, no path (a name is resolved when the route
  is added); an ``https://`` target or a route with a host is refused with a sentence;
- the table lives in this process and in HAProxy: HAProxy starts with the hub and stops
  with it (``skerry up`` stops one a killed hub left, by ``pid_file``), and the hub adds
  every route again at its start; an HAProxy that dies is started again within
  ``watch_interval`` seconds, with every route (the hub's routes check);
- with ``ssl_cert`` and ``ssl_key`` it serves HTTPS only: HAProxy reads the two as one file
  (``run/haproxy.pem``, 0600, removed at stop);
- the ``X-Forwarded-*`` headers a client sends are replaced by what HAProxy saw.
"""

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from urllib.parse import urlsplit

from jupyterhub.proxy import Proxy
from jupyterhub.utils import exponential_backoff
from tornado.ioloop import PeriodicCallback
from traitlets import Integer, Unicode

from skerry.localfiles import write_private
from skerry.hub.plugins.proxy import DavRoutes

SOCKET_PATH_MAX = 100  # a Unix socket's path holds at most 107 bytes

# splice-response/-request: a body goes from socket to socket through a kernel pipe (a GiB from
# the WebDAV endpoint: 1.0-1.3 GB/s with splice-auto, which splices only what it judges
# worth it; 1.3-1.6 with both; pipes of 256 KiB rather than 64 take fewer calls)
CONFIG = """\
global
    nbthread {threads}
    stats socket {socket} mode 600 level admin
    tune.bufsize 32768
    tune.pipesize 1048576
defaults
    mode http
    timeout connect 5s
    timeout http-request 60s
    timeout http-keep-alive 90s
    timeout client 1h
    timeout server 1h
    timeout tunnel 24h
    option splice-response
    option splice-request
frontend public
    bind {bind}
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-var(txn.to) path,concat(/),map_beg({routes})
    http-request return status 503 content-type text/plain string "no route" unless {{ var(txn.to) -m found }}
    default_backend routes
backend routes
    http-request set-dst var(txn.to),field(1,:)
    http-request set-dst-port var(txn.to),field(2,:)
    server route 0.0.0.0:0
"""


class SkerryHAProxy(DavRoutes, Proxy):
    """HAProxy, started by the hub, with the WebDAV routes."""

    command = Unicode("haproxy", config=True, help="the HAProxy program")
    config_file = Unicode(config=True, help="where its configuration is written")
    socket_file = Unicode(config=True, help="its runtime API's socket (0600; see api_socket)")
    routes_file = Unicode(config=True, help="the routes map it starts with (empty: the hub adds every route)")
    pid_file = Unicode("", config=True, help="where the running HAProxy's pid is written")
    threads = Integer(2, config=True, help="HAProxy's threads")
    watch_interval = Integer(5, config=True, help="seconds between checks that HAProxy still runs")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.routes = {}  # routespec -> {"routespec", "target", "data"}, as the hub asks for it
        self.process = None
        self._watch = None  # calls check_running every watch_interval seconds
        self._private_dir = None  # where the socket is when socket_file's path is too long
        self._lock = asyncio.Lock()  # one change of the map at a time: add or set follows the table

    def _bind(self) -> str:
        url = urlsplit(self.public_url)
        host = url.hostname or ""
        address = f"ipv6@{host}:{url.port}" if ":" in host else f"{host}:{url.port}"
        if not (self.ssl_cert and self.ssl_key):
            return address
        pem = self._pem_file()
        with open(self.ssl_cert) as cert, open(self.ssl_key) as key:
            write_private(pem, cert.read().rstrip("\n") + "\n" + key.read())
        return f"{address} ssl crt {pem} alpn http/1.1"

    @property
    def api_socket(self) -> str:
        """``socket_file``, or, where its path is too long for a Unix socket (a data dir deep
        in folders), ``api.sock`` in a folder of the system's temporary folder only root enters."""
        if len(os.fsencode(self.socket_file)) <= SOCKET_PATH_MAX:
            return self.socket_file
        if self._private_dir is None:
            self._private_dir = tempfile.mkdtemp(prefix="skerry-haproxy-")  # 0700
        return os.path.join(self._private_dir, "api.sock")

    def _pem_file(self) -> str:
        return os.path.join(os.path.dirname(self.config_file), "haproxy.pem")

    async def start(self):
        write_private(self.routes_file, "")
        write_private(self.config_file, CONFIG.format(threads=self.threads, socket=self.api_socket,
                                                      bind=self._bind(), routes=self.routes_file))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.api_socket)  # a killed HAProxy's: the new one's replaces it
        self.process = subprocess.Popen([self.command, "-db", "-f", self.config_file], stdin=subprocess.DEVNULL)
        if self.pid_file:
            write_private(self.pid_file, str(self.process.pid))

        async def answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"HAProxy exited with {self.process.returncode} at its start (its error is above)")
            try:
                await self._api("show info")
                return True
            except OSError:
                return False

        await exponential_backoff(answers, "HAProxy's runtime API did not answer", timeout=30)
        if self._watch is None:
            self._watch = PeriodicCallback(self.check_running, 1000 * self.watch_interval)
            self._watch.start()
        self.log.info("HAProxy (pid %s) is the proxy, at %s", self.process.pid, self.public_url)

    async def stop(self):
        if self._watch is not None:  # first: a stopped HAProxy is not one to start again
            self._watch.stop()
            self._watch = None
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        for path in (self.pid_file, self._pem_file(), self.api_socket):
            with contextlib.suppress(FileNotFoundError):
                if path:
                    os.unlink(path)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    async def check_running(self):
        """Start HAProxy again, with every route, if it has died."""
        if self.process is None or self.process.poll() is None:
            return
        self.log.error("HAProxy stopped (exit %s): starting it again", self.process.returncode)
        self.routes.clear()
        await self.start()
        await self.check_routes(self.app.users, self.app._service_map)

    async def _api(self, command: str) -> str:
        """One command of HAProxy's runtime API; its answer (empty where it did what was asked)."""
        reader, writer = await asyncio.open_unix_connection(self.api_socket)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode().strip()
        finally:
            writer.close()

    async def _change(self, command: str) -> None:
        answer = await self._api(command)
        if answer:
            raise RuntimeError(f"HAProxy refused {command.split(' ', 1)[0]} map: {answer}")

    async def add_route(self, routespec, target, data):
        routespec = self.validate_routespec(routespec)
        if any(c.isspace() for c in routespec):
            raise ValueError(f"a route may not contain spaces: {routespec!r}")
        address = await address_of(target)
        async with self._lock:
            verb = "set" if routespec in self.routes else "add"
            await self._change(f"{verb} map {self.routes_file} {routespec} {address}")
            self.routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec):
        routespec = self.validate_routespec(routespec)
        async with self._lock:
            if self.routes.pop(routespec, None) is not None:
                await self._change(f"del map {self.routes_file} {routespec}")

    async def get_all_routes(self):
        return {spec: dict(route) for spec, route in self.routes.items()}


async def address_of(target: str) -> str:
    """``<ip>:<port>`` of an ``http://`` target, its name resolved."""
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname or not url.port or url.path not in ("", "/"):
        raise ValueError(f"HAProxy routes to http://<host>:<port> targets only, not {target!r}")
    infos = await asyncio.get_running_loop().getaddrinfo(url.hostname, url.port, family=socket.AF_INET,
                                                         type=socket.SOCK_STREAM)
    return f"{infos[0][4][0]}:{url.port}"
