"""The skerry hub service at ``/services/skerry/``: the platform's REST API.

A JupyterHub-managed service (FastAPI + uvicorn), started and stopped with the hub
(``python -m skerry.hub.service.app``). Callers authenticate with their hub tokens
(``Authorization: token ...``), checked with the hub (``skerry.hubtokens``). Errors are JSON
``{"error": CODE, "message": sentence}``. The OpenAPI document is at
``/services/skerry/api/v1/openapi.json``.

It also answers ``/dav/<name>/...`` for servers that are not running (the proxy
sends those here once the server's own WebDAV route is gone): 503 and a sentence.

Micro-infrastructures (named servers: create, list, delete, endpoints): ``infrastructure``.
Each user's adaptors, credentials and JWT keys: ``users`` (``/api/v1/users/{name}/...``).
Datasets, modules, workflows, runs, tasks and jobs: ``workload``, over the catalog
``DIR/catalog.sqlite`` (migrated to the newest schema when the service starts).
Server profiles and their audit log: ``profiles``, over ``DIR/profiles.sqlite``.
Quotas, usage and metrics: ``quotas``; users' Dask clusters: ``clusters``.
Each of those modules holds a ``router`` of module-level handlers; what they share (the
dependencies, errors, bodies, threads) is ``toolkit``; ``Services`` below is what the
dependencies ask for.
"""

import asyncio
import contextlib
import sys
from urllib.parse import quote, urlparse

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from skerry.process import die_with_parent

from skerry.adaptors.store import SERVER_NAME, AccountStore
from skerry.datadir import DataDir
from skerry.hubtokens import HubTokens

from skerry.hub.service import clusters, culler, infrastructure, profiles, quotas, users, workload
from skerry.hub.service.toolkit import API, PREFIX, ApiError, error_response, in_thread  # noqa: F401 - PREFIX
from skerry.hub.service.workload import open_catalog
from skerry.hub.stores.profiles import ProfileStore
from skerry.hub.stores.quotas import shared_store
from skerry import config

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000/"  # a service started without skerry up (tests)

ROUTES = (infrastructure, clusters, users, workload, profiles, quotas)  # each module's ``router``


class Hub:
    """What the service needs from the hub: who a token belongs to, and users' servers."""

    def __init__(self):
        self.tokens = HubTokens.from_env()
        self.public_url = (config.PUBLIC_URL.get() or DEFAULT_PUBLIC_URL).rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=config.HUB_API_URL.require().rstrip("/") + "/",
            headers={"Authorization": f"token {config.HUB_API_TOKEN.require()}"},
            timeout=10,
        )

    async def caller(self, request: Request) -> dict:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            raise ApiError(401, "unauthenticated", "Send your hub token as 'Authorization: token <token>'.")
        try:  # a token seen in the last seconds is answered here, without a trip to a thread
            model = self.tokens.kept(token.strip()) or await in_thread(self.tokens.user_for_token, token.strip())
        except (OSError, ValueError):
            raise ApiError(503, "hub_unavailable", "The hub could not check your token; try again.") from None
        if not model:
            raise ApiError(401, "invalid_token", "This token is not valid (expired or revoked?).")
        return model

    async def user(self, name: str) -> dict:
        r = await self.client.get(f"users/{quote(name, safe='')}")
        if r.status_code == 404:
            raise ApiError(404, "no_such_user", f"There is no user {name!r}.")
        r.raise_for_status()
        return r.json()


class Services:
    """The service's long-lived parts, each made on first use (the toolkit's dependencies ask here)."""

    def __init__(self, hub: Hub | None = None, catalog=None, profiles: ProfileStore | None = None):
        self._parts = {name: part for name, part in (("hub", hub), ("catalog", catalog), ("profiles", profiles))
                       if part is not None}

    def made(self, name: str):
        """The part ``name`` if it is made, else None (nothing is made)."""
        return self._parts.get(name)

    def _part(self, name: str, make):
        if name not in self._parts:
            self._parts[name] = make()
        return self._parts[name]

    def hub(self) -> Hub:
        return self._part("hub", Hub)

    def catalog(self):
        return self._part("catalog", lambda: open_catalog(config.DATA_DIR.require()))

    def profiles(self) -> ProfileStore:
        return self._part("profiles", lambda: ProfileStore.for_data_dir(config.DATA_DIR.require()))

    def quotas(self):
        return self._part("quotas", shared_store)

    def accounts(self) -> tuple[AccountStore, DataDir]:
        def make():
            data = DataDir(config.DATA_DIR.require())
            return AccountStore.for_data_dir(data), data

        return self._part("accounts", make)


def create_app(hub: Hub | None = None, catalog=None, profiles: ProfileStore | None = None) -> FastAPI:
    app = FastAPI(
        title="skerry",
        version="1",
        description=("The skerry platform API: micro-infrastructures, and each user's adaptors, credentials "
                     "and JWT keys (adaptor changes apply at the next start of the user's server); the "
                     "catalog's datasets and files, modules, workflows, runs, tasks and jobs."),
        openapi_url=API + "/openapi.json",
        docs_url=API + "/docs",
        redoc_url=None,
    )
    app.state.services = services = Services(hub, catalog, profiles)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        # the traceback goes to the service log; the caller gets JSON, never the exception text
        return error_response(ApiError(500, "internal_error",
                                       "The skerry service failed on this request; its log says why."))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(ApiError(400, "bad_request", f"{where}: {first.get('msg', 'invalid')}"))

    for module in ROUTES:
        app.include_router(module.router)

    @app.api_route("/dav/{rest:path}", methods=["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS",
                                             "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE",
                                             "LOCK", "UNLOCK"], include_in_schema=False)
    async def dav_not_running(rest: str):
        # /dav/<name>/... of a stopped default server, or /dav/<name>/<server>/... of a stopped
        # named one (its route is parked here: hub.plugins.proxy)
        name, _, inner = rest.partition("/")
        server = inner.partition("/")[0]
        hub = services.hub()
        stopped = repr(name)
        if server and SERVER_NAME.match(server):
            with contextlib.suppress(httpx.HTTPError):  # the hub did not answer: the default wording
                if server in await infrastructure.servers(hub).servers(name, stopped=True):
                    stopped = f"{name}'s server {server!r}"
        message = (f"The WebDAV endpoint of {stopped} is not running. Start the server at "
                   f"{hub.public_url}/hub/home and try again.")
        return JSONResponse({"error": "server_not_running", "message": message}, 503,
                            headers={"Retry-After": "10"})

    return app


def main() -> int:
    import uvicorn
    import uvloop

    die_with_parent()  # a hub killed with SIGKILL must not leave its service holding the port
    url = urlparse(config.HUB_SERVICE_URL.require())
    catalog = open_catalog(config.DATA_DIR.require())  # migrated before the first request
    # httptools and uvloop: parsing a request and handing work to and from threads in C
    server = uvicorn.Config(create_app(catalog=catalog), host=url.hostname, port=url.port, log_level="warning",
                            http="httptools")
    # idle servers stopped beside the API; the hub stops its services with SIGINT, which uvicorn
    # raises again once shut down (as uvicorn.run, nothing to report)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(culler.beside(uvicorn.Server(server).serve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
