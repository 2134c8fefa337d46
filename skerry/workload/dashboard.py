"""A user cluster's Dask dashboard, on a Unix socket only its user can connect to.

Loaded into the scheduler of a user's cluster as a Dask preload
(``dask scheduler --preload skerry.workload.dashboard``, see ``clusters``): it serves
Dask's dashboard (the bokeh pages: status, task stream, progress, memory...) and Dask's
read-only HTTP pages (worker info, ``individual-plots.json``, health) on
``dashboard.sock`` in the scheduler's working folder (the cluster's ``work`` folder: the
account's own, 0700). The user's Jupyter server proxies it at
``/user/<name>/skerry/dask/<pool>/`` (``extensions.dashboards``), behind the hub's login.

Rules:
- never on TCP: any local process can connect to a TCP port, and Dask's dashboard has no
  authentication of its own; a Unix socket in a 0700 folder, itself 0600, admits the
  account's processes only (its Jupyter server, its kernels) and root;
- the socket is bound by its name in the working folder (``SOCKET``, relative: a data dir's
  long path cannot exceed the 107 bytes a socket path may have); whoever connects from
  elsewhere uses :func:`socket_path`'s short ``/proc/self/fd`` path to the folder;
- Dask's own proxy to workers' pages (``distributed.http.proxy``) is left out: it would
  reach other ports from the scheduler;
- without bokeh (a stripped install) the preload does nothing and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["SOCKET", "ROUTES", "PREFIX", "dask_setup", "socket_path", "link"]

SOCKET = "dashboard.sock"
PREFIX = "skerry/dask/"  # below the user's server: <server prefix>skerry/dask/<pool>/
ROUTES = ["distributed.http.scheduler.info", "distributed.http.scheduler.json", "distributed.http.health",
          "distributed.http.statics"]

log = logging.getLogger("skerry.dashboard")


def dask_setup(scheduler) -> None:
    """Serve ``scheduler``'s dashboard on ``./dashboard.sock`` (the preload's hook)."""
    try:
        import distributed.dashboard.scheduler as bokeh_pages
    except ImportError as e:
        log.warning("no dashboard for this cluster: %s (pip install bokeh)", e)
        return
    from distributed.http.routing import RoutingApplication
    from distributed.http.utils import get_handlers
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_unix_socket

    application = RoutingApplication(get_handlers(server=scheduler, modules=ROUTES, prefix=""))
    bokeh_pages.connect(application, None, scheduler, prefix="")  # its http_server is unused
    # Dask's pages list the bokeh plots of the scheduler's own application (individual-plots.json)
    scheduler.http_application = application
    server = HTTPServer(application)
    server.add_socket(bind_unix_socket(SOCKET, mode=0o600))
    scheduler._skerry_dashboard = server  # kept as long as the scheduler lives
    log.info("dashboard on %s", Path(SOCKET).resolve())


def link(server_prefix: str, pool: str) -> str:
    """The address of the user's dashboard of ``pool`` in their Jupyter server
    (``server_prefix``: ``/user/alice/``), as ``skerry.client`` shows it."""
    return f"{server_prefix.rstrip('/')}/{PREFIX}{pool}/status"


@contextlib.contextmanager
def socket_path(folder: str | os.PathLike):
    """A path to ``folder/dashboard.sock`` short enough for ``connect`` whatever ``folder``'s
    length (``/proc/self/fd/<n>/dashboard.sock``), valid inside the ``with`` block.
    FileNotFoundError when the folder does not exist (no cluster has run)."""
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET}"
    finally:
        os.close(fd)
