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

import os

import httpx

from skerry.errors import AdaptorUnavailable, ConfigError

from .config import ENV, load_federation

__all__ = ["default_federation", "remote_federation", "TokenAuth"]

URL_ENV = "SKERRY_URL"
TOKEN_ENV = "SKERRY_TOKEN"
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
    if os.environ.get(ENV):
        return load_federation()
    url = os.environ.get(URL_ENV, "").strip()
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not (url and token):
        missing = [f"${name}" for name, value in ((URL_ENV, url), (TOKEN_ENV, token)) if not value]
        nor = f"nor is {missing[0]}" if len(missing) == 1 else f"nor are {' and '.join(missing)}"
        raise ConfigError(f"skerry:// needs ${ENV} (inside a micro-infrastructure) "
                          f"or ${URL_ENV} and ${TOKEN_ENV} (outside it: the platform and a hub token of yours); "
                          f"${ENV} is not set, {nor}")
    return remote_federation(url, token)


def _user(url: str, auth: TokenAuth) -> str:
    """The name of the token's owner, asked of the hub."""
    try:
        r = httpx.get(f"{url}/hub/api/user", auth=auth, timeout=TIMEOUT_S)
    except httpx.TransportError as e:
        raise AdaptorUnavailable(f"cannot reach the skerry platform at {url} ({type(e).__name__}); "
                                 f"is ${URL_ENV} right?") from None
    if r.status_code in (401, 403):
        raise ConfigError(f"the platform at {url} refused the token in ${TOKEN_ENV} ({r.status_code})")
    if r.status_code != 200 or r.headers.get("content-type", "").split(";")[0] != "application/json":
        raise ConfigError(f"{url}/hub/api/user answered {r.status_code}: is ${URL_ENV} a skerry platform?")
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
