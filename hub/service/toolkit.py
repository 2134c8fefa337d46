"""What every route module of the skerry service shares: errors, bodies, threads, schemas.

- ``ApiError`` (from ``skerry.errors``): what a route raises to refuse; a skerry error
  from below becomes one with ``ApiError.of(e)`` (its own status and code) or through
  ``calling``; ``error_response`` is the one place an error becomes an HTTP answer,
  ``{"error": e.code, "message": e.message}`` with ``e.status`` (the app registers it
  for ``ApiError``; any other exception that gets that far is a bare 500);
- ``in_thread``: the one way a route runs blocking work (SQLite, the file system, a
  socket) without holding up the event loop; ``calling(refusal)`` is the same with the
  module's own names for the skerry errors that come out of it;
- ``json_body``: the request body as a JSON object, read as a stream and refused with
  413 as soon as it passes its limit (a larger body is never held in memory);
- ``request_body``, ``json_object``, ``inline_refs``: the OpenAPI ``requestBody`` of a
  route that reads its body itself;
- ``is_admin``: the caller is an admin user, or holds a token with scope ``admin:users``;
- the dependencies of every route: ``caller`` (the hub's model of the request's token),
  ``get_hub``, ``get_catalog``, ``get_profiles``, ``get_quotas``, ``get_accounts``; they
  ask the app's ``app.state.services`` (``app.Services``), so route modules hold
  module-level handlers on their ``router`` and know nothing of how the app is made.

Rules: route modules import these from here, never each other's private names; every
route and dependency is ``async`` (FastAPI would run a plain ``def`` in a worker thread).
"""

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from skerry.errors import ApiError, SkerryError

__all__ = ["API", "ApiError", "MAX_BODY", "PREFIX", "caller", "calling", "error_response", "get_accounts",
           "get_catalog", "get_hub", "get_profiles", "get_quotas", "in_thread", "inline_refs", "is_admin",
           "json_body", "json_object", "request_body", "sentence"]

PREFIX = "/services/skerry"
API = PREFIX + "/api/v1"
MAX_BODY = 1024 * 1024  # specs and small requests


# ---- the dependencies of every route ------------------------------------------------
# each is ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, a trip of
# 0.5-1 ms per dependency per request on a busy machine


async def get_hub(request: Request):
    """The hub (``app.Hub``): who a token belongs to, users and their servers."""
    return await _part(request, "hub")


async def caller(request: Request) -> dict:
    """The hub's model of the request's token (401 without a valid one)."""
    return await (await get_hub(request)).caller(request)


async def get_catalog(request: Request):
    """The platform's catalog (``skerry.workload.catalog.Catalog``)."""
    return await _part(request, "catalog")


async def get_profiles(request: Request):
    """The server profiles (``hub.stores.profiles.ProfileStore``)."""
    return await _part(request, "profiles")


async def get_quotas(request: Request):
    """The quotas and usage (``hub.stores.quotas.QuotaStore``)."""
    return await _part(request, "quotas")


async def get_accounts(request: Request):
    """``(AccountStore, DataDir)``: users' adaptors, credentials and keys, and the data dir."""
    return await _part(request, "accounts")


async def _part(request: Request, name: str):
    """The app's part ``name`` (``app.Services``): at once when it is made, else made in a
    worker thread (the first use opens its files)."""
    services = request.app.state.services
    part = services.made(name)
    return part if part is not None else await in_thread(getattr(services, name))


def error_response(e: SkerryError) -> JSONResponse:
    """The answer to a skerry error: its status, code and sentence (401s say how to log in)."""
    headers = {"WWW-Authenticate": "token"} if e.status == 401 else None
    return JSONResponse({"error": e.code, "message": e.message}, e.status, headers=headers)


def sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a full stop."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!", ")")) else text + "."


def is_admin(who: dict) -> bool:
    return bool(who.get("admin")) or "admin:users" in who.get("scopes", [])


async def in_thread(fn: Callable, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread; its errors pass through unchanged."""
    return await run_in_threadpool(fn, *args, **kwargs)


def calling(refusal: Callable[[SkerryError], SkerryError]) -> Callable[..., Awaitable[Any]]:
    """An ``in_thread`` whose skerry errors come out as ``refusal(e)``: a route module's own codes."""

    async def call(fn: Callable, *args, **kwargs) -> Any:
        try:
            return await in_thread(fn, *args, **kwargs)
        except ApiError:
            raise  # already an answer
        except SkerryError as e:
            raise refusal(e) from None

    return call


async def json_body(request: Request, limit: int = MAX_BODY) -> dict:
    """The body as a JSON object; 413 past ``limit`` bytes (read no further), 400 if not JSON."""
    too_large = ApiError(413, "too_large", f"The body is larger than {_size(limit)}.")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except ValueError:
        raise ApiError(400, "bad_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "The body must be a JSON object.")
    return data


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


# ---- OpenAPI of routes that read their body themselves ------------------------------


def request_body(schema: dict) -> dict:
    """The OpenAPI ``requestBody`` of a route that reads its JSON itself (size cap, clear errors)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def json_object(required: list[str], **properties) -> dict:
    """The JSON schema of an object with these ``properties`` and no others."""
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


def inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its ``$defs`` put in place (refs in OpenAPI are document-wide)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)
