"""The WebDAV endpoint process of a micro-infrastructure: ``python -m skerry.hub.userserver.webdav``.

It serves the user's ``skerry://`` federation, one folder per adaptor. Configured by
the environment ``SkerrySpawner`` sets: ``SKERRY_DAV_PORT``, ``SKERRY_ADAPTORS`` (the
adaptor configuration file), ``SKERRY_DAV_PREFIX`` (``/dav/<name>/``), ``SKERRY_USER``,
and JupyterHub's ``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_OAUTH_ACCESS_SCOPES``.
Serves with cheroot on 127.0.0.1 until SIGTERM/SIGINT.
"""

import signal
import sys

from cheroot import wsgi

from skerry import config
from skerry.adaptors.davprovider import FederationProvider
from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.webdav import BLOCK_SIZE, head_without_body, make_dav_app
from skerry.adaptors.writefeed import tell_writes
from skerry.process import die_with_parent

from skerry.hub.userserver.tokenauth import HubTokenAuthenticator, HubTokens, owner_from_env
from skerry.ports import identity_wsgi

# measured (10 KB files, curl with 8 connections, PUT then GET, 2 cores): 2 threads 1,500
# files/s, 4: 1,250, 6 to 32: 1,060-1,140 (more requests in Python at once contend for the
# GIL). Yet a thread is held for a whole transfer: with 4, a fifth client's listing would wait
# for a 1 GiB copy to end. 16 keeps a desktop client's parallel transfers and its browsing apart.
THREADS = 16
# a desktop client's parallel transfers arrive through the proxy in bursts of new connections
# that cheroot's default listen backlog of 5 overflows
BACKLOG = 1024
IDLE_S = 120  # seconds a connection may stay idle, or a request stall, before cheroot closes it (its default: 10)


def build_server(port: int = 0) -> wsgi.Server:
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
    served = head_without_body(identity_wsgi(wsgi.PathInfoDispatcher({mount: app}), mount, "webdav"))
    server = wsgi.Server(("127.0.0.1", port), served, numthreads=THREADS,
                         request_queue_size=BACKLOG)
    # the proxy keeps its connections to us alive (configurable-http-proxy with no idle limit
    # of its own, Traefik for 90 s): cheroot keeping only 10 made it reconnect for every request
    # of a desktop client's parallel transfers (idle connections cost cheroot no thread), and
    # each idle close of ours races the proxy's next request on that connection ("socket hang
    # up", a 503 to the client: seen once under rclone in CI), so we close idle ones far less often
    server.keep_alive_conn_limit = None  # all of them (with a limit, cheroot counts them, under a lock, per request)
    server.timeout = IDLE_S
    server.server_name = "skerry-webdav"
    return server


def main() -> int:
    die_with_parent()  # never outlive the micro-infrastructure process
    server = build_server(config.DAV_PORT.require())

    def stop(signum, frame):
        raise SystemExit(0)  # unwinds serve(); stop() below closes the socket and workers

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.prepare()
    try:
        server.serve()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
