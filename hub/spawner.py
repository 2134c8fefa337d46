"""``SkerrySpawner``: a user's server is a micro-infrastructure, not only a Jupyter server.

Local backend. Starting a server starts one process group (``skerry.hub.microinfra``)
holding the user's Jupyter server and their WebDAV endpoint over their adaptors: the
home folder (``home_dir_template``, a folder per user) and the adaptors the user stored
(``accounts_dir``, credentials from ``credentials_dir``), read at each start. The rules of JupyterHub's ``Spawner``:

- ``start`` returns the Jupyter server's (ip, port); the WebDAV port is kept in
  ``dav_port`` and routed at ``/dav/<name>/`` by ``SkerryProxy``;
- ``poll`` returns None while the group runs, and an exit status once either
  member has died (the group then stops itself);
- ``stop`` stops the whole group; no process of it is left afterwards;
- ``get_state``/``load_state`` keep pid, process start time and ports, so a
  restarted hub finds running groups again and never mistakes a reused pid for one.
"""

import asyncio
import contextlib
import os
import re
import signal
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner, SpawnException
from jupyterhub.utils import random_port
from traitlets import Integer, Unicode, default

from skerry.adaptors.config import ENV as ADAPTORS_ENV
from skerry.adaptors.config import write_config
from skerry.adaptors.store import AccountStore
from skerry.errors import ConfigError
from skerry.extensions import CONFIG_DIR as JUPYTER_CONFIG_DIR
from skerry.kernels import JUPYTER_PATH_DIR
from skerry.kernels.session import POOLS_ENV

from skerry.process import group_members, is_running, kill_group, start_time

_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class SkerrySpawner(SimpleLocalProcessSpawner):
    """Spawns a micro-infrastructure (Jupyter + WebDAV) per user server, as local processes."""

    dav_port = Integer(0, help="Port of the WebDAV endpoint of the running micro-infrastructure.")
    started = Integer(0, help="Start time (clock ticks since boot) of the group leader.")

    adaptors_dir = Unicode(
        "",
        config=True,
        help="""Folder (private: mode 0700) for each server's adaptor configuration file.

        The file holds credentials: it is handed to the micro-infrastructure through
        ``$SKERRY_ADAPTORS`` and never lies in a folder the user's WebDAV serves.
        """,
    )

    accounts_dir = Unicode(
        "",
        config=True,
        help="""Folder of per-user account files (``<accounts_dir>/<user>/``), outside every home.

        Holds each user's ``adaptors.json`` (their adaptor specs, no secrets) and
        ``jwt-keys.json`` (public keys for WebDAV JWT bearer authentication). The
        micro-infrastructure is told where the user's JWT keys are through ``$SKERRY_JWT_KEYS``.
        """,
    )

    credentials_dir = Unicode(
        "",
        config=True,
        help="""Folder of the users' credential stores (``<user>.json``, encrypted at rest).

        The credentials the user's adaptors name are decrypted when a server starts and
        handed over in the 0600 adaptor configuration file only.
        """,
    )

    credentials_key_file = Unicode(
        "",
        config=True,
        help="The credentials' Fernet key file (made once), used when $SKERRY_CRYPT_KEY is not set.",
    )

    @property
    def adaptors_file(self) -> str:
        return os.path.join(self.adaptors_dir, f"{self.user.name}--{self.name or 'default'}.json")

    @property
    def account_store(self) -> AccountStore:
        return AccountStore(self.accounts_dir, self.credentials_dir, self.credentials_key_file)

    def write_adaptor_config(self) -> None:
        """The 0600 adaptor configuration file (home, then the user's stored adaptors);
        SpawnException (not a traceback) if it is broken. Changes to the stored adaptors
        apply at the next start of the server."""
        try:
            if self.accounts_dir:
                specs, credentials = self.account_store.federation(self.user.name, self.home_dir)
            else:
                specs, credentials = [{"name": "home", "type": "local", "path": self.home_dir}], {}
            write_config(self.adaptors_file, specs, credentials)
        except ConfigError as e:
            raise SpawnException(f"the adaptors of {self.user.name} cannot be set up: {e.message.rstrip('.')}. "
                                 f"Fix them (/services/skerry/api/v1/users/{self.user.name}/adaptors) "
                                 "and start again.",
                                 reason="bad_adaptors", status_code=500) from None

    @default("cmd")
    def _default_cmd(self):
        return [sys.executable, "-m", "skerry.hub.microinfra", "jupyterhub-singleuser"]

    @property
    def dav_prefix(self) -> str:
        """URL path of this server's WebDAV endpoint on the proxy."""
        base = f"/dav/{self.user.name}/"
        return base + f"{self.name}/" if self.name else base

    def get_env(self):
        env = super().get_env()
        env["SKERRY_DAV_PORT"] = str(self.dav_port)
        env["SKERRY_DAV_PREFIX"] = self.dav_prefix
        env["SKERRY_USER"] = self.user.name
        env[ADAPTORS_ENV] = self.adaptors_file
        if self.accounts_dir:
            # the file may not exist yet: no keys, no JWT accepted
            env["SKERRY_JWT_KEYS"] = os.path.join(self.accounts_dir, self.user.name, "jwt-keys.json")
        # our Jupyter config first: it enables the skerry server extension
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            p for p in (JUPYTER_CONFIG_DIR, env.get("JUPYTER_CONFIG_PATH")) if p)
        # the skerry kernels first: "Python 3 (skerry)" and "Python 3 (skerry, GPU)"
        env["JUPYTER_PATH"] = os.pathsep.join(p for p in (JUPYTER_PATH_DIR, env.get("JUPYTER_PATH")) if p)
        # what the kernels' session connects to (set by `skerry up` in the hub's environment)
        data_dir = os.environ.get("SKERRY_DATA_DIR")
        if data_dir:
            from skerry.workload.manager import addresses_file

            env[POOLS_ENV] = addresses_file(data_dir)
        if os.environ.get("SKERRY_PUBLIC_URL"):
            env["SKERRY_URL"] = os.environ["SKERRY_PUBLIC_URL"].rstrip("/")
        return env

    async def start(self):
        if not _SAFE_NAME.match(self.user.name):
            raise SpawnException(f"user name {self.user.name!r} cannot name a home folder",
                                 reason="bad_user_name", status_code=400)
        if os.path.exists(self.home_dir) and not os.path.isdir(self.home_dir):
            raise SpawnException(f"the home of {self.user.name} ({self.home_dir}) is not a folder",
                                 reason="bad_home", status_code=500)
        self.dav_port = random_port()
        os.makedirs(self.home_dir, 0o755, exist_ok=True)
        os.makedirs(self.adaptors_dir, 0o700, exist_ok=True)
        self.write_adaptor_config()
        ip_port = await super().start()
        self.started = start_time(self.pid) or 0
        # the hub waits for Jupyter; WebDAV must answer too before the server counts as up
        await self._wait_for_dav()
        return ip_port

    async def _wait_for_dav(self):
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while asyncio.get_running_loop().time() < deadline:
            status = self.proc.poll()
            if status is not None:
                raise SpawnException(
                    f"the micro-infrastructure of {self.user.name} exited at start "
                    f"(status {status}); the hub log says why", reason="exited_at_start", status_code=500)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.dav_port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise SpawnException(f"the WebDAV endpoint of {self.user.name} did not start in "
                             f"{self.start_timeout}s", reason="webdav_timeout", status_code=500)

    async def poll(self):
        pgid = self.pid
        if self.proc is None and pgid and not is_running(pgid, self.started or None):
            # after a hub restart: the leader is gone, or its pid now names another process
            if not is_running(pgid):
                self._kill_leftovers(pgid)
            self.clear_state()
            return 0
        status = await super().poll()
        if status is not None and pgid:
            self._kill_leftovers(pgid)
        return status

    async def stop(self, now=False):
        pgid = self.pid
        await super().stop(now=now)
        # the decrypted credentials live on disk only while the server runs
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.adaptors_file)
        if pgid:
            self._kill_leftovers(pgid)
            for _ in range(50):  # the kernel needs a moment to reap them
                if not group_members(pgid):
                    break
                await asyncio.sleep(0.1)

    @staticmethod
    def _kill_leftovers(pgid: int) -> None:
        """Kill what is left of a group whose leader has exited.

        The leader is a session leader (``start_new_session``), so its pid is the
        group id, and the kernel gives no new process that pid while the group has members.
        """
        if group_members(pgid):
            kill_group(pgid, signal.SIGKILL)

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update(dav_port=self.dav_port, started=self.started)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.dav_port = state.get("dav_port", 0)
        self.started = state.get("started", 0)

    def clear_state(self):
        super().clear_state()
        self.dav_port = 0
        self.started = 0
