"""The data dir of one skerry platform: its layout, secrets and stable ports.

Layout (``skerry up --data-dir DIR``)::

    DIR/                mode 0711: accounts pass through to their homes, nobody lists it
    DIR/secrets/        mode 0700: admin-api-token, admin-password, cookie secret, proxy token
    DIR/users/<name>/   each user's home adaptor, owned by the user's account, mode 0700
    DIR/accounts/<name>/ mode 0700: adaptors.json (specs, no secrets), servers/
    DIR/secrets/credentials/<name>.json  each user's credentials, encrypted (Fernet)
    DIR/run/            mode 0711: pid files, logs and ports.json (the hub's internal ports)
    DIR/run/users/<name>/  what the platform hands that user's processes (``handover``):
                        jwt-keys.json (public keys), each running server's adaptor
                        configuration; owned by the platform, group of the user's account
    DIR/jupyterhub.sqlite, catalog.sqlite, profiles.sqlite, usage.sqlite

Everything here is created once and reused on restart, so users, tokens and running
servers survive a restart of the platform. The platform's own files are private to it
(``skerry up`` runs with umask 077): no user account reads a secret, a database or a log.
"""

import json
import os
import secrets
from pathlib import Path

from .errors import ConfigError
from .localfiles import write_private
from .ports import quiet_port

# internal ports chosen once per data dir: running servers keep the hub API URL they were given
PORT_NAMES = ("hub", "proxy_api", "service")


SERVER_LOG_LIMIT = 5 * 2**20  # bytes: a server's log starts anew at a start past this size


def server_file(handover: str | os.PathLike, server: str, kind: str) -> Path:
    """A file of a user's server (``""``: the default one) in the user's handover folder:
    ``<server>.<kind>`` (``default.<kind>`` for the default server)."""
    return Path(handover) / f"{server or 'default'}.{kind}"


def server_log(handover: str | os.PathLike, server: str) -> Path:
    """The log of a user's server: what the server's processes print, readable by the user's
    account (0640, its group)."""
    return server_file(handover, server, "log")


class DataDir:
    """One platform's data dir. ``ensure()`` creates it; the other methods assume it exists."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self.secrets = self.path / "secrets"
        self.users = self.path / "users"
        self.accounts = self.path / "accounts"
        self.run = self.path / "run"
        self.handover_root = self.run / "users"

    def ensure(self) -> "DataDir":
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"data dir {self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for folder, mode in ((self.path, 0o711), (self.users, 0o711), (self.run, 0o711),
                                 (self.handover_root, 0o711), (self.accounts, 0o700), (self.secrets, 0o700)):
                folder.mkdir(mode=mode, exist_ok=True)
                os.chmod(folder, mode)  # also of a folder made before (by an older skerry, or by hand)
        except OSError as e:
            raise ConfigError(f"cannot create data dir {self.path}: {e.strerror}") from e
        return self

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.path / 'jupyterhub.sqlite'}"

    @property
    def credentials_dir(self) -> Path:
        """Each user's credentials, encrypted (see ``skerry.adaptors.store``)."""
        return self.secrets / "credentials"

    @property
    def credentials_key_file(self) -> Path:
        """The Fernet key of the credentials when ``$SKERRY_CRYPT_KEY`` is not set."""
        return self.secrets / "credentials-key"

    def user_home(self, name: str) -> Path:
        return self.users / name

    def handover(self, name: str) -> Path:
        """``run/users/<name>/``: the files the platform hands user ``name``'s processes."""
        return self.handover_root / name

    @property
    def trust_file(self) -> Path:
        """``run/users/.trust.pem``: the CAs users' servers trust under HTTPS (``skerry.tls``),
        readable by every account; no user name starts with a dot, so no user's folder is it."""
        return self.handover_root / ".trust.pem"

    def secret(self, name: str, nbytes: int = 32) -> str:
        """The secret stored in ``secrets/<name>``, generated (mode 0600) on first use."""
        path = self.secrets / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text().strip()
            if not value:
                raise ConfigError(f"secret file {path} is empty: delete it to have a new one made") from None
            return value
        value = secrets.token_hex(nbytes)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value

    @property
    def admin_api_token(self) -> str:
        return self.secret("admin-api-token")

    def ports(self, ip: str = "127.0.0.1", avoid: frozenset[int] = frozenset()) -> dict[str, int]:
        """The hub's internal ports, chosen free once and kept in ``run/ports.json``, each
        other than the others and than ``avoid`` (the public port: free now, as the proxy has
        not bound it yet; a choice that met it once made the hub's service fail its bind)."""
        path = self.run / "ports.json"
        try:
            ports = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            ports = {}
        chosen = [ports.get(n) for n in PORT_NAMES]
        if not all(isinstance(p, int) for p in chosen) or len(set(chosen)) < len(chosen) or avoid & set(chosen):
            ports = {}
            for name in PORT_NAMES:
                ports[name] = quiet_port(ip, avoid=avoid | set(ports.values()))
            write_private(path, json.dumps(ports))
        return ports
