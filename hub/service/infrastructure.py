"""``/services/skerry/api/v1/infrastructure`` and ``endpoints``: micro-infrastructures as
JupyterHub named servers (LOBCDER's infrastructure API, appendix A of its report).

Routes (JSON, hub tokens, errors ``{"error", "message"}``)::

    POST   infrastructure              body: a description (``hub.service.descriptions``) -> 201 the infrastructure
                                       (202 if it is still starting when the wait ends)
    GET    infrastructure              {"infrastructures": [...]}: the caller's running servers and
                                       the ones this API created (running or not)
    DELETE infrastructure/{name}       204: stopped, the named server deleted, its adaptors and
                                       credentials removed
    GET    endpoints/{name}            the infrastructure (its endpoints)

Rules:

- a user acts on their own micro-infrastructures; ``?user=<name>`` lets a token with the
  right scope act for that user (GET: ``read:servers``, DELETE: ``delete:servers``, for
  all users or ``!user=<name>``, as the token's scopes say; admins' full tokens have
  them). Anyone else gets 404 for another
  user's infrastructure: they cannot tell it exists;
- POST checks the whole description first (400 naming the field, nothing stored, nothing
  started); a taken name is 409; then it stores the server's adaptors (their credentials
  encrypted in the user's credential store), asks the hub to start the named server with
  ``{"profile", "options", "free"}``, and polls the hub until it is ready (at most
  ``START_WAIT`` seconds). A refused spawn (403: forbidden profile, quota) is answered
  with the hub's status and message, and nothing is left: the stored adaptors are removed
  and the named server deleted. So is a spawn that failed (500 with the hub's reason);
- no answer holds a secret: credentials are shown as ``"secret": "set"`` and a fingerprint.
"""

import asyncio
import json
import logging
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from skerry.adaptors.store import SERVER_NAME, AccountStore, Conflict, CryptError
from skerry.datadir import DataDir
from skerry.errors import ConfigError
from skerry.hubtokens import grants

from skerry.hub.service import descriptions
from skerry.hub.service.toolkit import API, ApiError, caller, get_accounts, get_hub, in_thread, json_body

log = logging.getLogger("skerry.infrastructure")

START_WAIT = 150.0  # seconds: the spawner's start_timeout (60) + http_timeout (30), and slack
STOP_WAIT = 60.0
MAX_BODY = 64 * 1024  # a description is small
POLL = 0.5


def _q(name: str) -> str:
    return quote(name, safe="")


def _hub_message(r: httpx.Response) -> str:
    try:
        message = r.json().get("message")
    except ValueError:
        message = None
    return message or f"the hub answered {r.status_code}"


def _has_scope(who: dict, scope: str, user: str) -> bool:
    """Whether the token (its scopes as the hub reports them, expanded: an admin's hold
    ``read:servers``) has ``scope`` for all users or for ``user``. The owner's admin flag
    alone is not enough: an admin's token restricted to fewer scopes has only those."""
    return grants(who.get("scopes", ()), {f"{scope}!user={user}"})


class HubServers:
    """The hub calls of this API: users' servers, started, polled and deleted."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def servers(self, user: str, stopped: bool = False) -> dict[str, dict]:
        r = await self.client.get(f"users/{_q(user)}", params={"include_stopped_servers": "1"} if stopped else None)
        if r.status_code == 404:
            return {}
        r.raise_for_status()
        return r.json().get("servers") or {}

    async def server(self, user: str, name: str) -> dict | None:
        r = await self.client.get(f"users/{_q(user)}/servers/{_q(name)}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    async def start(self, user: str, name: str, user_options: dict) -> int:
        """Ask the hub to start the server: its status (201 ready, 202 starting); ApiError if refused."""
        r = await self.client.post(f"users/{_q(user)}/servers/{_q(name)}", json=user_options, timeout=60)
        if r.status_code in (201, 202):
            return r.status_code
        if r.status_code < 500:
            raise ApiError(r.status_code, "spawn_refused", _hub_message(r))
        raise ApiError(500, "spawn_failed", f"The micro-infrastructure {name!r} did not start: {_hub_message(r)}")

    async def wait_ready(self, user: str, name: str, timeout: float) -> dict | None:
        """The server's model once ready; None if still starting at the end; ApiError if it failed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            server = await self.server(user, name)
            if server and server.get("ready"):
                return server
            if not server or not server.get("pending"):
                raise ApiError(500, "spawn_failed", f"The micro-infrastructure {name!r} did not start: "
                                                    f"{await self.failure(user, name)}")
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(POLL)

    async def failure(self, user: str, name: str) -> str:
        """Why the spawn failed, from the hub's progress stream (its last event)."""
        try:
            async with self.client.stream("GET", f"users/{_q(user)}/servers/{_q(name)}/progress",
                                          timeout=5) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        if event.get("failed"):
                            return event.get("message") or "the spawn failed"
        except (httpx.HTTPError, ValueError):
            pass
        return "the spawn failed; the hub log says why"

    async def delete(self, user: str, name: str, timeout: float = STOP_WAIT) -> None:
        """Stop and delete the named server; returns once the hub no longer has it."""
        r = await self.client.request("DELETE", f"users/{_q(user)}/servers/{_q(name)}",
                                      json={"remove": True}, timeout=60)
        if r.status_code not in (202, 204, 404):
            raise ApiError(502, "hub_error", f"The hub could not delete the server {name!r}: {_hub_message(r)}")
        deadline = asyncio.get_running_loop().time() + timeout
        while name in await self.servers(user, stopped=True):
            if asyncio.get_running_loop().time() > deadline:
                raise ApiError(504, "stop_timeout", f"The server {name!r} did not stop in {timeout:.0f} s; "
                                                    "try again.")
            await asyncio.sleep(POLL)
            if r.status_code == 202:  # stopping: it is deleted once stopped, if we ask again
                r = await self.client.request("DELETE", f"users/{_q(user)}/servers/{_q(name)}",
                                              json={"remove": True}, timeout=60)


_CREDENTIAL = {"oneOf": [
    {"type": "string", "description": "the name of one of your stored credentials"},
    {"type": "object", "required": ["kind"], "description": "a credential for this server only: "
     "{kind: password, username?, password} | {kind: ssh-key, private_key} | {kind: s3, key, secret, token?}",
     "properties": {"kind": {"enum": ["password", "ssh-key", "s3"]}}},
]}
_POST_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"},
        "profile": {"type": "string"},
        "options": {"type": "object"},
        "free": {"type": "object"},
        "adaptors": {"type": "array", "items": {"type": "object", "required": ["name", "type"],
                                                "properties": {"credentials": _CREDENTIAL}}},
        "services": {"type": "array", "items": {"enum": list(descriptions.SERVICES)}},
    }}}}}}


router = APIRouter(prefix=API, tags=["infrastructure"])


def pools(data: DataDir, user: str) -> dict[str, str]:
    """The addresses of ``user``'s running Dask clusters."""
    from skerry.workload.userpools import running_clusters

    return running_clusters(data, user)


def servers(hub) -> HubServers:
    return HubServers(hub.client)


def whose(who: dict, user: str | None, scope: str) -> str | None:
    """The user acted for: the caller, or ``user`` if the token has ``scope`` for them;
    None for another user (the caller then gets 404)."""
    if user is None or (who.get("kind") == "user" and user == who.get("name")):
        return who.get("name") if who.get("kind") == "user" else None
    return user if _has_scope(who, scope, user) else None


def not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"There is no micro-infrastructure named {name!r}.")


async def describe(hub, accounts, user: str, name: str, server: dict | None) -> dict:
    s, data = accounts
    try:
        record = await in_thread(s.server, user, name) if name else None
        credentials = await in_thread(s.server_credentials, user, name) if record else {}
    except ConfigError as e:
        raise _store_error(e) from None
    return descriptions.infrastructure(hub.public_url, user, name, server, record, pools(data, user), credentials)


async def one(hub, accounts, user: str, name: str) -> dict:
    if not SERVER_NAME.match(name):
        raise not_found(name)
    server = (await servers(hub).servers(user)).get(name)
    try:
        record = await in_thread(accounts[0].server, user, name)
    except ConfigError as e:
        raise _store_error(e) from None
    if server is None and record is None:
        raise not_found(name)
    return await describe(hub, accounts, user, name, server)


@router.post("/infrastructure", status_code=201, openapi_extra=_POST_BODY)
async def create_infrastructure(request: Request, who: dict = Depends(caller), hub=Depends(get_hub),
                                accounts=Depends(get_accounts)):
    """Create and start a micro-infrastructure (a named server) from a description; 201 once
    it is ready, with its endpoints. 400 names the bad field; 409: the name is taken; a
    refused spawn (403) or a failed one (500) leaves nothing behind."""
    if who.get("kind") != "user":
        raise ApiError(403, "forbidden", "Only users have micro-infrastructures: create one with a user's token.")
    user = who["name"]
    body = await json_body(request, MAX_BODY)
    try:
        described = descriptions.parse(body)
        await in_thread(accounts[0].check_server, user, described.name, described.specs,
                        described.credentials)
    except ConfigError as e:
        raise _store_error(e, "bad_infrastructure") from None
    hub_servers = servers(hub)
    if described.name in await hub_servers.servers(user, stopped=True):
        raise ApiError(409, "name_taken", f"You already have a server named {described.name!r}.")
    try:
        await in_thread(accounts[0].put_server, user, described.name,
                        {"services": described.services, "user_options": described.user_options},
                        described.specs, described.credentials)
    except ConfigError as e:
        raise _store_error(e, "bad_infrastructure") from None
    try:
        status = await hub_servers.start(user, described.name, described.user_options)
        server = await hub_servers.wait_ready(user, described.name, START_WAIT)
    except BaseException:
        await _discard(hub_servers, accounts[0], user, described.name)
        raise
    model = server or await hub_servers.server(user, described.name)  # still starting: as it is now
    answer = await describe(hub, accounts, user, described.name, model)
    return JSONResponse(answer, 201 if server or status == 201 else 202)


@router.get("/infrastructure")
async def list_infrastructure(user: str | None = None, who: dict = Depends(caller), hub=Depends(get_hub),
                              accounts=Depends(get_accounts)):
    """The micro-infrastructures of the caller (or of ``?user=``, with scope ``read:servers``):
    running servers, and those this API created, running or not; with their endpoints."""
    if user is None and who.get("kind") != "user":
        return {"infrastructures": []}
    target = whose(who, user, "read:servers")
    if target is None:
        raise ApiError(404, "not_found", f"There is no user {user!r} whose servers you may see.")
    running = await servers(hub).servers(target)
    try:
        records = await in_thread(accounts[0].servers, target)
    except ConfigError as e:
        raise _store_error(e) from None
    names = sorted(set(running) | set(records))
    return {"infrastructures": [await describe(hub, accounts, target, n, running.get(n)) for n in names]}


@router.get("/endpoints/{name}")
async def endpoints(name: str, user: str | None = None, who: dict = Depends(caller), hub=Depends(get_hub),
                    accounts=Depends(get_accounts)):
    """One micro-infrastructure and its endpoints: the caller's own, or, for a token with
    scope ``read:servers`` (a service, an admin), ``?user=<name>``'s."""
    target = whose(who, user, "read:servers")
    if target is None:
        raise not_found(name)
    return await one(hub, accounts, target, name)


@router.delete("/infrastructure/{name}", status_code=204)
async def delete_infrastructure(name: str, user: str | None = None, who: dict = Depends(caller),
                                hub=Depends(get_hub), accounts=Depends(get_accounts)):
    """Tear down a micro-infrastructure: stop it, delete the named server (its routes go with
    it), remove its adaptors and their credentials. 404 if there is none (or it is not yours)."""
    target = whose(who, user, "delete:servers")
    if target is None:
        raise not_found(name)
    await one(hub, accounts, target, name)  # 404 first
    await servers(hub).delete(target, name)
    try:
        await in_thread(accounts[0].delete_server, target, name)
    except ConfigError as e:
        raise _store_error(e) from None
    return Response(status_code=204)


async def _discard(hub_servers: HubServers, store: AccountStore, user: str, name: str) -> None:
    """Leave nothing of a micro-infrastructure that did not start: the named server, the record."""
    try:
        await asyncio.shield(hub_servers.delete(user, name))
    except Exception:  # the caller gets the spawn's error; this one goes to the service log
        log.exception("deleting the server %s of %s after a failed start failed", name, user)
    finally:
        await in_thread(store.delete_server, user, name)


def _store_error(e: ConfigError, code: str = "bad_store") -> ApiError:
    if isinstance(e, Conflict):
        return ApiError.of(e, code="name_taken")
    if isinstance(e, CryptError) or code == "bad_store":
        return ApiError(500, e.code if isinstance(e, CryptError) else code, e.message)
    return ApiError(400, code, e.message)
