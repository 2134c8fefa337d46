"""The WebDAV endpoint process of a micro-infrastructure: ``python -m skerry.hub.userserver.webdav``.

It serves the user's ``skerry://`` federation, one folder per adaptor. Configured by
the environment ``SkerrySpawner`` sets: ``SKERRY_DAV_PORT``, ``SKERRY_ADAPTORS`` (the
adaptor configuration file), ``SKERRY_DAV_PREFIX`` (``/dav/<name>/``), ``SKERRY_USER``,
and JupyterHub's ``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_OAUTH_ACCESS_SCOPES``.

Served by granian on ``SKERRY_DAV_IP`` (127.0.0.1; in a pod, its own address) until
SIGTERM/SIGINT: a Rust HTTP server, so parsing and sending a request cost no Python
(cheroot's own share was 0.2 ms of CPU per request, half a small request's). Two processes:
this one, granian's main, and the worker it forks, which runs the app in ``THREADS``
threads. The worker dies with the main process, the main process with its parent (the
launcher), and the main process exits when its worker does: the launcher then stops the
whole micro-infrastructure, as it does for any child.
"""

import signal
import sys

from cheroot import wsgi
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server import Server

from skerry import config
from skerry.adaptors.davprovider import FederationProvider
from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.webdav import BLOCK_SIZE, head_without_body, make_dav_app
from skerry.adaptors.writefeed import tell_writes
from skerry.process import die_with_parent, settle_heap

from skerry.hub.userserver.tokenauth import HubTokenAuthenticator, HubTokens, owner_from_env
from skerry.hub.userserver.wsgishim import for_granian
from skerry.ports import identity_wsgi

# measured (10 KB files, curl with 8 connections, PUT then GET, 2 cores; granian): 2 threads
# 1,900 files/s, 4: 1,700-1,870, 16: 1,420-1,780 (with cheroot: 1,500, 1,250 and 1,090: more
# requests in Python at once contend for the GIL). Yet a thread is held for a whole transfer:
# with 4, a fifth client's listing would wait for a 1 GiB copy to end. 16 keeps a desktop
# client's parallel transfers and its browsing apart.
THREADS = 16
# a desktop client's parallel transfers arrive through the proxy in bursts of new connections
BACKLOG = 1024
# kept-alive connections: granian keeps each open until the client (the proxy: Traefik after
# 90 s idle) closes it, with no count limit, so the proxy never races an idle close of ours


def build_app():
    """The endpoint's WSGI app, as the server runs it."""
    mount = config.DAV_PREFIX.require().rstrip("/")
    app = make_dav_app(
        FederationProvider(SkerryFileSystem(), block_size=BLOCK_SIZE),
        mount,
        HubTokenAuthenticator,
        {"skerry_auth": {"owner": owner_from_env(), "hub": HubTokens.from_env()}},
    )
    feed = config.WRITES_OUT.get()
    if feed is not None:  # what it writes, the Jupyter server's find index learns at once
        app = tell_writes(app, feed, mount)
    # the proxy keeps the /dav/<name> prefix: the dispatcher moves it into SCRIPT_NAME; the hub
    # asks <prefix>/skerry-identity that this endpoint is the one it started before it routes here
    return for_granian(head_without_body(identity_wsgi(wsgi.PathInfoDispatcher({mount: app}), mount, "webdav")))


def _worker_app():
    """Run in granian's worker when it starts: the app, and the worker's tie to the main process."""
    die_with_parent(signal.SIGKILL)  # the main process is gone: nothing would stop this one
    app = build_app()
    settle_heap()  # small requests: fewer full collections over the app's started heap
    return app


def main() -> int:
    die_with_parent()  # never outlive the micro-infrastructure process
    # its log: errors only (granian warns at every start that 16 threads are many: see THREADS)
    server = Server("skerry-webdav", address=config.DAV_IP.get(), port=config.DAV_PORT.require(),
                    interface=Interfaces.WSGI, workers=1, blocking_threads=THREADS, http=HTTPModes.http1,
                    backlog=BACKLOG, websockets=False, log_level=LogLevels.error)
    server.serve(target_loader=_worker_app, wrap_loader=False)  # until SIGTERM/SIGINT, or its worker's end
    return 0


if __name__ == "__main__":
    sys.exit(main())
