"""Each user's adaptor specs, credentials and JWT public keys, as files in the data dir.

Layout (paths given by the caller, normally from ``skerry.datadir.DataDir``)::

    ACCOUNTS/<user>/adaptors.json      {"adaptors": [spec, ...]}   plain specs, no secrets
    HANDOVER/<user>/jwt-keys.json      {"keys": [{"kid", "alg", "public_key"}]}, mode 0640
                                       (HANDOVER: the folders the platform shares with each
                                       user's account, ``DataDir.handover``; without one,
                                       ACCOUNTS/<user>/, mode 0600)
    ACCOUNTS/<user>/servers/<name>.json  one named server's record (micro-infrastructure API):
                                       {"name", "created", "services", "user_options", "adaptors"}
    CREDENTIALS/<user>.json            {"format": 1, "key_id": ..., "token": <Fernet token>}

Rules:

- ``ACCOUNTS`` is never inside a user's home: homes are served by WebDAV.
- Every write is atomic (``skerry.localfiles.write_private``: 0600 unless said otherwise);
  read-modify-write sequences of one user are serialised by a lock file.
- A credential is ``{"kind", "created", "public": {...}, "secret": {...}}``; only
  ``public`` (plus name, kind, created) ever leaves this module through ``list``.
- ``jwt-keys.json`` is read by the WebDAV JWT verifier of the micro-infrastructure
  (re-read when its mtime changes), which runs as the user's account: it lies in the
  user's handover folder, group-readable (public keys, nothing secret), the one file of
  this store a user's process reads. Its format is a contract.
- Server-scoped adaptors (a named server's extra adaptors, stored by the
  micro-infrastructure API) join the federation of that server only. Their credentials
  live in the user's one encrypted credentials file under the name ``<server>/<adaptor>``
  (a ``/`` no user credential name has), are not listed with the user's own, and are
  removed with the server. An adaptor name is used once per server: by the user's own
  adaptors or by the server's, never both.
- Credentials are shown as ``"secret": "set"`` and a ``fingerprint``: for an SSH key the
  OpenSSH ``SHA256:`` fingerprint of its public key; otherwise an HMAC of the secret under
  a key derived from the credentials key (equal secrets, equal fingerprints; nothing to
  guess a password from without the key).

Encryption at rest: the whole credentials file of a user is one Fernet token
(AES-128-CBC + HMAC-SHA256) under the key in ``$SKERRY_CRYPT_KEY`` or, if that is
unset, the create-once 0600 file ``secrets/credentials-key``. This protects the
secrets against whoever gets the data dir *without* the key: a backup, a copied disk, a
file served by mistake, a grep through the tree. It does not protect against anyone
who can read the key (root on this machine, the hub process, and in the local backend
any process of the same Unix user, which includes the users' own servers), nor
against a running hub: the hub must decrypt them to start servers. Keep the key apart
from backups of the data dir (set ``$SKERRY_CRYPT_KEY`` from a secret store).
"""

import base64
import contextlib
import datetime
import fcntl
import hashlib
import hmac
import json
import os
import re
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from skerry import errors
from skerry.errors import ConfigError
from skerry import config
from skerry.localfiles import write_private

from .specs import load_specs
from .types import adaptor_type

FORMAT = 1
RESERVED_ADAPTORS = {"home"}
CREDENTIAL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # as the hub's username_pattern
# named servers: a URL path segment and a file name; JupyterHub's safe slugs are wider
SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
KID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")



class NotFound(errors.NotFound, ConfigError):
    code = "not_found"


class Conflict(errors.Conflict, ConfigError):
    code = "conflict"


class CryptError(ConfigError):
    """The credentials cannot be decrypted (another key, or a damaged file): not the caller's fault."""

    code = "credentials_unreadable"
    status = 500


def load_key(key_file: Path) -> bytes:
    """The Fernet key: ``$SKERRY_CRYPT_KEY``, else ``key_file`` (made once, mode 0600)."""
    value = config.CRYPT_KEY.get()
    if value:
        return _check_key(value.encode(), f"${config.CRYPT_KEY.name}")
    try:
        return _check_key(key_file.read_bytes().strip(), str(key_file))
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".credentials-key.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
        # link, not replace: if another process made the key meanwhile, theirs wins
        with contextlib.suppress(FileExistsError):
            os.link(tmp, key_file)
    finally:
        os.unlink(tmp)
    return _check_key(key_file.read_bytes().strip(), str(key_file))


def _check_key(key: bytes, where: str) -> bytes:
    try:
        if len(base64.urlsafe_b64decode(key)) == 32:
            return key
    except ValueError:
        pass
    raise ConfigError(f"the credentials key in {where} is not a Fernet key (32 url-safe base64 bytes); "
                      "make one with: python -c 'from cryptography.fernet import Fernet; "
                      "print(Fernet.generate_key().decode())'")


def key_id(key: bytes) -> str:
    """A short fingerprint naming a key in files and errors (it reveals nothing of the key)."""
    return hashlib.sha256(b"skerry-credentials-key:" + key).hexdigest()[:16]


def server_credential(server: str, adaptor: str) -> str:
    """The store name of a server-scoped adaptor's credential."""
    return f"{server}/{adaptor}"


def fingerprint(entry: dict, key: bytes) -> str:
    """A stored credential's fingerprint (see the module docstring); it reveals nothing of the secret."""
    public_key = entry["public"].get("public_key")
    if entry["kind"] == "ssh-key" and public_key:
        blob = base64.b64decode(public_key.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    mac_key = hashlib.sha256(b"skerry-credential-fingerprint:" + key).digest()
    secret = json.dumps(entry["secret"], sort_keys=True).encode()
    return "hmac-sha256:" + hmac.new(mac_key, secret, hashlib.sha256).hexdigest()[:16]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


class AccountStore:
    """The stored adaptors, credentials and JWT keys of every user of one platform."""

    def __init__(self, accounts_dir: str | os.PathLike, credentials_dir: str | os.PathLike,
                 key_file: str | os.PathLike, handover_dir: str | os.PathLike | None = None):
        self.accounts_dir = Path(accounts_dir)
        self.credentials_dir = Path(credentials_dir)
        self.key_file = Path(key_file)
        self.handover_dir = Path(handover_dir) if handover_dir else None
        self._fernet = None

    @classmethod
    def for_data_dir(cls, data) -> "AccountStore":
        return cls(data.accounts, data.credentials_dir, data.credentials_key_file, data.handover_root)

    # -- files ---------------------------------------------------------------

    def _user_dir(self, user: str, create: bool = False) -> Path:
        if not USER_NAME.match(user):
            raise ConfigError(f"{user!r} is not a user name")
        path = self.accounts_dir / user
        if create:
            self.accounts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        return path

    @contextlib.contextmanager
    def locked(self, user: str):
        """Serialise one user's read-modify-write sequences (across processes too)."""
        lock = self._user_dir(user, create=True) / ".lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_json(self, path: Path, what: str) -> dict:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ConfigError(f"{what} ({path}) is not valid JSON: {e}") from None

    # -- adaptors --------------------------------------------------------------

    def adaptors_file(self, user: str) -> Path:
        return self._user_dir(user) / "adaptors.json"

    def adaptors(self, user: str) -> list[dict]:
        """The user's stored specs as stored (validated by whoever uses them)."""
        data = self._read_json(self.adaptors_file(user), f"the adaptors of {user}")
        specs = data.get("adaptors", [])
        if not isinstance(specs, list):
            raise ConfigError(f"the adaptors of {user} ({self.adaptors_file(user)}) are not a list")
        return specs

    def put_adaptor(self, user: str, spec) -> dict:
        """Add or replace one validated spec (``specs.load_specs``), checked by ``check_adaptor``."""
        stored = spec.model_dump(mode="json", exclude_none=True)
        with self.locked(user):
            self.check_adaptor(user, spec)
            for server, record in self.servers(user).items():
                if any(s.get("name") == spec.name for s in record.get("adaptors", [])):
                    raise Conflict(f"the adaptor name {spec.name!r} is used by the micro-infrastructure "
                                   f"{server!r}: choose another name, or delete that one first.")
            specs = [s for s in self.adaptors(user) if s.get("name") != spec.name]
            specs.append(stored)
            specs.sort(key=lambda s: str(s.get("name")))
            write_private(self.adaptors_file(user), json.dumps({"adaptors": specs}, indent=1).encode())
        return stored

    def delete_adaptor(self, user: str, name: str) -> None:
        with self.locked(user):
            specs = self.adaptors(user)
            kept = [s for s in specs if s.get("name") != name]
            if len(kept) == len(specs):
                raise NotFound(f"{user} has no adaptor {name!r}.")
            write_private(self.adaptors_file(user), json.dumps({"adaptors": kept}, indent=1).encode())

    def check_adaptor(self, user: str, spec, entries: dict | None = None) -> None:
        """Refuse a (validated) spec the user may not store: reserved name, bad credentials.
        ``entries``: the credentials to look in (default: the stored ones)."""
        if spec.name in RESERVED_ADAPTORS:
            raise ConfigError(f"the adaptor name {spec.name!r} is reserved for the built-in home folder.")
        kind = adaptor_type(spec.type)
        if kind.local:
            raise ConfigError("local adaptors would open folders of the platform machine: "
                              "only the built-in home adaptor is local.")
        if spec.credentials is None:
            return
        entry = (self.credentials(user) if entries is None else entries).get(spec.credentials)
        if entry is None:
            raise ConfigError(f"there is no credential {spec.credentials!r}: store it first "
                              f"(PUT .../credentials/{spec.credentials}).")
        kind.check_credential(spec.credentials, entry)

    # -- credentials -----------------------------------------------------------

    @property
    def fernet(self) -> Fernet:
        if self._fernet is None:
            key = load_key(self.key_file)
            self._fernet = (Fernet(key), key_id(key), key)
        return self._fernet[0]

    def credentials_file(self, user: str) -> Path:
        self._user_dir(user)  # checks the name
        return self.credentials_dir / f"{user}.json"

    def credentials(self, user: str) -> dict[str, dict]:
        """Every credential of the user, decrypted: ``{name: {kind, created, public, secret}}``."""
        path = self.credentials_file(user)
        data = self._read_json(path, f"the credentials of {user}")
        if not data:
            return {}
        fernet, kid = self.fernet, self._fernet[1]
        if data.get("key_id") != kid:
            raise CryptError(f"the credentials of {user} ({path}) were encrypted with another key "
                             f"(key id {data.get('key_id')}, this one is {kid}): set ${config.CRYPT_KEY.name} "
                             "to the key they were made with, or restore secrets/credentials-key.")
        try:
            return json.loads(fernet.decrypt(data["token"].encode()))
        except (InvalidToken, KeyError, ValueError):
            raise CryptError(f"the credentials of {user} ({path}) cannot be decrypted: "
                             "the file is damaged or was made with another key.") from None

    def _write_credentials(self, user: str, entries: dict) -> None:
        self.credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = self.fernet.encrypt(json.dumps(entries).encode()).decode()
        data = {"format": FORMAT, "key_id": self._fernet[1], "token": token}
        write_private(self.credentials_file(user), json.dumps(data).encode())

    def list_credentials(self, user: str) -> list[dict]:
        """Name, kind, created, ``secret: "set"``, fingerprint and the non-secret fields of each
        of the user's own credentials (server-scoped ones are listed with their server)."""
        return [self._shown(name, e) for name, e in sorted(self.credentials(user).items()) if "/" not in name]

    def _shown(self, name: str, entry: dict) -> dict:
        return {"name": name, "kind": entry["kind"], "created": entry["created"], **entry["public"],
                "secret": "set", "fingerprint": fingerprint(entry, self._fernet[2])}

    def put_credential(self, user: str, name: str, kind: str, public: dict, secret: dict,
                       replace_check=None) -> dict:
        """Store one credential; ``replace_check(old_entry)`` may refuse replacing one."""
        if not CREDENTIAL_NAME.match(name):
            raise ConfigError(f"{name!r} is not a credential name (lower-case letters, digits, - and _).")
        with self.locked(user):
            entries = self.credentials(user)
            if name in entries and replace_check:
                replace_check(entries[name])
            entries[name] = {"kind": kind, "created": now(), "public": public, "secret": secret}
            self._write_credentials(user, entries)
        return {"name": name, "kind": kind, "created": entries[name]["created"], **public}

    def deletable_credential(self, user: str, name: str) -> dict:
        """The entry of a credential that may be deleted: NotFound, or Conflict while in use."""
        entries = self.credentials(user)
        if name not in entries:
            raise NotFound(f"{user} has no credential {name!r}.")
        users = sorted(s.get("name") for s in self.adaptors(user) if s.get("credentials") == name)
        users += sorted(f"{server}/{s.get('name')}" for server, record in self.servers(user).items()
                        for s in record.get("adaptors", []) if s.get("credentials") == name)
        if users:
            raise Conflict(f"credential {name!r} is used by the adaptor(s) {', '.join(users)}: "
                           "delete or change them first.")
        return entries[name]

    def delete_credential(self, user: str, name: str) -> None:
        with self.locked(user):
            self.deletable_credential(user, name)
            entries = self.credentials(user)
            del entries[name]
            self._write_credentials(user, entries)

    def backend_credentials(self, user: str, names) -> dict[str, dict]:
        """The backend entries (see ``registry.backend``) of the named credentials."""
        names = set(names)
        if not names:
            return {}
        entries = self.credentials(user)
        missing = sorted(names - entries.keys())
        if missing:
            raise ConfigError(f"the credential(s) {', '.join(missing)} of {user} do not exist")
        return {n: backend_entry(entries[n]) for n in names}

    def federation(self, user: str, home: str, server: str = "") -> tuple[list[dict], dict[str, dict]]:
        """The user's adaptors as their server and their jobs see them: ``home`` (a local
        folder) first, then the stored ones, then (for a named server) that server's own;
        with the backend entries of their credentials. ``server``: a named server's name
        ("" for the default server, which has none of its own)."""
        specs = [{"name": "home", "type": "local", "path": str(home)}] + self.adaptors(user)
        if server:
            specs += self.server_adaptors(user, server)
        load_specs(specs)  # before reading credentials from them
        return specs, self.backend_credentials(user, {s["credentials"] for s in specs if s.get("credentials")})

    # -- named servers (micro-infrastructure API) --------------------------------

    def server_file(self, user: str, server: str) -> Path:
        if not SERVER_NAME.match(server):
            raise ConfigError(f"{server!r} is not a server name (lower-case letters, digits and -, "
                              "at most 32, starting with a letter or digit).")
        return self._user_dir(user) / "servers" / f"{server}.json"

    def server(self, user: str, server: str) -> dict | None:
        """The stored record of one named server, or None."""
        path = self.server_file(user, server)
        return self._read_json(path, f"the server {server} of {user}") or None

    def servers(self, user: str) -> dict[str, dict]:
        """Every stored named-server record of the user, by name."""
        folder = self._user_dir(user) / "servers"
        if not folder.is_dir():
            return {}
        return {p.stem: self._read_json(p, f"the server {p.stem} of {user}")
                for p in sorted(folder.glob("*.json")) if SERVER_NAME.match(p.stem)}

    def server_adaptors(self, user: str, server: str) -> list[dict]:
        """The extra adaptor specs stored for one named server ([] for none, or no record)."""
        specs = (self.server(user, server) or {}).get("adaptors", [])
        if not isinstance(specs, list):
            raise ConfigError(f"the adaptors of {user}'s server {server} are not a list")
        return specs

    def check_server(self, user: str, server: str, specs, credentials: dict[str, tuple]) -> None:
        """Refuse a server's (validated) specs: taken names, bad credentials. ``credentials``:
        ``{store name: (kind, public, secret)}`` to be stored with it. ConfigError names the
        adaptor (``adaptors[i]``)."""
        entries = {**self.credentials(user),
                   **{n: {"kind": k, "public": p, "secret": s} for n, (k, p, s) in credentials.items()}}
        own = {s.get("name") for s in self.adaptors(user)}
        for i, spec in enumerate(specs):
            try:
                if spec.name in own:
                    raise ConfigError(f"the name {spec.name!r} is one of your own adaptors, which every "
                                      "server has already: choose another.")
                if spec.credentials and "/" in spec.credentials \
                        and spec.credentials != server_credential(server, spec.name):
                    raise ConfigError("'credentials' names a credential of another server.")
                self.check_adaptor(user, spec, entries)
            except ConfigError as e:
                raise ConfigError(f"adaptors[{i}] ({spec.name}): {e.message}") from None

    def put_server(self, user: str, server: str, record: dict, specs, credentials: dict[str, tuple]) -> dict:
        """Store a new named server's record and its adaptors' credentials (``check_server``);
        Conflict if the name is taken. The credentials are written first: a record never
        names a credential that is not there."""
        path = self.server_file(user, server)
        stored = {**record, "name": server, "created": now(),
                  "adaptors": [s.model_dump(mode="json", exclude_none=True) for s in specs]}
        with self.locked(user):
            if path.exists():
                raise Conflict(f"{user} already has a micro-infrastructure named {server!r}.")
            self.check_server(user, server, specs, credentials)
            old = self.credentials(user)
            if credentials:
                entries = dict(old)
                for name, (kind, public, secret) in credentials.items():
                    entries[name] = {"kind": kind, "created": stored["created"], "public": public, "secret": secret}
                self._write_credentials(user, entries)
            try:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                write_private(path, json.dumps(stored, indent=1).encode())
            except BaseException:
                if credentials:
                    self._write_credentials(user, old)
                raise
        return stored

    def delete_server(self, user: str, server: str) -> bool:
        """Remove a named server's record and its credentials; False if there was none."""
        path = self.server_file(user, server)
        with self.locked(user):
            entries = self.credentials(user)
            kept = {n: e for n, e in entries.items() if not n.startswith(server + "/")}
            if not kept:  # no credential left: no file, as before the first one
                with contextlib.suppress(FileNotFoundError):
                    self.credentials_file(user).unlink()
            elif len(kept) != len(entries):
                self._write_credentials(user, kept)
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        return True

    def server_credentials(self, user: str, server: str) -> dict[str, dict]:
        """``{adaptor: {kind, secret: "set", fingerprint, non-secret fields}}`` for the server's
        adaptors that have a credential (their own or one of the user's)."""
        entries = self.credentials(user) if self.server(user, server) else {}
        shown = {}
        for spec in self.server_adaptors(user, server):
            name = spec.get("credentials")
            if name in entries:
                shown[spec["name"]] = {k: v for k, v in self._shown(name, entries[name]).items()
                                       if k not in ("name", "created")}
                shown[spec["name"]]["credential"] = name if "/" not in name else None
        return shown

    # -- JWT keys --------------------------------------------------------------

    def jwt_keys_file(self, user: str, create: bool = False) -> Path:
        """Where ``user``'s JWT keys are (module docstring); ``create``: its folder made."""
        old = self._user_dir(user) / "jwt-keys.json"
        if self.handover_dir is None:
            return old
        folder = self.handover_dir / user
        path = folder / "jwt-keys.json"
        moving = old.exists() and not path.exists()  # kept under accounts/ before accounts existed
        if create or moving:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # shared with the account at its start
        if moving:
            os.replace(old, path)
            os.chmod(path, 0o640)
        return path

    def jwt_keys(self, user: str) -> list[dict]:
        return self._read_json(self.jwt_keys_file(user), f"the JWT keys of {user}").get("keys", [])

    def put_jwt_key(self, user: str, kid: str, alg: str, public_key: str) -> dict:
        if not KID.match(kid):
            raise ConfigError(f"{kid!r} is not a key id (letters, digits, '.', '_' and '-', at most 64).")
        entry = {"kid": kid, "alg": alg, "public_key": public_key}
        with self.locked(user):
            keys = [k for k in self.jwt_keys(user) if k.get("kid") != kid] + [entry]
            keys.sort(key=lambda k: k["kid"])
            write_private(self.jwt_keys_file(user, create=True), json.dumps({"keys": keys}, indent=1).encode(),
                          mode=0o640)
        return entry

    def delete_jwt_key(self, user: str, kid: str) -> None:
        with self.locked(user):
            keys = self.jwt_keys(user)
            kept = [k for k in keys if k.get("kid") != kid]
            if len(kept) == len(keys):
                raise NotFound(f"{user} has no JWT key {kid!r}.")
            write_private(self.jwt_keys_file(user, create=True), json.dumps({"keys": kept}, indent=1).encode(),
                          mode=0o640)


def backend_entry(entry: dict) -> dict:
    """What ``registry.backend`` reads for one stored credential."""
    kind, public, secret = entry["kind"], entry["public"], entry["secret"]
    if kind == "password":
        return {k: v for k, v in (("username", public.get("username")), ("password", secret["password"])) if v}
    if kind == "ssh-key":
        return {"private_key": secret["private_key"]}
    if kind == "s3":
        return {k: secret[k] for k in ("key", "secret", "token") if secret.get(k)}
    raise ConfigError(f"unknown credential kind {kind!r}")


# kind -> (required secret fields, optional secret fields, optional public fields)
_KINDS = {
    "password": ({"password"}, set(), {"username"}),
    "ssh-key": ({"private_key"}, set(), set()),
    "s3": ({"key", "secret"}, {"token"}, set()),
}


def credential_fields(kind: str) -> tuple[list[str], list[str]]:
    """``(public, secret)`` field names of a credential kind (secrets: never shown back)."""
    required, optional, public = _KINDS[kind]
    return sorted(public), sorted(required) + sorted(optional)


def parse_credential(body) -> tuple[str, dict, dict]:
    """(kind, public, secret) from an API body; ConfigError names the problem, never a value."""
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object with a 'kind'.")
    kind = body.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"'kind' must be one of {', '.join(sorted(_KINDS))} or sftp-key-setup.")
    required, optional, public_fields = _KINDS[kind]
    unknown = sorted(set(body) - required - optional - public_fields - {"kind"})
    if unknown:
        raise ConfigError(f"a {kind} credential has no field(s) {', '.join(unknown)}.")
    missing = sorted(required - set(body))
    if missing:
        raise ConfigError(f"a {kind} credential needs {', '.join(missing)}.")
    for field in set(body) - {"kind"}:
        if not isinstance(body[field], str) or not body[field]:
            raise ConfigError(f"{field!r} must be a non-empty string.")
    public = {k: body[k] for k in public_fields if k in body}
    secret = {k: body[k] for k in required | optional if k in body}
    if kind == "ssh-key":
        from .sshkeys import public_key_of

        public["public_key"] = public_key_of(secret["private_key"])
    return kind, public, secret
