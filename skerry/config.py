"""Every environment variable skerry reads or sets, in one table: its name, type, default,
who sets it, who reads it and what it means.

    from skerry import config
    config.DATA_DIR.require()              # a Path, or ConfigError: not set
    config.PORT.get()                      # an int (the default where unset)
    {config.DATA_DIR.name: str(path)}      # what a child process is told
    config.environment({...})              # a copy of this process's environment, for a child

Rules:
- this is the one module that reads ``os.environ``; every other module asks a ``Setting``
  here (``tests/test_config.py`` reads the source tree and fails on any other read);
- the names never change: they are how skerry's processes talk to each other (``skerry
  up`` to the hub, the hub to its services, the spawner to a user's server) and some are
  the users' own (``user_facing``, listed in the README by ``reference()``);
- a value is stripped of surrounding white space, and an empty value is unset (its default);
- a value that does not parse as the setting's type, or fails its check, raises a
  ``ConfigError`` naming the variable, the value and what was expected;
- reads are live, never cached: ``skerry.workload.owners`` points the federation of this
  process at another file while it runs, and tests change the environment;
- variables a child needs only for its own programs (HOME, PATH, LANG, Dask's ``DASK_*``,
  ``CUDA_VISIBLE_DEVICES``) are built as dicts where the child is started: they are not
  skerry's settings and are not listed here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from .errors import ConfigError

__all__ = ["Setting", "SETTINGS", "by_name", "environment", "forward", "reference"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One environment variable: ``kind`` is str, int, float, bool or Path; ``check`` (with
    ``must``, the sentence it demands) refuses a parsed value that does not fit."""

    name: str
    kind: type
    default: Any
    set_by: str
    read_by: str
    doc: str
    user_facing: bool = False
    check: Callable[[Any], bool] | None = None
    must: str = ""

    def parse(self, text: str) -> Any:
        """The typed value of ``text``, or ConfigError naming this variable and the value."""
        try:
            value = _PARSERS[self.kind](text)
        except ValueError:
            raise ConfigError(f"${self.name}={text!r} is not {_EXPECTED[self.kind]}") from None
        if self.check is not None and not self.check(value):
            raise ConfigError(f"${self.name}={text!r}: it must be {self.must}")
        return value

    def raw(self) -> str | None:
        """This process's text of the variable, stripped; None where unset or empty."""
        text = os.environ.get(self.name, "").strip()
        return text or None

    def get(self) -> Any:
        """The typed value, or the default where unset."""
        text = self.raw()
        return self.default if text is None else self.parse(text)

    def require(self) -> Any:
        """The typed value, or ConfigError where unset (a variable this process cannot do without)."""
        text = self.raw()
        if text is None:
            raise ConfigError(f"${self.name} is not set ({self.doc}; set by {self.set_by})")
        return self.parse(text)

    def set(self, value: Any) -> None:
        """Set the variable in this process (its children and its own later reads see it)."""
        os.environ[self.name] = str(value)

    def pop(self) -> Any:
        """The typed value (None where unset), removed from this process's environment."""
        text = os.environ.pop(self.name, "").strip()
        return None if not text else self.parse(text)


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_PARSERS = {str: str, int: int, float: _float, bool: _bool, Path: lambda text: Path(text).expanduser()}
_EXPECTED = {str: "a text", int: "a whole number", float: "a number", bool: "a yes/no flag (1/0, true/false)",
             Path: "a path"}


def _positive(value) -> bool:
    return value > 0


def _port(value) -> bool:
    return 0 <= value <= 65535


_UP = "skerry up"
_SPAWNER = "the spawner (hub.plugins.spawner), for each user server"
_HUB = "JupyterHub"
_SETTINGS = "hub.plugins.settings, for the service and the scheduler"

# ---- skerry up -> the hub (hub.plugins.settings) --------------------------------------------

DATA_DIR = Setting("SKERRY_DATA_DIR", Path, None, f"{_UP}; {_SETTINGS}",
                   "the hub's settings and spawner, the service, the scheduler",
                   "the platform's data dir (catalog, profiles, quotas, pools.json, secrets)")
IP = Setting("SKERRY_IP", str, "127.0.0.1", _UP, "hub.plugins.settings", "the address the proxy listens on")
PORT = Setting("SKERRY_PORT", int, 8000, _UP, "hub.plugins.settings", "the port the proxy listens on",
               check=_port, must="a port (0 to 65535)")
PUBLIC_URL = Setting("SKERRY_PUBLIC_URL", str, None, f"{_UP}; {_SETTINGS}",
                     "hub.plugins.settings, the spawner (as SKERRY_URL), the service",
                     "the platform's URL as users reach it")
PROXY_COMMAND = Setting("SKERRY_PROXY_COMMAND", str, None, f"the admin, for {_UP} (which passes on what it found)",
                        "skerry.nodeproxy, hub.plugins.settings",
                        "the configurable-http-proxy program to run", user_facing=True)
PROXIES = ("haproxy", "traefik", "chp")
PROXY = Setting("SKERRY_PROXY", str, None, f"the admin, for {_UP} (or its --proxy)",
                "skerry.platform, skerry.haproxy, hub.plugins.settings",
                "the proxy: haproxy, traefik, or chp (configurable-http-proxy); unset: haproxy where "
                "installed, else traefik", user_facing=True,
                check=lambda value: value in PROXIES, must="haproxy, traefik or chp")
SSL_CERT = Setting("SKERRY_SSL_CERT", Path, None, f"{_UP} --ssl-cert", "hub.plugins.settings",
                   "the HTTPS certificate (PEM) the proxy serves; unset: plain HTTP")
SSL_KEY = Setting("SKERRY_SSL_KEY", Path, None, f"{_UP} --ssl-key", "hub.plugins.settings",
                  "the file of the certificate's private key (its path only: the proxy reads it)")
DEV = Setting("SKERRY_DEV", bool, False, f"{_UP} --dev", "hub.plugins.settings",
              "any user name and password logs in (never on a machine others reach)")
ACCOUNT_TEMPLATE = Setting("SKERRY_ACCOUNT_TEMPLATE", str, None, f"{_UP} (skerry.identity); {_SETTINGS}",
                           "hub.plugins.settings, the scheduler",
                           "the OS account of each user, e.g. skerry-{username}; unset: single-user mode")
SINGLE_USER = Setting("SKERRY_SINGLE_USER", str, None, f"{_UP} (skerry.identity)", "hub.plugins.settings",
                      "single-user mode: the one user who may log in (the account running skerry up)")
CATALOG_URL = Setting("SKERRY_CATALOG_URL", str, None,
                      f"the admin ({_UP}'s environment; the Helm chart, from a Secret)",
                      "the service and the scheduler (Catalog.for_data_dir)",
                      "the catalog's database URL (postgresql+psycopg://...); unset: DATA_DIR/catalog.sqlite",
                      user_facing=True)
KUBERNETES = Setting("SKERRY_KUBERNETES", str, None, "the admin (the Helm chart: in-cluster)",
                     "hub.plugins.settings, hub.plugins.kube.workload",
                     "the Kubernetes API users' servers run on, as pods: its URL, or in-cluster; "
                     "unset: local processes", user_facing=True)
KUBE_NAMESPACE = Setting("SKERRY_KUBE_NAMESPACE", str, "default", "the admin (the Helm chart: the release's)",
                         "hub.plugins.settings, hub.plugins.kube.workload", "the namespace of users' pods",
                         user_facing=True)
KUBE_PENDING_TIMEOUT = Setting("SKERRY_KUBE_PENDING_TIMEOUT", float, 120.0, "the admin", "hub.plugins.kube.spawner",
                               "seconds a user's pod may wait for a node, its image or a volume before its start "
                               "fails with the reason", user_facing=True, check=_positive,
                               must="a positive number of seconds")
USER_IMAGE = Setting("SKERRY_USER_IMAGE", str, None, "the admin (the Helm chart: images.user)",
                     "hub.plugins.settings, hub.plugins.kube.workload",
                     "the image of users' pods where their profile names none (and of their Dask pods)",
                     user_facing=True)
_CHART = "the Helm chart's hub Deployment, from its Secret"
SERVICE_TOKEN = Setting("SKERRY_SERVICE_TOKEN", str, None, _CHART, "hub.plugins.kube.hubconfig",
                        "the hub token of the chart's skerry service Deployment")
WORKLOAD_TOKEN = Setting("SKERRY_WORKLOAD_TOKEN", str, None, _CHART, "hub.plugins.kube.hubconfig",
                         "the hub token of the chart's workload scheduler Deployment")
PROXY_TOKEN = Setting("CONFIGPROXY_AUTH_TOKEN", str, None, _CHART, "hub.plugins.kube.hubconfig",
                      "the token of the chart's proxy API (configurable-http-proxy reads it too)")
CULL_INTERVAL = Setting("SKERRY_CULL_INTERVAL", float, 30.0, "the admin, for skerry up (passed on to the service)",
                        "the service's idle culler", "seconds between the idle culler's passes",
                        user_facing=True, check=_positive, must="a positive number of seconds")
CRYPT_KEY = Setting("SKERRY_CRYPT_KEY", str, None,
                    "the admin, for skerry up (passed on to the service and the scheduler)",
                    "skerry.adaptors.store (the hub, the service, the scheduler)",
                    "the Fernet key of the stored credentials, kept outside the data dir; "
                    "unset: DATA_DIR/secrets/credentials-key", user_facing=True)

# ---- the spawner -> a user's server (launcher, WebDAV, Jupyter, kernels) --------------------

DAV_PORT = Setting("SKERRY_DAV_PORT", int, None, _SPAWNER, "hub.userserver.webdav",
                   "the port of the user's WebDAV endpoint", check=_port, must="a port (0 to 65535)")
DAV_IP = Setting("SKERRY_DAV_IP", str, "127.0.0.1", _SPAWNER, "hub.userserver.webdav",
                 "the address the user's WebDAV endpoint listens on (a pod's: all of its own)")
DAV_PREFIX = Setting("SKERRY_DAV_PREFIX", str, None, _SPAWNER, "hub.userserver.webdav",
                     "the URL path of the user's WebDAV endpoint (/dav/<name>/[<server>/])")
DAV_FRONT = Setting("SKERRY_DAV_FRONT", str, "auto", "the admin, for skerry up (passed on to each user server)",
                    "hub.userserver.webdav", "what answers a user's plain file transfers on WebDAV: 'nginx' (nginx "
                    "with its Lua module in front of the endpoint: hub.userserver.davfront), 'off' (the endpoint "
                    "itself), 'auto' (nginx where it is installed with its Lua module, on x86-64 Linux)",
                    user_facing=True, check=lambda v: v in ("auto", "nginx", "off"), must="'auto', 'nginx' or 'off'")
DAV_FRONT_DIR = Setting("SKERRY_DAV_FRONT_DIR", str, None, "the WebDAV endpoint, for its own worker",
                        "the WebDAV endpoint's worker (hub.userserver.webdav)",
                        "the folder of the endpoint's front (hub.userserver.davfront): its lock and lost-writes flags")
DAV_FRONT_WRITES = Setting("SKERRY_DAV_FRONT_WRITES", int, None, "the WebDAV endpoint, for its own worker",
                           "the WebDAV endpoint's worker (hub.userserver.davfront.heard_writes)",
                           "the pipe the endpoint's front tells the endpoint what it wrote on",
                           check=lambda fd: fd >= 0, must="a file descriptor (0 or more)")
USER = Setting("SKERRY_USER", str, None, _SPAWNER, "the WebDAV endpoint, the identity check, kernels",
               "the hub user the server belongs to")
_LAUNCHER = "the micro-infrastructure's launcher (hub.userserver.launcher), for its two processes"
WRITES_OUT = Setting("SKERRY_WRITES_OUT", int, None, _LAUNCHER, "the WebDAV endpoint (skerry.adaptors.writefeed)",
                     "the pipe the WebDAV endpoint tells what it wrote on", check=lambda fd: fd >= 0,
                     must="a file descriptor (0 or more)")
WRITES_IN = Setting("SKERRY_WRITES_IN", int, None, _LAUNCHER, "the data API's find index (skerry.adaptors.writefeed)",
                    "the pipe the find index learns what the WebDAV endpoint wrote from", check=lambda fd: fd >= 0,
                    must="a file descriptor (0 or more)")
SERVER = Setting("SKERRY_SERVER", str, "", _SPAWNER, "the identity check (skerry.ports)",
                 "the name of the user's server (empty: the default one)")
IDENTITY_KEY = Setting("SKERRY_IDENTITY_KEY", str, "", _SPAWNER, "the identity check (skerry.ports)",
                       "the per-start key a server proves to the hub that it is the one started")
ADAPTORS = Setting("SKERRY_ADAPTORS", str, None, "the spawner; skerry.workload.owners, for a job's owner",
                   "skerry.adaptors (the federation), the contents manager, the data API",
                   "the adaptor configuration file (JSON, mode 0600) of the skerry:// federation",
                   user_facing=True)
JWT_KEYS = Setting("SKERRY_JWT_KEYS", str, None, _SPAWNER, "hub.userserver.jwtauth",
                   "the user's file of public keys WebDAV accepts JWTs signed by")
JWT_AUDIENCE = Setting("SKERRY_JWT_AUDIENCE", str, "skerry", "the admin (c.Spawner.environment)",
                       "hub.userserver.jwtauth", "the audience a JWT for WebDAV must name")
PROFILE = Setting("SKERRY_PROFILE", str, None, "the spawner", "the user's code",
                  "the slug of the profile the server started with", user_facing=True)

# ---- a user's client: kernels, the skerry CLI, skerry:// outside the platform ---------------

URL = Setting("SKERRY_URL", str, None, "the spawner (SKERRY_PUBLIC_URL); the user outside the platform",
              "skerry.workload.client, skerry:// outside the platform, kernels",
              "the platform's URL", user_facing=True)
TOKEN = Setting("SKERRY_TOKEN", str, None, "the user", "skerry.workload.client, skerry:// outside, kernels",
                "a hub API token of the user's", user_facing=True)

# ---- inside the workload --------------------------------------------------------------------

CLUSTER_HOLD = Setting("SKERRY_CLUSTER_HOLD", int, None, "skerry.workload.clusters, for each cluster process",
                       "the cluster process's wrapper (skerry.workload.clusters)",
                       "the pipe a cluster process reads to its end before it starts (its limits are set)",
                       check=lambda fd: fd >= 0, must="a file descriptor (0 or more)")

# ---- other programs' variables skerry reads or extends ---------------------------------------

VISIBLE_GPUS = Setting("CUDA_VISIBLE_DEVICES", str, None, "the gpu pool (skerry.workload.pools), for each worker",
                       "the gpumatmul module (skerry.workload.builtins)", "the GPUs a worker sees")
CACHE_HOME = Setting("XDG_CACHE_HOME", Path, None, "the user's session", "skerry.nodeproxy",
                     "where skerry keeps the proxy it installed (unset: ~/.cache)")
HUB_API_URL = Setting("JUPYTERHUB_API_URL", str, None, f"{_HUB}, for services and servers",
                      "the idle culler, the WebDAV endpoint", "the hub's REST API")
HUB_ACCESS_SCOPES = Setting("JUPYTERHUB_OAUTH_ACCESS_SCOPES", str, None, f"{_HUB}, for a user's server",
                            "the WebDAV endpoint (hub.userserver.tokenauth)",
                            "a JSON list: a token needs one of these scopes to use this server")
HUB_API_TOKEN = Setting("JUPYTERHUB_API_TOKEN", str, None, f"{_HUB}, for services and servers",
                        "the idle culler, kernels", "the hub token of this service or server")
HUB_SERVICE_URL = Setting("JUPYTERHUB_SERVICE_URL", str, None, f"{_HUB}, for the service",
                          "the service (hub.service.app)", "where the skerry service listens")
HUB_SERVICE_PREFIX = Setting("JUPYTERHUB_SERVICE_PREFIX", str, "/", f"{_HUB}, for a user's server",
                             "the job monitor widget", "the URL path of the user's Jupyter server")
HUB_USER = Setting("JUPYTERHUB_USER", str, None, f"{_HUB}, for a user's server", "kernels",
                   "the hub user the server belongs to")
JUPYTER_CONFIG_PATH = Setting("JUPYTER_CONFIG_PATH", str, None, f"{_SPAWNER} (skerry's first)", "Jupyter",
                              "folders of Jupyter configuration (skerry's enables its server extension)")
JUPYTER_PATH = Setting("JUPYTER_PATH", str, None, f"{_SPAWNER} (skerry's first)", "Jupyter",
                       "folders of Jupyter data (skerry's kernels)")

SETTINGS: tuple[Setting, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Setting))


def by_name(name: str) -> Setting:
    """The setting of the environment variable ``name``."""
    for setting in SETTINGS:
        if setting.name == name:
            return setting
    raise KeyError(name)


def environment(changes: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment with ``changes``, for a child that inherits it."""
    return {**os.environ, **(changes or {})}


def forward(*settings: Setting) -> dict[str, str]:
    """This process's values of ``settings`` that are set, for a child's environment."""
    return {s.name: s.raw() for s in settings if s.raw() is not None}


def reference() -> str:
    """The README's table of the user-facing variables (``tests/test_config.py`` keeps them equal)."""
    rows = ["| Variable | Type | Default | Set by | Meaning |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        if s.user_facing:
            default = "" if s.default is None else f"`{s.default}`"
            rows.append(f"| `{s.name}` | {s.kind.__name__.lower()} | {default} | {s.set_by} | {s.doc} |")
    return "\n".join(rows) + "\n"
