"""JWT bearer tokens for the WebDAV endpoint (the LOBCDER "webdav-jwt" logic container).

A service (or a desktop client, as the Basic password) presents a JWT that a key of the
owner of this micro-infrastructure signed. The rules:

- only RS256 and ES256 signatures are accepted; ``alg: none``, HS256 (the classic
  "public key used as the HMAC secret" confusion) and anything else are refused before
  any key is touched;
- the verification keys are the owner's registered public keys, read from the JSON file
  named by ``$SKERRY_JWT_KEYS`` (``{"keys": [{"kid", "alg", "public_key": PEM}]}``; a
  missing file means no keys). The file is re-read whenever it changes (mtime, size or
  inode), so a key registered or deleted while the server runs counts at once;
- the header's ``kid`` selects the key (unknown kid: refused); without a ``kid`` every
  key of the header's ``alg`` is tried;
- claims ``exp``, ``aud`` and ``sub`` are required; ``aud`` must contain the audience
  (``$SKERRY_JWT_AUDIENCE``, default ``skerry``); ``nbf`` and ``iat`` are honoured; a
  leeway of ``LEEWAY`` seconds absorbs clock skew;
- ``sub`` must be the owner: a valid token of someone else is *forbidden* (403), every
  other failure is *unauthorized* (401). Each refusal carries a sentence naming the
  reason; no sentence and no log line ever contains the token.
"""

import base64
import json
import logging
import os
import threading
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from skerry.errors import ApiError
from skerry import config

log = logging.getLogger("skerry.dav.jwt")

DEFAULT_AUDIENCE = config.JWT_AUDIENCE.default
ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ("exp", "aud", "sub")
LEEWAY = 30  # seconds


class JwtRefused(ApiError):
    """A JWT that does not admit its bearer: ``status`` (401 or 403) and a sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(status, "jwt_refused", message)


def _b64json(segment: str):
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def looks_like_jwt(token: str) -> bool:
    """True for a compact JWS (three dot-separated parts, a JSON object header).

    Anything else (a JupyterHub API token, say) is left to the hub-token check.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[0]:
        return False
    try:
        return isinstance(_b64json(parts[0]), dict)
    except (ValueError, UnicodeError):
        return False


@dataclass(frozen=True)
class RegisteredKey:
    kid: str
    alg: str
    key: object  # a cryptography public key object


def _key_matches(alg: str, key) -> bool:
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def parse_keys(document) -> list[RegisteredKey]:
    """The usable keys of a key file's content; bad entries are skipped (and logged)."""
    keys = []
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('the key file is not {"keys": [...]}')
    for number, entry in enumerate(entries):
        try:
            kid, alg, pem = entry["kid"], entry["alg"], entry["public_key"]
            if alg not in ALGORITHMS:
                raise ValueError(f"alg {alg!r} is not one of {', '.join(ALGORITHMS)}")
            key = load_pem_public_key(pem.encode())
            if not _key_matches(alg, key):
                raise ValueError(f"the public key is not a {alg} key")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warning("JWT key file: entry %d skipped: %s", number, e)
            continue
        keys.append(RegisteredKey(str(kid), alg, key))
    return keys


class KeyFile:
    """The owner's registered keys, re-read from ``path`` whenever the file changes."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self._stamp = None
        self._keys: list[RegisteredKey] = []

    def keys(self) -> list[RegisteredKey]:
        if not self.path:
            return []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        # os.replace gives a new inode: a rewrite within one mtime tick is still seen
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp != self._stamp:
                try:
                    with open(self.path, encoding="utf-8") as f:
                        self._keys = parse_keys(json.load(f))
                except (OSError, ValueError) as e:
                    log.warning("JWT key file %s unusable, no keys accepted: %s", self.path, e)
                    self._keys = []
                self._stamp = stamp
            return self._keys


_CLAIM_ERRORS = [
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not valid yet (nbf or iat lies in the future)."),
    (jwt.InvalidIssuedAtError, "The token's iat claim is not a time."),
    (jwt.exceptions.InvalidSubjectError, "The token's sub claim is not a user name."),
]


class JwtVerifier:
    """Checks JWTs for the micro-infrastructure of ``owner`` against ``key_file``."""

    def __init__(self, owner: str, key_file: KeyFile, audience: str = DEFAULT_AUDIENCE):
        self.owner = owner
        self.key_file = key_file
        self.audience = audience

    @classmethod
    def from_env(cls, owner: str) -> "JwtVerifier":
        return cls(owner, KeyFile(config.JWT_KEYS.get()), config.JWT_AUDIENCE.get())

    def verify(self, token: str) -> dict:
        """The claims of a token that admits its bearer to ``owner``'s endpoint, else JwtRefused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # not JSON, not an object, a kid that is no string...
            raise JwtRefused(401, "The token is not a well-formed JWT.") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise JwtRefused(401, f"The token is signed with {str(alg)[:20]!r}; only "
                                  f"{' and '.join(ALGORITHMS)} signatures are accepted.")
        kid = header.get("kid")
        keys = self.key_file.keys()
        if kid is not None:
            candidates = [k for k in keys if k.kid == kid]
            if not candidates:
                raise JwtRefused(401, f"The token's key (kid {str(kid)[:80]!r}) is not registered "
                                      f"for {self.owner}.")
            if candidates[0].alg != alg:
                raise JwtRefused(401, f"The token's alg {alg} does not match its key, which is {candidates[0].alg}.")
        else:
            candidates = [k for k in keys if k.alg == alg]
            if not candidates:
                raise JwtRefused(401, f"No {alg} key is registered for {self.owner}.")
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token, candidate.key, algorithms=[candidate.alg], audience=self.audience,
                    leeway=LEEWAY, options={"require": list(REQUIRED_CLAIMS)})
            except jwt.InvalidSignatureError:
                continue  # another key of this alg may have signed it
            except jwt.MissingRequiredClaimError as e:
                raise JwtRefused(401, f"The token lacks the required claim {e.claim!r}.") from None
            except jwt.InvalidAudienceError:
                raise JwtRefused(401, f"The token is not meant for this audience ({self.audience!r}).") from None
            except jwt.DecodeError:
                raise JwtRefused(401, "The token is not a well-formed JWT.") from None
            except jwt.InvalidTokenError as e:
                for kind, message in _CLAIM_ERRORS:
                    if isinstance(e, kind):
                        raise JwtRefused(401, message) from None
                raise JwtRefused(401, "The token's claims are not valid.") from None
            if claims.get("sub") != self.owner:
                raise JwtRefused(403, f"The token is for another user; this WebDAV endpoint belongs to {self.owner}.")
            return claims
        raise JwtRefused(401, f"The token's signature matches no key registered for {self.owner}.")
