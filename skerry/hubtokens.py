"""Who a JupyterHub token belongs to, and what its scopes grant, asked of the hub's REST API.

    tokens = HubTokens.from_env()                     # in a process the hub started
    model = tokens.user_for_token(token)              # {"kind", "name", "scopes", ...} or None
    grants(model["scopes"], {"access:servers!user=alice"})

Used by the WebDAV endpoint of each user's server and by the skerry service. It does what
JupyterHub's ``HubAuth`` does for them over plain HTTP, without importing the hub: that
import was half of the WebDAV endpoint's start-up CPU, paid at every server start.

Rules:
- ``GET <api_url>/user`` with the token itself answers its owner's model, with the token's
  own expanded ``scopes`` (an admin's token limited to fewer scopes has only those);
- an answer is kept ``cache_seconds`` (a revoked token works at most that long); a token
  the hub refuses (401, 403, 404) is None, and is asked again next time;
- any other failure raises ``OSError`` (or ``ValueError`` for an answer that is not JSON):
  the caller answers 503, never "invalid token";
- the cache is keyed by the token's digest, and no request goes through an HTTP proxy:
  the token goes to the hub and nowhere else;
- one question per token at a time: when an answer expires under a client's parallel
  requests, one thread asks the hub and the others wait for its answer.
"""

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable

from . import config
from .errors import ConfigError

__all__ = ["CACHE_SECONDS", "HubTokens", "grants"]

CACHE_SECONDS = 5


def grants(scopes: Iterable[str], required: Iterable[str]) -> bool:
    """Whether a token holding ``scopes`` (expanded, as the hub lists them) has one of
    ``required`` (``base`` or ``base!kind=value``), as JupyterHub decides it: the same scope,
    the base unfiltered, or the user's filter for one of their servers
    (``access:servers!user=alice`` covers ``access:servers!server=alice/``). A filtered
    scope never covers the unfiltered one; group filters are not resolved (that needs the
    hub's database: JupyterHub's own ``HubAuth`` does not either)."""
    held = set(scopes)
    for scope in required:
        base, _, only = scope.partition("!")
        kind, _, value = only.partition("=")
        if scope in held or base in held:
            return True
        if kind == "server" and f"{base}!user={value.partition('/')[0]}" in held:
            return True
    return False


class HubTokens:
    """The hub's answers about tokens (see the module's rules), shared by a process's threads."""

    def __init__(self, api_url: str, access_scopes: Iterable[str] = (), cache_seconds: float = CACHE_SECONDS,
                 timeout: float = 10.0):
        self.url = api_url.rstrip("/") + "/user"
        self.access_scopes = set(access_scopes)
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._cache: dict[str, tuple[float, dict]] = {}
        self._asking: dict[str, threading.Lock] = {}  # token digest -> held while one thread asks the hub
        self._lock = threading.Lock()  # the endpoint's threads share the cache

    @classmethod
    def from_env(cls) -> "HubTokens":
        """From what JupyterHub gives the process it starts: the API URL and (a user's server)
        the scopes that give access to it."""
        raw = config.HUB_ACCESS_SCOPES.get()
        try:
            scopes = json.loads(raw) if raw else []
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise ValueError
        except ValueError:
            raise ConfigError(f"{config.HUB_ACCESS_SCOPES.name}={raw!r}: expected a JSON list of scopes") from None
        return cls(config.HUB_API_URL.require(), scopes)

    def user_for_token(self, token: str) -> dict | None:
        """The model of the owner of ``token`` (``kind``, ``name``, ``scopes``...), or None."""
        key = hashlib.sha256(token.encode()).hexdigest()
        kept = self._kept(key)
        if kept is not None:
            return kept
        with self._lock:
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:
            kept = self._kept(key)  # asked by another thread while this one waited
            if kept is not None:
                return kept
            try:
                return self._ask(key, token)
            finally:
                with self._lock:
                    self._asking.pop(key, None)

    def kept(self, token: str) -> dict | None:
        """``user_for_token``'s answer while it is kept, else None: no request, no wait (an
        event loop may ask here before it sends the question to a thread)."""
        return self._kept(hashlib.sha256(token.encode()).hexdigest())

    def _kept(self, key: str) -> dict | None:
        with self._lock:
            kept = self._cache.get(key)
        return kept[1] if kept is not None and time.monotonic() - kept[0] < self.cache_seconds else None

    def _ask(self, key: str, token: str) -> dict | None:
        now = time.monotonic()
        request = urllib.request.Request(self.url, headers={"Authorization": f"token {token}"})
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                model = json.load(answer)
        except urllib.error.HTTPError as refused:
            if refused.code in (401, 403, 404):
                return None
            raise
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.cache_seconds}
            self._cache[key] = (now, model)
        return model
