"""The user's Dask dashboards in their Jupyter server: ``<base_url>skerry/dask/<pool>/``.

Each of the user's clusters serves its dashboard on a Unix socket in the cluster's work
folder (``skerry.workload.dashboard``); this server, the user's own, proxies it (HTTP and
the bokeh websockets, through jupyter-server-proxy's handler), so the dashboard is behind
the hub's login like the rest of the server: ``/user/alice/skerry/dask/cpu/status`` is
alice's task stream, progress and memory, and nobody else's.

dask-labextension's panels take the address from ``skerry.client.dashboard_link`` (the
kernel's default client) and check it from the browser, with the hub's login
(``browserDashboardCheck``, set in skerry's JupyterLab settings: ``lab_settings/``).

Rules:
- the pool is a plain name; a pool whose cluster is not running answers 503 with a
  sentence (it starts on the first use of ``skerry.client``);
- only this user's clusters: the folder is the user's handover folder (beside
  ``$SKERRY_ADAPTORS``), whose sockets only the user's account can connect to.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import LocalProxyHandler
from tornado import web

from skerry.config import ADAPTORS
from skerry.workload.clusters import WORK, cluster_folder
from skerry.workload.dashboard import PREFIX, SOCKET, socket_path

__all__ = ["handlers"]

POOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _work(pool: str) -> Path:
    handover = Path(ADAPTORS.get() or "/nonexistent").parent  # the spawner's file is in the handover folder
    return cluster_folder(handover, pool) / WORK


def _not_running(pool: str) -> web.HTTPError:
    return web.HTTPError(503, reason="Dask cluster not running",
                         log_message=f"your {pool!r} Dask cluster is not running: it starts on the first use of "
                                     "skerry.client in a kernel")


class DashboardHandler(LocalProxyHandler):
    """Proxies ``<base_url>skerry/dask/<pool>/<path>`` to the user's cluster of ``pool``."""

    async def http_get(self, pool, path):
        return await self.proxy(pool, path)

    async def open(self, pool, path):
        with self._socket(pool):
            return await self.proxy_open("localhost", 0, path)

    def post(self, pool, path):
        return self.proxy(pool, path)

    def head(self, pool, path):
        return self.proxy(pool, path)

    async def proxy(self, pool, path):
        with self._socket(pool):
            return await super().proxy(0, path)

    def _socket(self, pool):
        if not POOL.fullmatch(pool):
            raise web.HTTPError(404, log_message=f"no pool named {pool!r}")
        self.proxy_base = PREFIX + pool  # where the proxied pages live, for their redirects
        work = _work(pool)
        if not (work / SOCKET).exists():
            raise _not_running(pool)
        return _pointed(self, work)


@contextlib.contextmanager
def _pointed(handler, work: Path):
    """The handler's ``unix_socket`` is the cluster's socket while a request connects."""
    with socket_path(work) as path:
        handler.unix_socket = path
        yield


def handlers(base_url: str) -> list:
    return [(url_path_join(base_url, PREFIX, r"([^/]+)(/.*|)"), DashboardHandler)]

