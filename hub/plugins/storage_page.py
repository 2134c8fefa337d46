"""The storage page: each user adds and removes their own adaptors and credentials.

Routes, under the hub's prefix (``/hub/``)::

    GET  skerry/storage[?type=s3]       your adaptors and credentials, and the form to add
                                        storage of a type (``?added=<name>``: the one just saved)
    POST skerry/storage                 ``action``: add | remove-adaptor | remove-credential | restart

Rules:

- every user manages their own storage only (the login cookie's user); someone not
  logged in gets the login page; forms carry JupyterHub's ``_xsrf`` field;
- the page is a client of the REST API (``/services/skerry/api/v1/users/<you>/...``), so
  every check is the API's: it calls it with a token of the user made for the one page
  request and revoked when that request ends;
- the form's fields are the adaptor type's own (its spec model, ``adaptors.types``); a
  refusal is shown beside the field it names, what was typed kept except secrets, which
  are never shown back (nor is any stored secret: the API never answers one);
- nothing half-made: a new credential made for an adaptor the API then refuses is removed,
  and a new credential never replaces a stored one of the same name;
- adaptors are mounted when the server starts: after a change, the page offers to restart
  the user's running server (the spawn page then shows the start).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import httpx
from jupyterhub import orm
from jupyterhub.handlers import BaseHandler
from tornado import web

from skerry.adaptors.store import RESERVED_ADAPTORS, credential_fields
from skerry.adaptors.types import adaptor_types

__all__ = ["handlers", "ROUTE", "form_fields"]

ROUTE = r"/skerry/storage"
COMMON = ("name", "type", "read_only", "credentials")  # every spec has them: the form sets them itself
SECRETS = {"password", "secret", "token", "key", "private_key"}  # never shown back, typed unseen
SETUP = "sftp-key-setup"  # a password used once: skerry installs a key of its own (types with key_setup)
FIELD = re.compile(r"field '([a-z_]+)'")
# a pattern a person cannot read, in words
PATTERNS = {"name": "use lower-case letters, digits, - and _ (at most 63), starting with a letter or digit",
            "url": "give an address starting with http:// or https://"}


def handlers() -> list[tuple]:
    """``JupyterHub.extra_handlers`` for the page."""
    return [(ROUTE, StoragePage)]


def form_fields(type_name: str) -> list[dict]:
    """The fields of a type's form: ``{name, required, kind ('int'|'str'), help}`` each, in
    the spec model's order (``COMMON`` left out)."""
    fields = []
    for name, info in adaptor_types()[type_name].spec.model_fields.items():
        if name in COMMON:
            continue
        kind = "int" if info.annotation is int else "str"
        fields.append({"name": name, "required": info.is_required(), "kind": kind,
                       "help": info.description or "", "default": None if info.is_required() else info.default})
    return fields


def credential_choices(type_name: str) -> list[tuple[str, list[str]]]:
    """``(kind, fields)`` of the credentials a new adaptor of the type may bring."""
    kinds = sorted(adaptor_types()[type_name].credential_kinds)
    choices = [(kind, [*credential_fields(kind)[0], *credential_fields(kind)[1]]) for kind in kinds]
    if adaptor_types()[type_name].key_setup:
        choices.append((SETUP, ["password"]))
    return choices


def _words(field: str | None, message: str) -> str:
    if field in PATTERNS and "pattern" in message:
        return f"'{field}': {PATTERNS[field]}."
    return message


class StoragePage(BaseHandler):
    """The page and its form actions (see the module's rules)."""

    _token: str | None = None  # the user's token for this request's API calls (``api``)

    @web.authenticated
    async def get(self):
        await self.show()

    @web.authenticated
    async def post(self):
        action = self.get_body_argument("action", "")
        if action == "add":
            return await self.add()
        if action == "restart":
            return await self.restart()
        if action in ("remove-adaptor", "remove-credential"):
            what = "adaptors" if action == "remove-adaptor" else "credentials"
            name = self.get_body_argument("name", "")
            r = await self.api("DELETE", f"{what}/{quote(name, safe='')}")
            if r.status_code != 204:
                return await self.show(status=r.status_code, error=_message(r))
            return self.redirect(self.page_url(removed=name), status=303)
        raise web.HTTPError(400, f"unknown action {action!r}: add, remove-adaptor, remove-credential or restart")

    # ---- actions ---------------------------------------------------------------------

    async def add(self):
        type_name = self.get_body_argument("type", "")
        if type_name not in adaptor_types():
            raise web.HTTPError(400, f"no adaptor type {type_name!r}")
        fields = form_fields(type_name)
        values = {f["name"]: self.get_body_argument(f["name"], "").strip() for f in fields}
        name = self.get_body_argument("name", "").strip()
        spec = {"type": type_name, "read_only": self.get_body_argument("read_only", "") == "on"}
        for f in fields:
            value = values[f["name"]]
            if value:
                spec[f["name"]] = int(value) if f["kind"] == "int" and value.isdigit() else value
        kind = self.get_body_argument("credential_kind", "")
        stored = self.get_body_argument("credential", "")
        shown = {"name": name, **values, "credential_kind": kind, "credential": stored}
        if not name:
            return await self.show(type_name, shown, status=400, errors={"name": "'name': give the storage a name."})
        made = None
        if kind:  # a new credential, named as the adaptor: never one that exists (it would be replaced)
            listed = await self.api("GET", "credentials")
            if name in {c.get("name") for c in listed.json().get("credentials", [])}:
                return await self.show(type_name, shown, status=409, errors={"credential": (
                    f"You have a credential named {name!r} already: choose it under 'or a stored one', "
                    f"or remove it first.")})
            body = {"kind": kind}
            for field in dict(credential_choices(type_name)).get(kind, []):
                body[field] = self.get_body_argument(f"cred_{field}", "")
            if kind == SETUP:
                body.update(host=spec.get("host", ""), username=spec.get("username", ""))
                if "port" in spec:
                    body["port"] = spec["port"]
            body = {k: v for k, v in body.items() if v != ""}
            r = await self.api("PUT", f"credentials/{quote(name, safe='')}", json=body)
            if r.status_code not in (200, 201):
                return await self.show(type_name, shown, status=r.status_code, errors={"credential": _message(r)})
            made = name
            spec["credentials"] = name
        elif stored:
            spec["credentials"] = stored
        r = await self.api("PUT", f"adaptors/{quote(name, safe='')}", json=spec)
        if r.status_code not in (200, 201):
            if made:  # nothing half-made: the credential was for this adaptor only
                await self.api("DELETE", f"credentials/{quote(made, safe='')}", params={"force": "true"})
            message = _message(r)
            field = (FIELD.search(message) or [None, None])[1] or ("name" if r.status_code == 409 else None)
            field = field if field in {"name", *values} else None
            errors = {field: _words(field, message)} if field else {}
            return await self.show(type_name, shown, status=r.status_code, errors=errors,
                                   error="" if field else message)
        self.redirect(self.page_url(added=name), status=303)

    async def restart(self):
        user = self.current_user
        spawner = user.spawners.get("")
        if spawner is not None and spawner.active:
            await self.stop_single_user(user, "")
        self.redirect(self.hub.base_url + "spawn/" + quote(user.name, safe=""), status=303)

    # ---- the REST API, as the user ------------------------------------------------------

    async def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One call to ``users/<you>/<path>`` of the skerry API, with a token of the user's made
        for this page request (on the first call) and revoked when the request ends."""
        from skerry.hub.plugins.settings import SERVICE_NAME

        user = self.current_user
        if self._token is None:
            self._token = user.new_api_token(note="skerry storage page (one request)", expires_in=300)
        url = f"{self.services[SERVICE_NAME].url.rstrip('/')}/services/{SERVICE_NAME}/api/v1/users/" \
              f"{quote(user.name, safe='')}/{path}"
        async with httpx.AsyncClient(timeout=120) as client:
            return await client.request(method, url, headers={"Authorization": f"token {self._token}"}, **kwargs)

    def on_finish(self):
        super().on_finish()
        token, self._token = self._token, None
        if token is not None:
            found = orm.APIToken.find(self.db, token)
            if found is not None:
                self.db.delete(found)
                self.db.commit()

    # ---- the page ---------------------------------------------------------------------

    def page_url(self, **query) -> str:
        return self.hub.base_url + ROUTE.lstrip("/") + ("?" + urlencode(query) if query else "")

    async def show(self, type_name: str | None = None, values: dict | None = None, status: int = 200,
                   errors: dict | None = None, error: str = "") -> None:
        types = sorted(adaptor_types())
        type_name = type_name or self.get_argument("type", "s3")
        if type_name not in types:
            type_name = types[0]
        adaptors, credentials = await self.api("GET", "adaptors"), await self.api("GET", "credentials")
        if adaptors.status_code != 200 or credentials.status_code != 200:
            error = error or _message(adaptors if adaptors.status_code != 200 else credentials)
        choices = credential_choices(type_name)
        cred_inputs = {}
        for kind, names in choices:
            for n in names:
                cred_inputs.setdefault(n, {"name": n, "kinds": [], "secret": n in SECRETS,
                                           "textarea": n == "private_key"})
                cred_inputs[n]["kinds"].append("password once" if kind == SETUP else kind)
        listed = credentials.json().get("credentials", []) if credentials.status_code == 200 else []
        user = self.current_user
        spawner = user.spawners.get("")
        self.set_status(status)
        self.finish(await self.render_template(
            "skerry-storage.html", types=types, type_name=type_name, fields=form_fields(type_name),
            choices=choices, cred_inputs=list(cred_inputs.values()), values=values or {}, errors=errors or {},
            error=error, adaptors=adaptors.json().get("adaptors", []) if adaptors.status_code == 200 else [],
            credentials=listed, stored=[c for c in listed if c.get("kind") in dict(choices)],
            reserved=RESERVED_ADAPTORS, added=self.get_argument("added", ""), removed=self.get_argument("removed", ""),
            running=bool(spawner is not None and spawner.active), page_url=self.page_url, setup=SETUP))


def _message(r: httpx.Response) -> str:
    try:
        return r.json()["message"]
    except (ValueError, KeyError, TypeError):
        return f"The skerry API answered {r.status_code}."
