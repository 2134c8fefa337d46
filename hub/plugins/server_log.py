"""``/hub/skerry/log[/<server>]``: a user reads their own server's log in the browser, the
page a failed start points to (the spawner's sentence names it).

Rules:

- the logged-in user's own servers only (the default one, or the named ``<server>``); an
  admin (unfiltered ``admin:users``) may add ``?user=<name>``; for anyone else another
  user's log does not exist (404), as JupyterHub answers for servers one may not see;
- the answer is ``text/plain``: the last ``TAIL`` bytes of the log (``skerry.datadir.server_log``,
  what the server's processes printed over its starts), 404 with a sentence when there is none;
- never cached by the browser (``Cache-Control: no-store``): it changes at each start.
"""

import asyncio
import os

from jupyterhub.handlers import BaseHandler
from tornado import web

from skerry.accounts import HUB_NAME
from skerry.datadir import DataDir, server_log
from skerry.hub.plugins.admin_pages import ADMIN_SCOPE

__all__ = ["ServerLogPage", "handlers", "page", "ROUTE", "TAIL"]

TAIL = 256 * 1024  # bytes of the log's end shown
ROUTE = "/skerry/log"  # under the hub's URL prefix (/hub/)


def page(hub_prefix: str, server: str = "") -> str:
    """The path of the log page of ``server`` (``""``: the default one) under ``hub_prefix``."""
    return hub_prefix.rstrip("/") + ROUTE + (f"/{server}" if server else "")


def handlers(data_dir: str) -> list[tuple]:
    """``JupyterHub.extra_handlers`` for the page, over the handover folders of ``data_dir``."""
    kwargs = {"data_dir": str(data_dir)}
    return [(ROUTE, ServerLogPage, kwargs), (ROUTE + r"/([^/]+)", ServerLogPage, kwargs)]


def _tail(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL))
            return f.read()
    except FileNotFoundError:
        return None


class ServerLogPage(BaseHandler):
    """The end of one server's log, as text."""

    def initialize(self, data_dir: str):
        self.data = DataDir(data_dir)

    @web.authenticated
    async def get(self, server: str = ""):
        name = self.get_argument("user", self.current_user.name)
        if not HUB_NAME.match(name) or (name != self.current_user.name and ADMIN_SCOPE not in self.expanded_scopes):
            raise web.HTTPError(404, f"There is no server log of {name!r} you may read.")
        text = await asyncio.to_thread(_tail, str(server_log(self.data.handover(name), server)))
        if text is None:
            what = f"server {server!r}" if server else "default server"
            raise web.HTTPError(404, f"{name}'s {what} has no log yet: it has not been started.")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(text)
