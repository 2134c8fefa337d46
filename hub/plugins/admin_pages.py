"""Admin pages in the hub's own UI (its templates and style): profiles and usage.

Routes, under the hub's prefix (``/hub/``)::

    GET  skerry/profiles                        every profile, and the running servers with the
                                                profile and version each started with
    GET  skerry/profiles/new, POST              a new profile
    GET  skerry/profiles/<slug>, POST           edit a profile
    POST skerry/profiles/<slug>/disable|enable  (then back to the list)
    POST skerry/profiles/<slug>/duplicate       field ``new_slug`` (then the copy's edit page)
    GET  skerry/profiles/<slug>/audit           who changed the profile, when, and what
    GET  skerry/usage?by=user|group&days=30     usage per user or group and day: servers, server-hours,
                                                CPU- and GPU-seconds, jobs, stored bytes (hub.stores.quotas)

Rules:

- admins only: the caller needs the unfiltered scope ``admin:users`` (as the REST API's
  writes do); anyone else gets 403 (JupyterHub's error page), someone not logged in the login page;
- forms carry JupyterHub's ``_xsrf`` field, as its own forms do;
- a submitted profile is validated by the :class:`~skerry.hub.stores.profiles.ProfileStore`; a refusal
  (400) shows its message beside the field it names, with what the admin typed kept, and
  nothing is saved; the form carries the version it was read with, and a profile changed
  meanwhile is refused (409) with a sentence above the form, what was typed kept (the form
  then carries the newest version: saving again replaces the other change, knowingly);
- every write is recorded in the profile's audit log under the admin's name;
- a profile slugged ``new`` cannot be edited here (its URL is the new-profile form): use REST.

The store is ``DATA_DIR/profiles.sqlite`` (``SKERRY_DATA_DIR``), the one the service's REST
API uses; its calls run in worker threads so that SQLite waits never hold up the hub.
"""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from jupyterhub import orm
from jupyterhub.handlers import BaseHandler
from sqlalchemy.exc import SQLAlchemyError
from tornado import web

from skerry.errors import SkerryError
from skerry.workload.catalog import Catalog

from skerry.hub.stores import usage
from skerry.hub.plugins.profile_form import SECTIONS, field_of, form_values, profile_from_form
from skerry.hub.stores.profiles import SLUG, NoSuchProfile, ProfileConflict, ProfileError, ProfileStore
from skerry.hub.stores.quotas import QuotaStore, size

TEMPLATES = Path(__file__).resolve().parent / "templates"
ADMIN_SCOPE = "admin:users"
ACTIONS = {"disable": "disabled", "enable": "enabled", "duplicate": "duplicated"}
_stores: dict[str, ProfileStore] = {}


def handlers(data_dir: str | Path) -> list[tuple]:
    """``JupyterHub.extra_handlers`` for the pages, over the stores of ``data_dir``."""
    slug = SLUG.strip("^$")
    kwargs = {"data_dir": str(data_dir)}
    return [
        (r"/skerry/profiles", ProfilesPage, kwargs),
        (r"/skerry/profiles/new", ProfileEditPage, kwargs),
        (rf"/skerry/profiles/({slug})", ProfileEditPage, kwargs),
        (rf"/skerry/profiles/({slug})/(disable|enable|duplicate)", ProfileAction, kwargs),
        (rf"/skerry/profiles/({slug})/audit", ProfileAuditPage, kwargs),
        (r"/skerry/usage", UsagePage, kwargs),
    ]


class AdminPage(BaseHandler):
    """A page for admins only; ``store()`` is the profile store."""

    def initialize(self, data_dir: str):
        self.data_dir = data_dir

    async def prepare(self):
        await super().prepare()
        # "admin:users" unfiltered (a filtered one reads "admin:users!group=...")
        if self.current_user is not None and ADMIN_SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, "Only admins may see or change profiles and usage.")

    def store(self) -> ProfileStore:
        if self.data_dir not in _stores:
            _stores[self.data_dir] = ProfileStore.for_data_dir(self.data_dir)
        return _stores[self.data_dir]

    async def call(self, fn, *args, **kwargs):
        """``fn`` in a worker thread (SQLite may wait for a writer)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def url(self, *parts: str, **query) -> str:
        path = self.hub.base_url + "/".join(("skerry", *parts))
        return path + ("?" + urlencode(query) if query else "")

    async def page(self, template: str, status: int = 200, **ns) -> None:
        self.set_status(status)
        self.finish(await self.render_template(template, skerry_url=self.url, **ns))


class ProfilesPage(AdminPage):
    """Every profile with its buttons, and the running servers' profiles."""

    @web.authenticated
    async def get(self):
        did, slug = self.get_argument("did", ""), self.get_argument("slug", "")
        await list_page(self, done=f"Profile {slug} {ACTIONS[did]}." if did in ACTIONS and slug else "")


async def list_page(handler: AdminPage, status: int = 200, error: str = "", done: str = "") -> None:
    profiles = await handler.call(handler.store().list_profiles)
    await handler.page("skerry-profiles.html", status, profiles=profiles, servers=running_servers(handler),
                       done=done, error=error)


def running_servers(handler: BaseHandler) -> list[dict]:
    """Each active server (of the users loaded in the hub: every user with a server is) with
    the profile it started with (``spawner.profile``, kept in its state; None: none)."""
    rows = []
    for user in sorted(handler.users.values(), key=lambda u: u.name):
        for name, spawner in sorted(user.spawners.items()):
            if spawner.active:
                rows.append({"user": user.name, "server": name, "state": spawner.pending or "ready",
                             "profile": getattr(spawner, "profile", None) or None})
    return rows


class ProfileEditPage(AdminPage):
    """The form of a new profile (no slug) or of a stored one."""

    @web.authenticated
    async def get(self, slug: str | None = None):
        if slug is None:
            return await self.show(None, form_values({"resources": {"gpus": 0}, "access": {"everyone": False}}))
        profile = await self.stored(slug)
        await self.show(profile, form_values(profile), saved=self.get_argument("saved", "") == "1")

    @web.authenticated
    async def post(self, slug: str | None = None):
        values = {path: self.get_body_argument(path, "") for _, fields in SECTIONS for path in
                  (f.path for f in fields)}
        who = self.current_user.name
        profile = None if slug is None else await self.stored(slug)
        try:
            if slug is None:
                new_slug = self.get_body_argument("slug", "").strip()
                values["slug"] = new_slug
                data = profile_from_form(values, new_slug)
                saved = await self.call(self.store().create, data, who)
            else:
                version = self.get_body_argument("version", "")
                data = profile_from_form(values, slug)
                saved = await self.call(self.store().update, slug, data, who,
                                        version=int(version) if version.isdigit() else None)
        except ProfileConflict as e:
            return await self.show(profile, values, status=409, error=e.message)
        except ProfileError as e:
            field = field_of(e.message)
            errors = {field: e.message} if field else {}
            return await self.show(profile, values, status=400, error="" if field else e.message, errors=errors)
        self.redirect(self.url("profiles", saved["slug"], saved="1"), status=303)

    async def stored(self, slug: str) -> dict:
        try:
            return await self.call(self.store().get, slug)
        except NoSuchProfile as e:
            raise web.HTTPError(404, e.message) from None

    async def show(self, profile: dict | None, values: dict, status: int = 200, error: str = "",
                   errors: dict | None = None, saved: bool = False) -> None:
        await self.page("skerry-profile-edit.html", status, profile=profile, values=values, sections=SECTIONS,
                        errors=errors or {}, error=error, saved=saved)


class ProfileAction(AdminPage):
    """Disable, enable or duplicate, then back to the list (errors shown there)."""

    @web.authenticated
    async def post(self, slug: str, action: str):
        who, store = self.current_user.name, self.store()
        try:
            if action == "duplicate":
                copy = await self.call(store.duplicate, slug, self.get_body_argument("new_slug", "").strip(), who)
                return self.redirect(self.url("profiles", copy["slug"]), status=303)
            await self.call(store.set_disabled, slug, action == "disable", who)
        except NoSuchProfile as e:
            raise web.HTTPError(404, e.message) from None
        except SkerryError as e:
            status = 409 if isinstance(e, ProfileConflict) else 400
            return await list_page(self, status, error=f"Cannot {action} {slug}: {e.message}")
        self.redirect(self.url("profiles", did=action, slug=slug), status=303)


class ProfileAuditPage(AdminPage):
    """The audit log of one profile, newest first."""

    @web.authenticated
    async def get(self, slug: str):
        try:
            profile = await self.call(self.store().get, slug)
        except NoSuchProfile as e:
            raise web.HTTPError(404, e.message) from None
        entries = list(reversed(await self.call(self.store().audit, slug)))
        for entry in entries:
            entry["shown"] = {key: {side: json.dumps(change[side]) for side in ("old", "new")}
                              for key, change in entry["changes"].items()}
        await self.page("skerry-profile-audit.html", profile=profile, entries=entries)


class UsagePage(AdminPage):
    """Usage per user or per group and day (``QuotaStore.report``, with jobs and stored bytes)."""

    @web.authenticated
    async def get(self):
        by = self.get_argument("by", "user")
        if by not in ("user", "group"):
            raise web.HTTPError(400, "by: must be user or group.")
        days = self.get_argument("days", "30")
        if not days.isdigit() or not 1 <= int(days) <= 366:
            raise web.HTTPError(400, "days: must be a whole number of days from 1 to 366.")
        # group memberships now, from the hub's own database
        members = {u.name: sorted(g.name for g in u.groups) for u in self.db.query(orm.User)}
        rows = await self.call(usage_report, self.data_dir, by, int(days), members)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        shown = [{c: _cell(row.get(c)) for c in columns} for row in rows]
        await self.page("skerry-usage.html", rows=shown, columns=columns, by=by, days=int(days))


def usage_report(data_dir: str, by: str, days: int, members: dict[str, list[str]]) -> list[dict]:
    """The quota store's rows, with job counts from the catalog (None if it cannot be read)
    and the stored bytes of each user's home measured now."""
    store = QuotaStore.for_data_dir(data_dir)
    try:
        first = datetime.fromtimestamp(store.clock(), UTC).date() - timedelta(days=days - 1)
        jobs = None
        if (Path(data_dir) / "catalog.sqlite").exists():
            catalog = Catalog.for_data_dir(data_dir)
            try:
                jobs = usage.job_counts(catalog, first)
            except SQLAlchemyError:  # not migrated yet: the service does it when it starts
                jobs = None
            finally:
                catalog.dispose()
        stored = usage.stored_bytes(data_dir, list(members))
        return store.report(by, days, jobs=jobs, stored=stored, members=members)
    finally:
        store.dispose()


def _cell(value) -> str:
    """A report value as the page shows it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):  # stored bytes per adaptor
        return ", ".join(f"{k}: {size(v) if isinstance(v, int) else v}" for k, v in value.items())
    return str(value)
