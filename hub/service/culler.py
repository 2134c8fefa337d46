"""Idle servers stopped, each after its own profile's ``idle_timeout_s``.

A task of the skerry service process (:func:`beside` runs it next to the API's uvicorn),
deciding idleness as jupyterhub-idle-culler does: every :data:`INTERVAL_S` seconds
(``$SKERRY_CULL_INTERVAL`` overrides it) it reads ``GET /hub/api/users?state=ready`` and
stops each ready server idle for longer than its timeout.

Rules:

- idle time: now minus the server's ``last_activity`` in the hub (``started`` if the hub
  has none yet); the hub updates it from the proxy's traffic and the server's own reports;
- the timeout is the ``idle_timeout_s`` of the profile snapshot the server started with
  (its spawner state, ``state["profile"]``, which the service reads with the
  ``admin:server_state`` scope); no profile, or 0: never stopped;
- pending servers (starting, stopping) are left alone; a named server is stopped, not
  deleted (its micro-infrastructure record stays, as the culler's default does);
- each stop is logged (``skerry.culler``, the service's log: the hub log) with the user,
  the server, its profile, how long it was idle and its timeout; a pass that fails (hub
  unreachable) is logged and the next pass tries again.
"""

import asyncio
import logging
import sys
from datetime import datetime, UTC
from urllib.parse import quote

import httpx

from skerry import config
from skerry.errors import ConfigError
from skerry.hub.service.hubapi import every_item

INTERVAL_S = config.CULL_INTERVAL.default

log = logging.getLogger("skerry.culler")


def interval() -> float:
    """Seconds between passes: ``$SKERRY_CULL_INTERVAL`` if a positive number, else INTERVAL_S
    (a bad value is logged)."""
    try:
        return config.CULL_INTERVAL.get()
    except ConfigError as e:  # a typo must not stop the culler: it says so and keeps the default
        log.warning("%s; checking every %s s", e, INTERVAL_S)
        return INTERVAL_S


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def timeout_of(server: dict) -> int:
    """The server's idle timeout in seconds (0: never), from its profile snapshot."""
    profile = (server.get("state") or {}).get("profile") or {}
    return int(profile.get("idle_timeout_s") or 0)


def idle_servers(users: list[dict], now: datetime) -> list[dict]:
    """The servers of ``users`` (hub user models, with state) to stop at ``now``: for each,
    ``user``, ``server`` (name, "" for the default one), ``profile`` (slug), ``idle_s``, ``timeout_s``."""
    out = []
    for user in users:
        for name, server in sorted((user.get("servers") or {}).items()):
            timeout = timeout_of(server)
            since = _time(server.get("last_activity")) or _time(server.get("started"))
            if not timeout or not server.get("ready") or server.get("pending") or since is None:
                continue
            idle = (now - since).total_seconds()
            if idle > timeout:
                out.append({"user": user["name"], "server": name, "idle_s": round(idle, 1), "timeout_s": timeout,
                            "profile": ((server.get("state") or {}).get("profile") or {}).get("slug")})
    return out


async def cull_once(client: httpx.AsyncClient, now: datetime | None = None) -> list[dict]:
    """One pass: stop each idle server (as :func:`idle_servers` says), log why; the ones stopped."""
    now = now or datetime.now(UTC)
    stopped = []
    for idle in idle_servers(await every_item(client, "users", {"state": "ready"}), now):
        user, name = quote(idle["user"], safe=""), quote(idle["server"], safe="")
        r = await client.delete(f"users/{user}/servers/{name}" if name else f"users/{user}/server")
        where = f"{idle['user']}/{idle['server']}" if idle["server"] else f"{idle['user']}'s default server"
        if r.status_code in (202, 204):
            log.info("stopped %s: idle for %.1f s, over the %d s idle timeout of its profile %r",
                     where, idle["idle_s"], idle["timeout_s"], idle["profile"])
            stopped.append(idle)
        else:  # stopped meanwhile by its user, or refused: the next pass sees it again if still running
            log.warning("could not stop idle %s: the hub answered %d", where, r.status_code)
    return stopped


def _client() -> httpx.AsyncClient:
    """A client of the hub's REST API with this service's token (the hub's service environment)."""
    return httpx.AsyncClient(base_url=config.HUB_API_URL.require().rstrip("/") + "/",
                             headers={"Authorization": f"token {config.HUB_API_TOKEN.require()}"},
                             timeout=30)


async def run(every: float | None = None) -> None:
    """Pass after pass, ``every`` seconds apart (default :func:`interval`), until cancelled."""
    every = every or interval()
    async with _client() as client:
        while True:
            await asyncio.sleep(every)
            try:
                await cull_once(client)
            except (httpx.HTTPError, ValueError, KeyError) as e:
                log.warning("idle check failed (%s: %s); trying again in %g s", type(e).__name__, e, every)


def _log_to_stderr() -> None:
    if not log.handlers:  # the service's stderr is the hub log
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname).1s %(asctime)s %(name)s] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


async def beside(main) -> None:
    """Await the coroutine ``main`` (the service's uvicorn) with the culler running; stop it after."""
    _log_to_stderr()
    task = asyncio.create_task(run())
    try:
        await main
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
