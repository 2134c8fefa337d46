"""``/services/skerry/api/v1/users/{name}/...``: a user's adaptors, credentials and JWT keys.

Routes (all JSON, hub tokens, errors ``{"error", "message"}``)::

    GET    users/{name}/adaptors                 {"adaptors": [home, stored...]}
    PUT    users/{name}/adaptors/{adaptor}       body: adaptor spec -> the spec
    DELETE users/{name}/adaptors/{adaptor}       204
    GET    users/{name}/credentials              {"credentials": [{name, kind, created, ...}]}
    PUT    users/{name}/credentials/{cred}       body by kind (password, ssh-key, s3, sftp-key-setup)
    DELETE users/{name}/credentials/{cred}       204 (a set-up key is revoked on its host first)
    GET    users/{name}/jwt-keys                 {"keys": [{kid, alg, public_key}]}
    GET|PUT|DELETE users/{name}/jwt-keys/{kid}   PUT body: {"public_key": PEM}

Rules:

- the caller is user ``{name}`` or an admin (an admin user, or a token with scope
  ``admin:users``); anyone else gets 403 before anything is looked up; an admin asking
  for an unknown user gets 404;
- no answer ever holds a secret: credentials are listed by their non-secret fields;
- a bad body is a 400 with a sentence, and nothing is stored;
- adaptor changes apply at the next start of the user's server.
"""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends, Request, Response

from skerry.adaptors import sshkeys
from skerry.adaptors.specs import load_spec
from skerry.adaptors.store import (CREDENTIAL_NAME, RESERVED_ADAPTORS, AccountStore, Conflict, CryptError,
                                   NotFound, parse_credential)
from skerry.datadir import DataDir
from skerry.errors import ConfigError, SkerryError

from skerry.hub.service.infrastructure import servers
from skerry.hub.service.toolkit import API, ApiError, caller, get_accounts, get_hub, is_admin, json_body

MAX_BODY = 64 * 1024  # specs, keys and credentials are small


def _fail(e: SkerryError, code: str) -> ApiError:
    """A store or validation error in this API's words: ``code`` for a bad body or key."""
    if isinstance(e, ApiError):  # an SSH host's refusal, already answered
        return e
    if isinstance(e, NotFound):
        return ApiError.of(e)
    if isinstance(e, Conflict):
        return ApiError.of(e, code="in_use")
    if isinstance(e, CryptError) or code == "bad_store":
        return ApiError(500, e.code if isinstance(e, CryptError) else code, e.message)  # not the caller's fault
    return ApiError(400, code, e.message)


def jwt_alg(pem: str) -> tuple[str, str]:
    """(alg, SubjectPublicKeyInfo PEM) of a public key: RSA >= 2048 bits -> RS256, P-256 -> ES256."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, AttributeError):
        raise ConfigError("public_key is not a PEM public key ('-----BEGIN PUBLIC KEY-----').") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(f"RSA keys must have at least 2048 bits; this one has {key.key_size}.")
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        alg = "ES256"
    else:
        raise ConfigError("only RSA (>= 2048 bits, RS256) and EC P-256 (ES256) keys are accepted.")
    spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return alg, spki.decode()


def _setup_body(body: dict) -> tuple[str, int, str, str, str | None]:
    allowed = {"kind", "host", "port", "username", "password", "known_hosts"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "bad_credential", f"sftp-key-setup has no field(s) {', '.join(unknown)}.")
    for field in ("host", "username", "password"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise ApiError(400, "bad_credential", f"sftp-key-setup needs {field!r} (a non-empty string).")
    port = body.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ApiError(400, "bad_credential", "'port' must be a number from 1 to 65535.")
    known_hosts = body.get("known_hosts")
    if known_hosts is not None and not isinstance(known_hosts, str):
        raise ApiError(400, "bad_credential", "'known_hosts' must be known_hosts text.")
    return body["host"], port, body["username"], body["password"], known_hosts


def _not_a_setup_key(entry: dict) -> None:
    public = entry["public"]
    if public.get("installed_by_skerry"):
        raise Conflict(f"this credential is a key skerry installed on {public['host']}: delete it "
                       "first (that removes the key there), then store the new one.")


router = APIRouter(prefix=API + "/users/{name}", tags=["users"])


async def account_store(accounts=Depends(get_accounts)) -> AccountStore:
    """The users' account store (adaptors, credentials, JWT keys)."""
    return accounts[0]


async def allowed(name: str, who: dict = Depends(caller), hub=Depends(get_hub)) -> str:
    """The user ``name`` if the caller may manage their account; 403/404 otherwise."""
    if not is_admin(who) and not (who.get("kind") == "user" and who.get("name") == name):
        raise ApiError(403, "forbidden", f"Only {name!r} and admins may manage the account of {name!r}.")
    await hub.user(name)  # 404 for an unknown user
    return name


def home_spec(name: str, data: DataDir) -> dict:
    return {"name": "home", "type": "local", "path": str(data.user_home(name)), "read_only": False}


# -- adaptors ---------------------------------------------------------------


@router.get("/adaptors")
async def list_adaptors(name: str = Depends(allowed), accounts=Depends(get_accounts)):
    """The user's adaptors: the built-in ``home`` first, then the stored ones (no secrets)."""
    try:
        store, data = accounts
        return {"adaptors": [home_spec(name, data)] + store.adaptors(name)}
    except ConfigError as e:
        raise _fail(e, "bad_store") from None


@router.put("/adaptors/{adaptor}")
async def put_adaptor(adaptor: str, request: Request, name: str = Depends(allowed),
                      s: AccountStore = Depends(account_store), hub=Depends(get_hub)):
    """Add or replace one adaptor (body: an adaptor spec; ``name`` optional, must match).

    ``credentials`` must name a stored credential of a kind the type takes. The
    change applies at the next start of the user's server. 409 if the user has a named
    server of that name: its ``/dav/<user>/<server>/`` would hide the adaptor's folder.
    """
    body = await json_body(request, MAX_BODY)
    if adaptor in RESERVED_ADAPTORS:
        raise ApiError(400, "reserved", f"The adaptor name {adaptor!r} is reserved for the built-in home folder.")
    if body.setdefault("name", adaptor) != adaptor:
        raise ApiError(400, "bad_spec", f"The body names adaptor {body['name']!r}, the URL {adaptor!r}.")
    if adaptor in await servers(hub).servers(name, stopped=True):  # after the checks that need no hub
        raise ApiError(409, "server_name_clash",
                       f"{name} has a server named {adaptor!r}: its WebDAV folder /dav/{name}/{adaptor}/ would "
                       f"hide this adaptor's. Choose another name.")
    try:
        return s.put_adaptor(name, load_spec(body))
    except ConfigError as e:
        raise _fail(e, "bad_spec") from None


@router.delete("/adaptors/{adaptor}", status_code=204)
async def delete_adaptor(adaptor: str, name: str = Depends(allowed),
                         s: AccountStore = Depends(account_store)):
    """Remove one adaptor (at the next start of the user's server)."""
    if adaptor in RESERVED_ADAPTORS:
        raise ApiError(400, "reserved", f"The built-in {adaptor!r} adaptor cannot be removed.")
    try:
        s.delete_adaptor(name, adaptor)
    except ConfigError as e:
        raise _fail(e, "bad_spec") from None
    return Response(status_code=204)


# -- credentials ------------------------------------------------------------


@router.get("/credentials")
async def list_credentials(name: str = Depends(allowed),
                           s: AccountStore = Depends(account_store)):
    """Name, kind, created and the non-secret fields of each credential; never a secret."""
    try:
        return {"credentials": s.list_credentials(name)}
    except ConfigError as e:
        raise _fail(e, "bad_store") from None


@router.put("/credentials/{cred}")
async def put_credential(cred: str, request: Request, name: str = Depends(allowed),
                         s: AccountStore = Depends(account_store)):
    """Store a credential, encrypted at rest. Bodies by kind:

    ``{"kind": "password", "username"?, "password"}``, ``{"kind": "ssh-key", "private_key"}``,
    ``{"kind": "s3", "key", "secret", "token"?}``, and
    ``{"kind": "sftp-key-setup", "host", "port"?, "username", "password", "known_hosts"?}``:
    skerry logs in once with the password, installs a new ed25519 key in the remote
    ``~/.ssh/authorized_keys``, checks it, and stores only the key (kind ``ssh-key``);
    the password is never stored. ``known_hosts`` is known_hosts text; without it any
    host key is accepted.
    """
    body = await json_body(request, MAX_BODY)
    if not CREDENTIAL_NAME.match(cred):
        raise ApiError(400, "bad_credential", f"{cred!r} is not a credential name (lower-case letters, "
                                              "digits, - and _).")
    try:
        if body.get("kind") != "sftp-key-setup":
            kind, public, secret = parse_credential(body)
            return s.put_credential(name, cred, kind, public, secret, replace_check=_not_a_setup_key)
        host, port, username, password, known_hosts = _setup_body(body)
        del body["password"]
        old = s.credentials(name).get(cred)
        if old:
            _not_a_setup_key(old)
        private, public_line = await sshkeys.install_key(
            host, port, username, password, known_hosts, comment=f"skerry:{name}/{cred}")
        del password
        public = {"public_key": public_line, "host": host, "port": port, "username": username,
                  "installed_by_skerry": True}
        if known_hosts:
            public["known_hosts"] = known_hosts
        try:
            return s.put_credential(name, cred, "ssh-key", public, {"private_key": private},
                                    replace_check=_not_a_setup_key)
        except BaseException:
            # not stored: take the key off the remote again, so nothing is left behind
            await sshkeys.revoke_key(host, port, username, private, known_hosts)
            raise
    except ConfigError as e:
        raise _fail(e, "bad_credential") from None
    except sshkeys.SshKeyError as e:
        raise _fail(e, "ssh_failed") from None


@router.delete("/credentials/{cred}", status_code=204)
async def delete_credential(cred: str, force: bool = False, name: str = Depends(allowed),
                            s: AccountStore = Depends(account_store)):
    """Remove a credential (409 while an adaptor uses it). A key skerry installed is
    first removed from the remote ``authorized_keys`` (logging in with the key itself);
    if that host cannot be reached: 502 and nothing removed, unless ``?force=true``.
    """
    try:
        entry = s.deletable_credential(name, cred)
        public = entry["public"]
        if public.get("installed_by_skerry"):
            try:
                await sshkeys.revoke_key(public["host"], public["port"], public["username"],
                                         entry["secret"]["private_key"], public.get("known_hosts"))
            except sshkeys.SshKeyError as e:
                if not force:
                    raise ApiError(e.status, e.code, e.message + " Nothing was deleted; "
                                   "add ?force=true to forget the credential anyway.") from None
        s.delete_credential(name, cred)
    except ConfigError as e:
        raise _fail(e, "bad_credential") from None
    return Response(status_code=204)


# -- JWT keys -----------------------------------------------------------------


@router.get("/jwt-keys")
async def list_jwt_keys(name: str = Depends(allowed),
                        s: AccountStore = Depends(account_store)):
    """Public keys whose JWTs the user's WebDAV endpoint accepts (``Authorization: Bearer``)."""
    try:
        return {"keys": s.jwt_keys(name)}
    except ConfigError as e:
        raise _fail(e, "bad_store") from None


@router.get("/jwt-keys/{kid}")
async def get_jwt_key(kid: str, name: str = Depends(allowed),
                      s: AccountStore = Depends(account_store)):
    try:
        for key in s.jwt_keys(name):
            if key.get("kid") == kid:
                return key
    except ConfigError as e:
        raise _fail(e, "bad_store") from None
    raise ApiError(404, "not_found", f"{name} has no JWT key {kid!r}.")


@router.put("/jwt-keys/{kid}")
async def put_jwt_key(kid: str, request: Request, name: str = Depends(allowed),
                      s: AccountStore = Depends(account_store)):
    """Register a public key (body ``{"public_key": PEM}``); its alg follows from the key:
    RSA >= 2048 bits: RS256, EC P-256: ES256. Running servers see it within seconds."""
    body = await json_body(request, MAX_BODY)
    if set(body) != {"public_key"} or not isinstance(body["public_key"], str):
        raise ApiError(400, "bad_key", 'The body must be {"public_key": "<PEM public key>"}.')
    try:
        alg, pem = jwt_alg(body["public_key"])
        return s.put_jwt_key(name, kid, alg, pem)
    except ConfigError as e:
        raise _fail(e, "bad_key") from None


@router.delete("/jwt-keys/{kid}", status_code=204)
async def delete_jwt_key(kid: str, name: str = Depends(allowed),
                         s: AccountStore = Depends(account_store)):
    try:
        s.delete_jwt_key(name, kid)
    except ConfigError as e:
        raise _fail(e, "bad_key") from None
    return Response(status_code=204)
