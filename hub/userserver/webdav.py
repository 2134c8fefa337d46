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

Where nginx is installed with its Lua module (``SKERRY_DAV_FRONT``: ``auto``, the default, or
``nginx``), the port is nginx's: the front (``davfront``) answers plain file transfers itself
and passes everything else to the app, which granian then serves on a port of its own on
127.0.0.1. nginx is a third process, started once the app listens; it dies with this one,
and this one stops when nginx ends.
"""

import os
import shutil
import signal
import sys
import threading

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

from skerry.hub.userserver import davfront
from skerry.hub.userserver.tokenauth import HubTokenAuthenticator, HubTokens, owner_from_env
from skerry.hub.userserver.wsgishim import for_granian
from skerry.ports import identity_wsgi, quiet_port

START_TIMEOUT = 120  # seconds the worker gets to load the app and listen, before the front gives up

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
    front = config.DAV_FRONT_DIR.get()  # set where a front (nginx) answers in front of this app
    provider = FederationProvider(SkerryFileSystem(), block_size=BLOCK_SIZE)
    app = make_dav_app(
        provider,
        mount,
        HubTokenAuthenticator,
        {"skerry_auth": {"owner": owner_from_env(), "hub": HubTokens.from_env()}},
        lock_flag=os.path.join(front, davfront.LOCK_FLAG) if front else None,
    )
    feed = config.WRITES_OUT.get()
    if feed is not None:  # what it writes, the Jupyter server's find index learns at once
        app = tell_writes(app, feed, mount)
    if front:  # what the front writes, this app's listings show at once
        app = davfront.heard_writes(app, config.DAV_FRONT_WRITES.require(), front, provider,
                                    list(provider.fs.adaptors))
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
    ip, port = config.DAV_IP.get(), config.DAV_PORT.require()
    nginx = davfront.wanted_nginx()
    if nginx is not None:  # nginx listens on the endpoint's port; the app behind it on one of its own
        folder = davfront.private_folder(port)
        heard_in, heard_out = os.pipe()  # the front tells the worker what it wrote (davfront.heard_writes)
        os.set_blocking(heard_out, False)
        config.DAV_FRONT_DIR.set(folder)  # read by the worker, forked from this process
        config.DAV_FRONT_WRITES.set(heard_in)
        app_ip, app_port = "127.0.0.1", quiet_port(avoid={port})  # the endpoint's port: free until nginx binds it
        # nginx starts once the worker is forked, from a thread of its own: a thread of ours busy
        # at that fork (an import, a lookup) could hold a lock the worker then waits on for good
        started = []

        def after_fork():
            if not started:
                started.append(threading.Thread(target=davfront.run, args=(nginx, folder, ip, port, app_port,
                                                                           heard_out),
                                                kwargs={"backlog": BACKLOG, "app_timeout": START_TIMEOUT},
                                                name="skerry-dav-front", daemon=True))
                started[0].start()

        os.register_at_fork(after_in_parent=after_fork)
    else:
        app_ip, app_port = ip, port
    # its log: errors only (granian warns at every start that 16 threads are many: see THREADS)
    server = Server("skerry-webdav", address=app_ip, port=app_port,
                    interface=Interfaces.WSGI, workers=1, blocking_threads=THREADS, http=HTTPModes.http1,
                    backlog=BACKLOG, websockets=False, log_level=LogLevels.error)
    try:
        server.serve(target_loader=_worker_app, wrap_loader=False)  # until SIGTERM/SIGINT, or its worker's end
    finally:
        if nginx is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
