"""``/services/skerry/api/v1/profiles``: the server profiles (:mod:`hub.stores.profiles`) and their audit log.

Routes (JSON, hub tokens, errors ``{"error", "message"}``)::

    GET    profiles                    {"profiles": [...]}  users: the enabled ones they may use;
                                       admins: all, disabled ones too
    POST   profiles                    body: a profile -> 201 the profile (version 1)
    GET    profiles/{slug}             the profile
    PUT    profiles/{slug}             body: the whole profile ("version", if sent, must be the
                                       stored one: 409 otherwise) -> the profile (version + 1)
    DELETE profiles/{slug}             disables it (profiles are never deleted) -> the profile
    POST   profiles/{slug}/enable      -> the profile
    POST   profiles/{slug}/duplicate   body: {"slug": new} -> 201 the copy
    GET    profiles/{slug}/audit       {"audit": [{at, who, action, slug, changes}]}  (admins)

Rules:

- writes and the audit log are for admins (an admin user, or a token with scope
  ``admin:users``); anyone else gets 403 and nothing is written;
- a profile a user may not use (not in its users or groups), or a disabled one, is 404
  for that user, as if it did not exist: its name tells nothing;
- a malformed profile is 400 ``{"error": "bad_profile", "message": "<field path>: sentence"}``
  and nothing is stored; a taken slug is 409.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from skerry.errors import Conflict, NotFound, SkerryError

from skerry.hub.service.toolkit import (API, ApiError, caller, calling, get_profiles, inline_refs, is_admin, json_body,
                                       request_body)
from skerry.hub.stores.profiles import NoSuchProfile, Profile, ProfileError, ProfileStore, allowed

PROFILE_BODY = request_body(inline_refs(Profile.model_json_schema()))
SLUG_BODY = request_body({"type": "object", "required": ["slug"], "additionalProperties": False,
                          "properties": {"slug": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]{0,62}$"}}})


def _refusal(e: SkerryError) -> ApiError:
    """A store error in this API's words: 404 and 409 as they are, anything else a bad profile."""
    if isinstance(e, (NotFound, Conflict)):
        return ApiError.of(e)
    return ApiError(400, ProfileError.code, e.message)


_call = calling(_refusal)  # store calls in a worker thread (SQLite waits)


router = APIRouter(prefix=API, tags=["profiles"])


async def admin(who: dict = Depends(caller)) -> dict:
    if not is_admin(who):
        raise ApiError(403, "forbidden", "Only admins may change profiles or read their audit log.")
    return who


@router.get("/profiles")
async def list_profiles(who: dict = Depends(caller), store: ProfileStore = Depends(get_profiles)):
    """The profiles the caller may use (admins: every profile, disabled ones too)."""
    if is_admin(who):
        return {"profiles": await _call(store.list_profiles)}
    return {"profiles": await _call(store.list_profiles, who.get("name", ""), who.get("groups", []))}


@router.post("/profiles", status_code=201, openapi_extra=PROFILE_BODY)
async def create_profile(request: Request, who: dict = Depends(admin), store: ProfileStore = Depends(get_profiles)):
    """A new profile (admins). 400 ``bad_profile`` names the bad field; 409 if the slug is taken."""
    body = await json_body(request)
    return JSONResponse(await _call(store.create, body, who["name"]), 201)


@router.get("/profiles/{slug}")
async def get_profile(slug: str, who: dict = Depends(caller), store: ProfileStore = Depends(get_profiles)):
    """One profile; 404 for a user who may not use it (or if it is disabled)."""
    found = await _call(store.get, slug)
    if not is_admin(who) and (found["disabled"] or not allowed(found, who.get("name", ""),
                                                                 who.get("groups", []))):
        raise ApiError(404, NoSuchProfile.code, f"No profile named {slug!r}.")
    return found


@router.put("/profiles/{slug}", openapi_extra=PROFILE_BODY)
async def update_profile(slug: str, request: Request, who: dict = Depends(admin),
                         store: ProfileStore = Depends(get_profiles)):
    """Replace the whole profile (admins); a ``version`` in the body must be the stored one (409)."""
    body = await json_body(request)
    version = body.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ApiError(400, ProfileError.code, "version: must be the integer the profile was read with.")
    return await _call(store.update, slug, body, who["name"], version=version)


@router.delete("/profiles/{slug}")
async def disable_profile(slug: str, who: dict = Depends(admin), store: ProfileStore = Depends(get_profiles)):
    """Disable the profile (admins): users no longer see it; it stays for the audit log."""
    return await _call(store.set_disabled, slug, True, who["name"])


@router.post("/profiles/{slug}/enable")
async def enable_profile(slug: str, who: dict = Depends(admin), store: ProfileStore = Depends(get_profiles)):
    """Enable a disabled profile again (admins)."""
    return await _call(store.set_disabled, slug, False, who["name"])


@router.post("/profiles/{slug}/duplicate", status_code=201, openapi_extra=SLUG_BODY)
async def duplicate_profile(slug: str, request: Request, who: dict = Depends(admin),
                            store: ProfileStore = Depends(get_profiles)):
    """A copy under a new slug (admins), enabled, version 1."""
    body = await json_body(request)
    if set(body) != {"slug"} or not isinstance(body["slug"], str):
        raise ApiError(400, ProfileError.code, "slug: send {\"slug\": \"<new slug>\"} and nothing else.")
    return JSONResponse(await _call(store.duplicate, slug, body["slug"], who["name"]), 201)


@router.get("/profiles/{slug}/audit")
async def profile_audit(slug: str, who: dict = Depends(admin), store: ProfileStore = Depends(get_profiles)):
    """Who changed the profile, when, and what (top-level keys, old and new), oldest first (admins)."""
    await _call(store.get, slug)  # 404 for a slug that never existed
    return {"audit": await _call(store.audit, slug)}
