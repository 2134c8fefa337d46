"""``/services/skerry/api/v1/quotas``, ``usage`` and ``metrics``: limits, who used what, Prometheus.

Routes (JSON unless said, hub tokens, errors ``{"error", "message"}``)::

    GET    quotas                   {"users": [...], "groups": [...]}: admins all; a user the
                                    quota of their own and of their groups
    GET    quotas/users/{name}      {"kind", "name", "quota", "updated", "updated_by"}; 404 if none
    PUT    quotas/users/{name}      body: {"servers"?, "cpu"?, "memory"?, "gpus"?, "queued_jobs"?}
                                    (absent = unlimited; replaces the quota) -> the quota
    DELETE quotas/users/{name}      204: unlimited again
    GET|PUT|DELETE quotas/groups/{name}   the same for a JupyterHub group (the sum over its members)
    GET    usage?by=user|group&days=N   {"by", "days", "rows": [...]}: per user (or group) and UTC
                                    day (``hub.stores.quotas.QuotaStore.report``); admins all rows, a user
                                    their own (by=group: the groups they are in)
    GET    metrics                  Prometheus text (``hub.service.metrics``); admins, or a token with
                                    scope ``read:metrics`` (members of the hub group ``metrics``)

Rules:

- writes are for admins (an admin user, or a token with scope ``admin:users``); a user may
  read their own quota and their groups' quotas; anything else is 403, nothing written;
- a malformed quota is 400 ``{"error": "bad_quota", "message": "<field>: sentence"}`` and
  nothing is stored (the old quota stays);
- usage rows: ``servers``, ``server_hours``, ``cpu_seconds``, ``gpu_seconds`` from the
  sessions the spawner records, ``jobs`` created that day from the catalog (a job's owner
  is its run's), ``stored_bytes`` measured now on today's row: ``home`` in bytes (``du``
  of ``DIR/users/<user>``), other adaptors ``"not measured"`` (``hub.stores.usage``).
"""


from fastapi import APIRouter, Depends, Request, Response

from skerry import config
from skerry.adaptors.store import AccountStore
from skerry.datadir import DataDir
from skerry.errors import NotFound, SkerryError

from skerry.hub.stores import usage
from skerry.hub.service.toolkit import (API, ApiError, caller, calling, get_catalog, get_hub, get_profiles, get_quotas,
                                       inline_refs, is_admin, json_body, request_body)
from skerry.hub.service.hubapi import every_item
from skerry.hub.service.metrics import CONTENT_TYPE, Snapshot, render
from skerry.hub.stores.quotas import KINDS, MAX_DAYS, Quota, QuotaError, QuotaStore

QUOTA_BODY = request_body(inline_refs(Quota.model_json_schema()))
METRICS_SCOPE = "read:metrics"


def _refusal(e: SkerryError) -> ApiError:
    """A store error in this API's words: 404 as it is, anything else a bad quota."""
    if isinstance(e, NotFound):
        return ApiError.of(e)
    return ApiError(400, QuotaError.code, e.message)


_call = calling(_refusal)  # store calls in a worker thread (SQLite waits, folder walks)


def _data_dir() -> str:
    return str(config.DATA_DIR.require())


def _other_adaptors(users: list[str]) -> dict[str, list[str]]:
    """Each user's stored adaptor names (unreadable stores: none)."""
    store = AccountStore.for_data_dir(DataDir(_data_dir()))
    out = {}
    for user in users:
        try:
            out[user] = [spec["name"] for spec in store.adaptors(user)]
        except (SkerryError, OSError, KeyError, TypeError):
            out[user] = []
    return out


def _report(store: QuotaStore, catalog, by: str, days: int, users: list[str] | None,
            members: dict[str, list[str]] | None) -> list[dict]:
    """The usage rows (``users``: whose stored bytes to measure; None: every home folder)."""
    from datetime import UTC, datetime, timedelta

    first = datetime.fromtimestamp(store.clock(), UTC).date() - timedelta(days=days - 1)
    jobs = usage.job_counts(catalog, first)
    if users is None:
        homes = DataDir(_data_dir()).users
        users = sorted(p.name for p in homes.iterdir() if p.is_dir()) if homes.is_dir() else []
    stored = usage.stored_bytes(_data_dir(), users, _other_adaptors(users))
    return store.report(by, days, jobs=jobs, stored=stored, members=members)


router = APIRouter(prefix=API, tags=["quotas and usage"])


async def admin(who: dict = Depends(caller)) -> dict:
    if not is_admin(who):
        raise ApiError(403, "forbidden", "Only admins may change quotas.")
    return who


def may_read(who: dict, kind: str, name: str) -> bool:
    if is_admin(who):
        return True
    if who.get("kind") != "user":
        return False
    return who.get("name") == name if kind == "user" else name in who.get("groups", [])


@router.get("/quotas")
async def list_quotas(who: dict = Depends(caller), store: QuotaStore = Depends(get_quotas)):
    """Every quota (admins); a user: their own and their groups' (no entry: unlimited)."""
    found = await _call(store.quotas)
    if is_admin(who):
        return found
    return {"users": [q for q in found["users"] if may_read(who, "user", q["name"])],
            "groups": [q for q in found["groups"] if may_read(who, "group", q["name"])]}


def _quota_routes(kind: str) -> None:
    """GET, PUT and DELETE ``quotas/{kind}s/{name}``: one set of handlers per kind of quota."""
    path = f"/quotas/{kind}s/{{name}}"

    @router.get(path, name=f"get_{kind}_quota")
    async def get_quota(name: str, who: dict = Depends(caller), store: QuotaStore = Depends(get_quotas)):
        if not may_read(who, kind, name):
            raise ApiError(403, "forbidden", f"Only admins may read the quota of another {kind}.")
        return await _call(store.get_quota, kind, name)

    @router.put(path, name=f"set_{kind}_quota", openapi_extra=QUOTA_BODY)
    async def set_quota(name: str, request: Request, who: dict = Depends(admin),
                        store: QuotaStore = Depends(get_quotas)):
        body = await json_body(request)
        return await _call(store.set_quota, kind, name, body, who["name"])

    @router.delete(path, name=f"delete_{kind}_quota", status_code=204)
    async def delete_quota(name: str, who: dict = Depends(admin), store: QuotaStore = Depends(get_quotas)):
        await _call(store.delete_quota, kind, name)
        return Response(status_code=204)

    readers = "that user" if kind == "user" else "its members"
    get_quota.__doc__ = f"The quota of a {kind} (admins, or {readers})."
    set_quota.__doc__ = f"Set (replace) the quota of a {kind} (admins); 400 ``bad_quota`` names the field."
    delete_quota.__doc__ = f"Remove the quota of a {kind} (admins): unlimited again."


for _kind in KINDS:
    _quota_routes(_kind)


@router.get("/usage")
async def get_usage(by: str = "user", days: str = "30", who: dict = Depends(caller),
                    store: QuotaStore = Depends(get_quotas), catalog=Depends(get_catalog),
                    hub=Depends(get_hub)):
    """Usage per user (``by=user``) or group and UTC day over the last ``days`` days
    (admins: everyone's rows; a user: their own, or their groups')."""
    if by not in KINDS:
        raise ApiError(400, QuotaError.code, f"by: 'user' or 'group', not {by!r}.")
    if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
        raise ApiError(400, QuotaError.code, f"days: a whole number from 1 to {MAX_DAYS}, not {days!r}.")
    admin_ = is_admin(who)
    if not admin_ and who.get("kind") != "user":
        raise ApiError(403, "forbidden", "Only admins and users may read usage.")
    members = None
    if by == "group":
        # each user's groups now (the service may list users, not groups)
        members = {u["name"]: u.get("groups", []) for u in await every_item(hub.client, "users")}
    users = None if admin_ else [who["name"]]
    rows = await _call(_report, store, catalog, by, int(days), users, members)
    if not admin_:
        mine = {who["name"]} if by == "user" else set(who.get("groups", []))
        rows = [r for r in rows if r[by] in mine]
    return {"by": by, "days": int(days), "rows": rows}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
async def metrics(who: dict = Depends(caller), store: QuotaStore = Depends(get_quotas),
                  catalog=Depends(get_catalog), profiles=Depends(get_profiles), hub=Depends(get_hub)):
    """Prometheus metrics (``hub.service.metrics``): admins, or a token with scope ``read:metrics``."""
    if not is_admin(who) and METRICS_SCOPE not in who.get("scopes", []):
        raise ApiError(403, "forbidden", f"Only admins and tokens with scope {METRICS_SCOPE!r} may read metrics.")
    servers = {}
    for user in await every_item(hub.client, "users", {"state": "active"}):
        servers[user["name"]] = len(user.get("servers") or {})

    def gather() -> Snapshot:
        listed = profiles.list_profiles()
        disabled = sum(1 for p in listed if p["disabled"])
        quotas = store.quotas()
        return Snapshot(servers=servers, jobs=usage.jobs_by_state(catalog),
                        jobs_created=usage.jobs_by_owner(catalog), totals=store.totals(),
                        profiles=(len(listed) - disabled, disabled),
                        quotas=(len(quotas["users"]), len(quotas["groups"])))

    return Response(render(await _call(gather)), media_type=CONTENT_TYPE)
