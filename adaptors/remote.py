"""``skerry://`` from outside the platform: a user's federation through their WebDAV endpoint.

Inside a micro-infrastructure ``$SKERRY_ADAPTORS`` names the adaptor configuration and
the federation talks to each backend itself. Outside (a laptop, a plain shell, CI),
``$SKERRY_URL`` and ``$SKERRY_TOKEN`` (the variables of the ``skerry`` CLI) name the
platform and a hub token of the user: ``skerry://<adaptor>/<path>`` is then
``<SKERRY_URL>/dav/<user>/<adaptor>/<path>``, the user being the token's owner
(``GET <SKERRY_URL>/hub/api/user``).

Rules:
- ``$SKERRY_ADAPTORS`` wins when both are set (a job or kernel inside the platform);
- neither set: ``ConfigError`` saying which variables are needed;
- the token travels only in the ``Authorization: token`` header, never in a URL, an
  argument or a log line; a token the hub refuses is a ``ConfigError`` that names
  ``$SKERRY_TOKEN``, not the token;
- the adaptors are the folders at the root of the user's WebDAV endpoint, each one a
  ``DirFileSystem`` over a single webdav4 filesystem (one connection pool); the server
  enforces read-only adaptors, and every adaptor makes its parent folders first
  (WebDAV cannot PUT into a missing folder).
"""


import httpx

from skerry import config
from skerry.errors import AdaptorUnavailable, ConfigError

from .config import load_federation

__all__ = ["default_federation", "remote_federation", "TokenAuth"]

TIMEOUT_S = 60


class TokenAuth(httpx.Auth):
    """``Authorization: token <hub token>`` on every request (JupyterHub's token scheme)."""

    def __init__(self, token: str):
        self._token = token

    def auth_flow(self, request):
        request.headers["Authorization"] = f"token {self._token}"
        yield request

    def __repr__(self) -> str:  # never the token, wherever the object is printed
        return "TokenAuth(<hidden>)"


def default_federation():
    """The arguments of ``SkerryFileSystem()`` with no adaptors, from the environment
    (see the module docstring): (adaptors, read-only names, names needing parents)."""
    adaptors, url_env, token_env = config.ADAPTORS.name, config.URL.name, config.TOKEN.name
    if config.ADAPTORS.get():
        return load_federation()
    url = config.URL.get() or ""
    token = config.TOKEN.get() or ""
    if not (url and token):
        missing = [f"${name}" for name, value in ((url_env, url), (token_env, token)) if not value]
        nor = f"nor is {missing[0]}" if len(missing) == 1 else f"nor are {' and '.join(missing)}"
        raise ConfigError(f"skerry:// needs ${adaptors} (inside a micro-infrastructure) "
                          f"or ${url_env} and ${token_env} (outside it: the platform and a hub token of yours); "
                          f"${adaptors} is not set, {nor}")
    return remote_federation(url, token)


def _user(url: str, auth: TokenAuth) -> str:
    """The name of the token's owner, asked of the hub."""
    try:
        r = httpx.get(f"{url}/hub/api/user", auth=auth, timeout=TIMEOUT_S)
    except httpx.TransportError as e:
        raise AdaptorUnavailable(f"cannot reach the skerry platform at {url} ({type(e).__name__}); "
                                 f"is ${config.URL.name} right?") from None
    if r.status_code in (401, 403):
        raise ConfigError(f"the platform at {url} refused the token in ${config.TOKEN.name} ({r.status_code})")
    if r.status_code != 200 or r.headers.get("content-type", "").split(";")[0] != "application/json":
        raise ConfigError(f"{url}/hub/api/user answered {r.status_code}: is ${config.URL.name} a skerry platform?")
    return r.json()["name"]


def remote_federation(url: str, token: str):
    """(adaptors, read-only names, names needing parents) over ``<url>/dav/<user>/``."""
    from fsspec.implementations.dirfs import DirFileSystem

    from .registry import need

    webdav = need("webdav")
    url = url.rstrip("/")
    auth = TokenAuth(token)
    user = _user(url, auth)
    dav = webdav.WebdavFileSystem(f"{url}/dav/{user}/", auth=auth, timeout=TIMEOUT_S, skip_instance_cache=True)
    try:
        names = [e["name"].strip("/") for e in dav.ls("", detail=True) if e["type"] == "directory"]
    except Exception as e:  # webdav4's errors carry the status, never the headers
        raise AdaptorUnavailable(f"cannot list {user}'s WebDAV endpoint {url}/dav/{user}/ "
                                 f"({type(e).__name__}: {e}); is {user}'s server running?") from None
    adaptors = {n: DirFileSystem(path=n, fs=dav) for n in names}
    return adaptors, set(), set(names)
