"""The data dir of one skerry platform: its layout, secrets and stable ports.

Layout (``skerry up --data-dir DIR``)::

    DIR/secrets/        mode 0700: admin-api-token, admin-password, cookie secret, proxy token
    DIR/users/<name>/   each user's home adaptor (served by their WebDAV: nothing private here)
    DIR/accounts/<name>/ mode 0700: adaptors.json (specs, no secrets), jwt-keys.json (public keys)
    DIR/secrets/credentials/<name>.json  each user's credentials, encrypted (Fernet)
    DIR/run/            pid files, logs and ports.json (the hub's internal ports)
    DIR/jupyterhub.sqlite

Everything here is created once and reused on restart, so users, tokens and running
servers survive a restart of the platform.
"""

import json
import os
import secrets
import socket
from pathlib import Path

from .errors import ConfigError

# internal ports chosen once per data dir: running servers keep the hub API URL they were given
PORT_NAMES = ("hub", "proxy_api", "service")


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class DataDir:
    """One platform's data dir. ``ensure()`` creates it; the other methods assume it exists."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self.secrets = self.path / "secrets"
        self.users = self.path / "users"
        self.accounts = self.path / "accounts"
        self.run = self.path / "run"

    def ensure(self) -> "DataDir":
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"data dir {self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.users.mkdir(exist_ok=True)
            self.accounts.mkdir(mode=0o700, exist_ok=True)
            self.run.mkdir(exist_ok=True)
            self.secrets.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create data dir {self.path}: {e.strerror}") from e
        os.chmod(self.secrets, 0o700)
        os.chmod(self.accounts, 0o700)
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

    def secret(self, name: str, nbytes: int = 32) -> str:
        """The secret stored in ``secrets/<name>``, generated (mode 0600) on first use."""
        path = self.secrets / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text().strip()
            if not value:
                raise ConfigError(f"secret file {path} is empty: delete it to have a new one made")
            return value
        value = secrets.token_hex(nbytes)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value

    @property
    def admin_api_token(self) -> str:
        return self.secret("admin-api-token")

    def ports(self, ip: str = "127.0.0.1") -> dict[str, int]:
        """The hub's internal ports, chosen free once and kept in ``run/ports.json``."""
        path = self.run / "ports.json"
        try:
            ports = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            ports = {}
        if not all(isinstance(ports.get(n), int) for n in PORT_NAMES):
            ports = {n: _free_port(ip) for n in PORT_NAMES}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ports))
            tmp.replace(path)
        return ports
