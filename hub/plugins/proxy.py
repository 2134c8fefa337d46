"""The platform's proxies, also routing ``/dav/<name>/``: ``SkerryTraefikProxy`` (Traefik,
through jupyterhub-traefik-proxy's file provider) and ``SkerryProxy`` (JupyterHub's
configurable-http-proxy), and ``DavRoutes``, the WebDAV routes any of them carries (HAProxy's
class, ``hub.plugins.haproxy``, too); ``skerry up --proxy`` chooses.

A user server's route (``/user/<name>/``) and its WebDAV route (``/dav/<name>/``)
enter and leave the routing table together: ``add_user``/``delete_user`` manage
both, and ``check_routes`` (the hub's periodic repair, which deletes every route it
does not know) keeps, adds and removes the WebDAV routes by the same rules as the
user routes. A stopped server's ``/dav/<name>/`` falls through to the ``/dav/``
extra route (the skerry service, which answers 503 with a sentence).

A stopped *named* server's ``/dav/<name>/<server>/`` would fall through to the user's
default server instead, whose federation has no such folder (404): while it is stopped
its route leads to the service, like the ``/dav/`` route (``park``), and goes when the
server is deleted (``SkerrySpawner.delete_forever``) or by the repair. A server named like a
folder of the default server (its start was refused) is never parked: it would hide it.
"""

import asyncio
import contextlib
import os

from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.utils import exponential_backoff
from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy
from traitlets import Unicode, default

from skerry.errors import ConfigError

DAV_KEY = "skerry_dav"  # marks our routes in the route data


def dav_target(spawner) -> str | None:
    """Where a running server's WebDAV endpoint is: its ``dav_url`` (a pod's), or its port here."""
    if getattr(spawner, "dav_url", ""):
        return spawner.dav_url
    port = getattr(spawner, "dav_port", 0)
    return f"http://127.0.0.1:{port}" if port else None


async def parkable(spawner) -> bool:
    """Whether a stopped named server's route may be parked: not where it would hide a folder
    of the default server (a refused start of a server named like an adaptor leaves its record)."""
    if not hasattr(spawner, "hidden_folder"):
        return False
    try:
        return await asyncio.to_thread(spawner.hidden_folder) is None
    except ConfigError:
        return False


class DavRoutes:
    """A WebDAV route per running micro-infrastructure, on any JupyterHub proxy (a mixin:
    it uses only the Proxy API, ``add_route``, ``delete_route``, ``get_all_routes``)."""

    async def add_user(self, user, server_name=""):
        spawner = user.spawners[server_name]
        target = dav_target(spawner)
        # side by side: each addition waits until the proxy applies it (Traefik: 20-100 ms)
        await asyncio.gather(super().add_user(user, server_name),
                             *([self._add_dav_route(user, server_name, spawner, target)] if target else []))

    async def delete_user(self, user, server_name=""):
        spawner = user.spawners[server_name]
        await super().delete_user(user, server_name)
        if hasattr(spawner, "dav_prefix"):
            await self.delete_route(spawner.dav_prefix)
            await self.park(user, server_name, spawner)

    async def park(self, user, server_name, spawner) -> None:
        """Route a stopped named server's WebDAV prefix to the service (503 and a sentence)."""
        target = self.extra_routes.get("/dav/")
        if server_name and target and server_name in user.orm_spawners and await parkable(spawner):
            await self._add_dav_route(user, server_name, spawner, target)

    def _add_dav_route(self, user, server_name, spawner, target):
        self.log.info("Adding WebDAV route %s -> %s", spawner.dav_prefix, target)
        data = {DAV_KEY: True, "dav_user": user.name, "dav_server": server_name}
        return self.add_route(spawner.dav_prefix, target, data)

    async def check_routes(self, user_dict, service_dict, routes=None):
        routes = routes or await self.get_all_routes()
        dav = {spec: r for spec, r in routes.items() if r["data"].get(DAV_KEY)}
        others = {spec: r for spec, r in routes.items() if spec not in dav}
        # JupyterHub's check deletes routes it does not know: hand it only its own
        await super().check_routes(user_dict, service_dict, others or None)
        if not others:  # it fetched the table itself and deleted ours: add them all again
            dav = {}

        wanted, keep = {}, set()
        parked = self.extra_routes.get("/dav/")
        for user in user_dict.values():
            for name, spawner in user.spawners.items():
                target = dav_target(spawner)
                if spawner.ready and target:
                    wanted[spawner.dav_prefix] = (user, name, spawner, target)
                elif spawner.pending and hasattr(spawner, "dav_prefix"):
                    keep.add(spawner.dav_prefix)
            if parked:  # stopped named servers (the hub keeps no spawner object for some): ``park``
                for name in filter(None, user.orm_spawners):  # named ones only: "" is the default server
                    spawner = user.spawners[name]
                    if not spawner.active and hasattr(spawner, "dav_prefix") and await parkable(spawner):
                        wanted[spawner.dav_prefix] = (user, name, spawner, parked)
        futures = []
        for spec, (user, name, spawner, target) in wanted.items():
            if spec not in dav or dav[spec]["target"] != target:
                self.log.warning("Adding missing WebDAV route %s", spec)
                futures.append(self._add_dav_route(user, name, spawner, target))
        for spec in dav:
            if spec not in wanted and spec not in keep:
                self.log.warning("Deleting stale WebDAV route %s", spec)
                futures.append(self.delete_route(spec))
        await asyncio.gather(*futures)


class SkerryProxy(DavRoutes, ConfigurableHTTPProxy):
    """configurable-http-proxy (one node process), with the WebDAV routes."""


class SkerryTraefikProxy(DavRoutes, TraefikFileProviderProxy):
    """Traefik (a Go process: a GiB through it costs a fraction of node's CPU), with the
    WebDAV routes; routes are kept in a dynamic configuration file Traefik watches.

    Like configurable-http-proxy's, its pid is in ``pid_file``: a Traefik left by a hub that
    was killed is stopped by ``skerry up`` before the next hub starts its own. As with it, a route
    added or deleted is in effect when the call returns (Traefik applies a change some 20-100
    ms after its file is written: the parent class waits for additions, this one for
    deletions too), and paths reach the servers as sent (no cleaning of ``..`` or ``//``:
    each server checks what a path may reach, and refuses what it may not).
    """

    pid_file = Unicode("", config=True, help="where the running Traefik's pid is written")

    @default("dynamic_config")
    def _fresh_dynamic_config(self):
        # routes a killed hub left may lead to servers that are gone, or to no hub yet: the
        # table starts empty, as configurable-http-proxy's does, and the hub adds every route
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dynamic_config_file)
        return super()._load_dynamic_config()

    async def start(self):
        await super().start()
        if self.pid_file:
            with open(self.pid_file, "w") as f:
                f.write(str(self.traefik_process.pid))
        self.log.info("Traefik (pid %s) is the proxy, at %s", self.traefik_process.pid, self.public_url)

    async def delete_route(self, routespec):
        await super().delete_route(routespec)

        async def gone():
            return not await self._check_for_traefik_service(routespec, "router")

        await exponential_backoff(gone, f"Traefik route for {routespec}: not deleted",
                                  scale_factor=1.2, timeout=self.check_route_timeout)

    async def stop(self):
        await super().stop()
        if self.pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pid_file)
