"""Micro-infrastructure descriptions: the body of ``POST .../infrastructure``, checked, and
the listing of one micro-infrastructure (its endpoints and how to authenticate).

A description (LOBCDER's "infrastructure" on JupyterHub named servers)::

    {"name": "hpc",                                   # the named server (required)
     "profile": "gpu-small", "options": {...}, "free": {...},   # passed on to the spawn
     "adaptors": [{"name": "sftp", "type": "sftp", "host": ..., "username": ...,
                   "credentials": {"kind": "ssh-key", "private_key": "..."}}],
     "services": ["jupyter", "webdav", "data-api"]}   # the endpoints published (default: all)

Rules:

- unknown keys, a bad name, spec or credential: ``InfraError`` naming the field
  (``adaptors[0].credentials: ...``), never a value;
- an adaptor's ``credentials`` is a credential body (as ``PUT .../credentials/<name>``
  takes it, kinds password, ssh-key, s3), stored for this server only, or the name of
  one of the user's stored credentials; ``sftp-key-setup`` is not taken here (set the key
  up once with the credentials API, then name it);
- ``services``: a subset of jupyter, webdav, data-api. On the local backend every
  micro-infrastructure runs all three (the data API is an extension of the Jupyter
  server, WebDAV its companion process); ``services`` chooses which endpoints are listed.
"""

import json
from dataclasses import dataclass, field

from skerry.adaptors.specs import load_spec
from skerry.adaptors.store import CREDENTIAL_NAME, RESERVED_ADAPTORS, SERVER_NAME, parse_credential, server_credential
from skerry.adaptors.types import adaptor_type
from skerry.errors import ConfigError
from skerry.workload.dashboard import link as dashboard_link

SERVICES = ("jupyter", "webdav", "data-api")
FIELDS = ("name", "profile", "options", "free", "adaptors", "services")
MAX_ADAPTORS = 32


class InfraError(ConfigError):
    """A bad description; ``message`` starts with the field path."""

    code = "bad_infrastructure"


@dataclass
class InfraRequest:
    """A checked description: what to store and what to send to the hub."""

    name: str
    user_options: dict
    services: list[str]
    specs: list = field(default_factory=list)  # validated AdaptorSpecs
    credentials: dict[str, tuple] = field(default_factory=dict)  # store name -> (kind, public, secret)


def _fail(where: str, sentence: str):
    raise InfraError(f"{where}: {sentence}")


def parse(body: dict) -> InfraRequest:
    """Check a description (see the module docstring); InfraError names the first bad field."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        _fail(unknown[0], f"unknown field; a description has {', '.join(FIELDS)}.")
    name = body.get("name")
    if not isinstance(name, str) or not SERVER_NAME.match(name):
        _fail("name", "required: lower-case letters, digits and -, at most 32, starting with a letter or digit.")
    options = {}
    if body.get("profile") is not None:
        if not isinstance(body["profile"], str) or not body["profile"]:
            _fail("profile", "must be a profile's slug (a string).")
        options["profile"] = body["profile"]
    for key in ("options", "free"):
        if body.get(key) is not None:
            if not isinstance(body[key], dict):
                _fail(key, "must be an object of option names to values.")
            options[key] = body[key]
    services = body.get("services", list(SERVICES))
    if not isinstance(services, list) or not services:
        _fail("services", f"must be a non-empty list of {', '.join(SERVICES)}.")
    for i, service in enumerate(services):
        if service not in SERVICES:
            _fail(f"services[{i}]", f"{json.dumps(service)[:40]} is not a service of a micro-infrastructure "
                                    f"(they are {', '.join(SERVICES)}).")
    request = InfraRequest(name=name, user_options=options,
                           services=[s for s in SERVICES if s in services])
    adaptors = body.get("adaptors", [])
    if not isinstance(adaptors, list):
        _fail("adaptors", "must be a list of adaptor specs.")
    if len(adaptors) > MAX_ADAPTORS:
        _fail("adaptors", f"at most {MAX_ADAPTORS} adaptors.")
    names = set()
    for i, item in enumerate(adaptors):
        spec = _adaptor(request, f"adaptors[{i}]", item)
        if spec.name in names:
            _fail(f"adaptors[{i}].name", f"{spec.name!r} appears more than once.")
        names.add(spec.name)
        request.specs.append(spec)
    return request


def _adaptor(request: InfraRequest, where: str, item):
    if not isinstance(item, dict):
        _fail(where, "must be an adaptor spec (an object).")
    item = dict(item)
    credentials = item.pop("credentials", None)
    if not isinstance(item.get("name"), str):
        _fail(f"{where}.name", "required: the adaptor's folder name.")
    if item["name"] in RESERVED_ADAPTORS:
        _fail(f"{where}.name", f"{item['name']!r} is reserved for the built-in home folder.")
    if isinstance(credentials, dict):
        kind = credentials.get("kind")
        if kind == "sftp-key-setup":
            _fail(f"{where}.credentials", "sftp-key-setup is not taken here: set the key up once with "
                                          "PUT .../users/<you>/credentials/<name>, then name that credential.")
        try:
            parsed = parse_credential(credentials)
        except ConfigError as e:
            _fail(f"{where}.credentials", e.message)
        store_name = server_credential(request.name, item["name"])
        item["credentials"] = store_name
    elif isinstance(credentials, str):
        if not CREDENTIAL_NAME.match(credentials):
            _fail(f"{where}.credentials", "must be a credential (an object with a 'kind') or the name "
                                          "of one of your stored credentials.")
        item["credentials"] = credentials
    elif credentials is not None:
        _fail(f"{where}.credentials", "must be a credential (an object with a 'kind') or a credential's name.")
    try:
        spec = load_spec(item)
    except ConfigError as e:
        _fail(where, e.message)
    if adaptor_type(spec.type).local:
        _fail(f"{where}.type", "local adaptors would open folders of the platform machine: "
                               "only the built-in home adaptor is local.")
    if isinstance(credentials, dict):
        request.credentials[store_name] = parsed
    return spec


# -- listing ------------------------------------------------------------------

JUPYTER_AUTH = "Authorization: token <your hub API token>, or log in with a browser"
DAV_AUTH = ("HTTP Basic: user name {user!r}, password: a hub API token of yours (or a JWT signed by "
            "a key you registered); or Authorization: token <your hub API token>")
DATA_API_AUTH = "Authorization: token <your hub API token>"
DASK_AUTH = ("TLS with your cluster's own certificates: files that only your account can read, named by "
             "POST /services/skerry/api/v1/clusters/<pool> (skerry.client uses them)")
DASK_NOTE = ("your own Dask cluster of each pool, running as your account, started on the first use of "
             "skerry.client (or POST .../clusters/<pool>) and stopped when idle; its dashboard is served "
             "by your Jupyter server at <server>skerry/dask/<pool>/status, behind the hub's login")


def infrastructure(public_url: str, user: str, name: str, server: dict | None, record: dict | None,
                   pools: dict[str, str], credentials: dict[str, dict]) -> dict:
    """One micro-infrastructure as the API lists it.

    ``server``: the hub's server model (None: not running); ``record``: what the
    infrastructure API stored for it (None: a server started otherwise, e.g. the default
    one); ``pools``: the addresses of the user's running Dask clusters, by pool;
    ``credentials``: the shown credentials of
    its adaptors (``AccountStore.server_credentials``). Never a secret.
    """
    record = record or {}
    server = server or {}
    path = server.get("url") or (f"/user/{user}/{name}/" if name else f"/user/{user}/")
    services = record.get("services") or list(SERVICES)
    endpoints = {}
    if "jupyter" in services:
        endpoints["jupyter"] = {"url": public_url + path, "auth": JUPYTER_AUTH}
    if "webdav" in services:
        endpoints["webdav"] = {"url": f"{public_url}/dav/{user}/" + (f"{name}/" if name else ""),
                               "auth": DAV_AUTH.format(user=user)}
    if "data-api" in services:
        endpoints["data-api"] = {"url": public_url + path + "skerry/api/v1/", "auth": DATA_API_AUTH}
    dashboards = {pool: public_url + dashboard_link(path, pool) for pool in sorted(pools)} \
        if "jupyter" in services else {}
    endpoints["dask"] = {"url": None, "pools": dict(sorted(pools.items())), "dashboard": dashboards,
                         "auth": DASK_AUTH, "note": DASK_NOTE + "."}
    options = record.get("user_options") or server.get("user_options") or {}
    return {
        "user": user,
        "name": name,
        "ready": bool(server.get("ready")),
        "pending": server.get("pending"),
        "started": server.get("started"),
        "profile": options.get("profile"),
        "services": [s for s in SERVICES if s in services],
        "endpoints": endpoints,
        "adaptors": [{"name": s.get("name"), "type": s.get("type"), "read_only": bool(s.get("read_only")),
                      "credentials": credentials.get(s.get("name"))}
                     for s in record.get("adaptors", [])],
    }
