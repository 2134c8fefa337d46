"""Authentication of the WebDAV endpoint with JupyterHub tokens.

Accepted, for the micro-infrastructure of user ``owner``:

- ``Authorization: Basic`` with user name ``owner`` and, as the password, a
  JupyterHub API token of ``owner`` (desktop clients can send only Basic);
- ``Authorization: token <hub token>`` (and ``Bearer <hub token>``);
- ``Authorization: Bearer <JWT>``, or the JWT as the Basic password (the user name must
  then be ``owner``): a token that looks like a JWT is checked by ``jwtauth`` only
  (RS256/ES256, keys registered for ``owner``, ``sub`` = ``owner``), never by the hub.

The token is checked against the hub API (``HubTokens``), and must carry a scope that
gives access to this server (``access:servers!user=<owner>`` or wider). Answers are
cached for ``HubTokens.cache_seconds``: a revoked token stops working within that time.
No credentials, or a bad token: 401 with a Basic challenge; a valid token of
someone else, or a wrong user name: 403. Refusals name the reason, never the token.
"""

import base64
import logging

from wsgidav.mw.base_mw import BaseMiddleware

from skerry import config
from skerry.hubtokens import HubTokens, grants
from skerry.hub.userserver.jwtauth import JwtRefused, JwtVerifier, looks_like_jwt

__all__ = ["HubTokenAuthenticator", "HubTokens", "owner_from_env"]

log = logging.getLogger("skerry.dav")

REALM = "skerry"


def _parse(header: str) -> tuple[str | None, str | None]:
    """(user name or None, token or None) from an Authorization header."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme in ("token", "bearer") and value:
        return None, value
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None, None
        name, sep, password = decoded.partition(":")
        if sep and password:
            return name, password
    return None, None


class HubTokenAuthenticator(BaseMiddleware):
    """wsgidav middleware (``cls(wsgidav_app, next_app, config)``) checking hub tokens.

    Reads ``config["skerry_auth"]``: ``{"owner": name, "hub": HubTokens}`` and
    optionally ``"jwt": JwtVerifier`` (default: from ``$SKERRY_JWT_KEYS`` and
    ``$SKERRY_JWT_AUDIENCE``).
    """

    def __init__(self, wsgidav_app, next_app, config):
        super().__init__(wsgidav_app, next_app, config)
        self.owner = config["skerry_auth"]["owner"]
        self.hub = config["skerry_auth"]["hub"]
        self.access_scopes = self.hub.access_scopes or {f"access:servers!user={self.owner}"}
        self.jwt = config["skerry_auth"].get("jwt") or JwtVerifier.from_env(self.owner)

    def is_disabled(self) -> bool:
        return False

    def __call__(self, environ, start_response):
        name, token = _parse(environ.get("HTTP_AUTHORIZATION", ""))
        if token is None:
            return self._deny(start_response, 401, "Log in with your user name and a JupyterHub API token "
                              "(or a JWT) as the password, or send Authorization: Bearer <JWT>.")
        if name is not None and name != self.owner:
            return self._deny(start_response, 403, f"This WebDAV endpoint belongs to {self.owner}.")
        if looks_like_jwt(token):
            return self._jwt(token, environ, start_response)
        try:
            model = self.hub.user_for_token(token)
        except (OSError, ValueError):  # the hub did not answer, or not in JSON: say so, don't leak details
            log.exception("checking a token with the hub failed")
            return self._deny(start_response, 503, "The hub could not check your token; try again.")
        if not model:
            return self._deny(start_response, 401, "This token is not valid (expired or revoked?).")
        if model.get("kind", "user") != "user" or model.get("name") != self.owner:
            return self._deny(start_response, 403, f"This WebDAV endpoint belongs to {self.owner}.")
        if not grants(model.get("scopes", ()), self.access_scopes):
            return self._deny(start_response, 403, "This token may not access this server.")
        return self._admit(environ, start_response)

    def _jwt(self, token, environ, start_response):
        try:
            self.jwt.verify(token)
        except JwtRefused as refused:
            log.info("JWT refused (%d): %s", refused.status, refused.message)
            return self._deny(start_response, refused.status, refused.message, bearer=True)
        return self._admit(environ, start_response)

    def _admit(self, environ, start_response):
        environ["wsgidav.auth.realm"] = REALM
        environ["wsgidav.auth.user_name"] = self.owner
        environ["wsgidav.auth.roles"] = None
        environ["wsgidav.auth.permissions"] = None
        return self.next_app(environ, start_response)

    @staticmethod
    def _deny(start_response, status: int, message: str, bearer: bool = False):
        reason = {401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}[status]
        body = (message + "\n").encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        if status == 401:
            headers.append(("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'))
            if bearer:  # RFC 6750: the token was a JWT and it was refused
                headers.append(("WWW-Authenticate", f'Bearer realm="{REALM}", error="invalid_token"'))
        start_response(f"{status} {reason}", headers)
        return [body]


def owner_from_env() -> str:
    return config.USER.require()
