"""``SkerrySpawner``: a user's server is a micro-infrastructure, not only a Jupyter server.

Local backend; what every backend shares (the start queue, profiles, quotas, the adaptors) is
``MicroInfrastructure`` (:mod:`skerry.hub.plugins.microinfra`). Starting a server starts one
process group (``skerry.hub.userserver.launcher``) holding the user's Jupyter server and
their WebDAV endpoint over their adaptors: the home folder (``home_dir_template``, a folder
per user) and the adaptors the user stored (``accounts_dir``, credentials from
``credentials_dir``), read at each start.

Identity (:mod:`skerry.accounts`): with ``switch_users`` (the default where the hub may
switch users, i.e. runs as root) the whole group runs as the hub user's own OS account
(``account_template``), made at the first start with the home as its own (mode 0700): no
supplementary groups, umask 077, an environment with nothing of the platform's but the
user's own server token, no ``--allow-root``. What the server must read of the platform's
(its adaptor configuration with the decrypted credentials, the user's JWT public keys) is
handed over in the user's folder ``handover_dir/<user>/`` (the platform's, group of the
account, mode 2750); the configuration file is the account's own (0600) and removed at stop.
Without ``switch_users`` (single-user mode) the group runs as the hub's own account.

Many users at once (:mod:`skerry.hub.plugins.startqueue`, :mod:`skerry.ports`): a start first
waits its turn in the hub's start queue (``run_pre_spawn_hook``, before JupyterHub's
``start_timeout`` runs), telling the spawn page its place (``progress``); its two ports are
leased and held by the hub until it stops, so no other process is given them; and the
server counts as up only once each endpoint has proved, on its own port, that it is the
one started now (an HMAC of a challenge under a key made for this start): anything else
answering there fails the start with a sentence, and the hub never routes to it.

The rules of JupyterHub's ``Spawner``:

- ``start`` returns the Jupyter server's (ip, port); the WebDAV port is kept in
  ``dav_port`` and routed at ``/dav/<name>/`` by ``SkerryProxy``;
- ``poll`` returns None while the group runs, and an exit status once either
  member has died (the group then stops itself);
- ``stop`` stops the whole group; no process of it is left afterwards;
- ``get_state``/``load_state`` keep pid, process start time and ports, so a
  restarted hub finds running groups again and never mistakes a reused pid for one.

Profiles (:mod:`skerry.hub.plugins.selection`), read from the store (``DATA_DIR/profiles.sqlite``)
at each start and at each showing of the spawn page, so an admin's change applies to the
next start with no hub restart:

- the spawn's ``user_options`` choose the profile; a refusal is a ``SpawnException`` with
  HTTP 403 (400 for malformed ``user_options``) raised at the top of ``start``, before any
  process exists: JupyterHub answers the REST caller with that status and sentence, and the
  spawn page shows it above the form;
- the resolved profile is kept in ``profile`` (and the server's state) while it runs; its
  adaptors come after home, the user's stored adaptors and the server's own; its resources
  are enforced by :mod:`skerry.limits` (``limits``: how), set in the leader before exec;
- quotas (:mod:`skerry.hub.stores.quotas`): ``admit`` before any process starts (refusal: 403 with its
  sentence), ``release`` when the server stops or fails to start, with the CPU seconds its
  processes used (approximate: see :func:`skerry.limits.cpu_seconds`).
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner, SpawnException
from traitlets import Any, Bool, Integer, Unicode, default

from skerry import config
from skerry.accounts import (HUB_NAME, SAFE_PATH, Account, AccountError, AccountPolicy, account_name, become,
                             can_switch_users, ensure_account, give, lock_account, share_folder)
from skerry.adaptors.config import write_config
from skerry.datadir import SERVER_LOG_LIMIT, server_file, server_log
from skerry.errors import ConfigError
from skerry.logtail import error_lines, sentence

from skerry.process import descendants, group_members, is_running, kill_group, start_time
from skerry.tutorials import new_home

from skerry.hub.plugins.microinfra import MicroInfrastructure
from skerry.limits import Enforcement, Limits, cpu_seconds
from skerry.ports import IdentityError, WrongServer, check_identity, new_key, port_leases
from skerry.hub.plugins.server_log import page as log_page
from skerry.tls import TRUST_VARIABLES


_DELETING: set = set()  # the delete_forever tasks running: see its docstring


class SkerrySpawner(MicroInfrastructure, SimpleLocalProcessSpawner):
    """Spawns a micro-infrastructure (Jupyter + WebDAV) per user server, as local processes."""

    dav_port = Integer(0, help="Port of the WebDAV endpoint of the running micro-infrastructure.")
    started = Integer(0, help="Start time (clock ticks since boot) of the group leader.")
    limits = Any(None, allow_none=True, help="How the profile's resources are enforced (limits.Enforcement.describe).")

    trust_file = Unicode(
        "",
        config=True,
        help="""Under HTTPS: the CA bundle (PEM, readable by every account) the server's processes
        trust, as ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE``: the public CAs and the platform's
        own certificate, so that they reach the platform at its public URL (``skerry.tls``).
        Empty: nothing is set.""",
    )

    handover_dir = Unicode(
        "",
        config=True,
        help="""Folder of the users' handover folders (``<handover_dir>/<user>/``): what the
        platform hands a user's processes, shared with the user's account (mode 2750).

        Holds each running server's adaptor configuration (``<server>.adaptors.json``, the
        account's own, mode 0600: it holds credentials), handed to the micro-infrastructure
        through ``$SKERRY_ADAPTORS``, and the user's ``jwt-keys.json``; never a folder the
        user's WebDAV serves.
        """,
    )

    account_template = Unicode(
        AccountPolicy.template,
        config=True,
        help="The OS account of each hub user, with {username} ('.' becomes '-'); see skerry.accounts.",
    )

    switch_users = Bool(
        config=True,
        help="""Run each micro-infrastructure as its user's own OS account (``account_template``).

        Default: where this hub may switch users (root, or CAP_SETUID and CAP_SETGID). Off
        (single-user mode), every server runs as the hub's own account: let one user in only.
        """,
    )

    @default("switch_users")
    def _default_switch_users(self):
        return can_switch_users() is None

    account: Account | None = None  # the account the running server runs as (None: the hub's)
    identity_key = ""  # the key the server started now proves itself with (its environment only)
    _log_start = 0  # the size of the server's log when this start began: its lines come after
    @property
    def handover(self) -> str:
        """This user's handover folder (see ``handover_dir``)."""
        return os.path.join(self.handover_dir, self.user.name)

    @property
    def adaptors_file(self) -> str:
        return str(server_file(self.handover, self.name, "adaptors.json"))

    @property
    def server_log(self) -> str:
        """What this server's processes print (``skerry.datadir.server_log``); the user reads it
        at ``/hub/skerry/log[/<server>]`` (``hub.plugins.server_log``)."""
        return str(server_log(self.handover, self.name))

    def _open_server_log(self) -> tuple[int, int]:
        """The server's log, open for appending (a new one past ``SERVER_LOG_LIMIT``), mode
        0640 in the group of the account; and its size now: this start's lines come after."""
        fd = os.open(self.server_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            if os.fstat(fd).st_size > SERVER_LOG_LIMIT:
                os.ftruncate(fd, 0)
            os.fchmod(fd, 0o640)
            if self.account is not None:
                os.fchown(fd, -1, self.account.gid)
            return fd, os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise

    def _handover_root(self) -> str | None:
        return self.handover_dir or None

    def write_adaptor_config(self) -> list[str]:
        """The 0600 adaptor configuration file (``adaptor_configuration``); returns the
        adaptors' names."""
        specs, credentials = self.adaptor_configuration(self.home_dir)
        try:
            write_config(self.adaptors_file, specs, credentials)
        except ConfigError as e:
            raise self.bad_adaptors(e) from None
        if self.account is not None:
            give(self.adaptors_file, self.account)  # 0600 as written: readable by its server alone
        return [spec["name"] for spec in specs]

    def _enforcement(self) -> Enforcement:
        limits = Limits.from_resources((self.profile or {}).get("resources"))
        # named after the OS account, unique on the machine: another platform's alice never shares it
        owner = account_name(self.user.name, self._policy()) if self.switch_users else self.user.name
        return Enforcement.plan(limits, f"{owner}--{self.name or 'default'}")

    _active_enforcement = None  # set only while SimpleLocalProcessSpawner.start makes the process

    def make_preexec_fn(self, name):
        enforcement, account, home = self._active_enforcement, self.account, self.home_dir
        switch = become(account) if account is not None else None

        def preexec():
            if enforcement is not None:
                enforcement.preexec()  # as root, before the switch: inherited by every process of the server
            if switch is not None:
                switch()  # no supplementary groups, the account's gid and uid, umask 077
            os.chdir(home)

        return preexec

    def _policy(self) -> AccountPolicy:
        return AccountPolicy(template=self.account_template)

    def _prepare_identity(self) -> Account | None:
        """The account this server runs as (made on first use, its home its own), its handover
        folder shared with it; None in single-user mode (home and folder the hub's own)."""
        new_home(self.home_dir)  # a new home starts with the tutorials (the account gets them below)
        if not self.switch_users:
            os.makedirs(self.handover, 0o700, exist_ok=True)
            return None
        account = ensure_account(self.user.name, self.home_dir, self._policy())
        share_folder(self.handover, account)
        return account

    @default("cmd")
    def _default_cmd(self):
        # the Jupyter server through skerry.quickstart: 1.5-2 s of CPU less per start
        return [sys.executable, "-m", "skerry.hub.userserver.launcher",
                sys.executable, "-m", "skerry.quickstart", "jupyterhub.singleuser"]

    def user_env(self, env):
        env = super().user_env(env)
        if self.account is not None:
            env.update(USER=self.account.name, LOGNAME=self.account.name, SHELL=self.account.shell)
            # this Python's scripts first (jupyterhub-singleuser, papermill, skerry), then the system's
            env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), SAFE_PATH))
        return env

    def get_env(self):
        env = super().get_env()
        env[config.DAV_PORT.name] = str(self.dav_port)
        env[config.DAV_PREFIX.name] = self.dav_prefix
        env[config.USER.name] = self.user.name
        env[config.SERVER.name] = self.name or ""
        env[config.IDENTITY_KEY.name] = self.identity_key
        env[config.ADAPTORS.name] = self.adaptors_file
        env.update(config.forward(config.DAV_FRONT))  # the admin's choice of the WebDAV front, where made
        if self.accounts_dir:
            # the file may not exist yet: no keys, no JWT accepted
            env[config.JWT_KEYS.name] = str(self.account_store.jwt_keys_file(self.user.name))
        if self.trust_file:
            env.update(dict.fromkeys(TRUST_VARIABLES, self.trust_file))
        return self.skerry_env(env)

    def _refuse_early(self) -> None:
        if not HUB_NAME.match(self.user.name):
            raise SpawnException(f"user name {self.user.name!r} cannot name a home folder",
                                 reason="bad_user_name", status_code=400)
        if os.path.exists(self.home_dir) and not os.path.isdir(self.home_dir):
            raise SpawnException(f"the home of {self.user.name} ({self.home_dir}) is not a folder",
                                 reason="bad_home", status_code=500)

    async def _start_admitted(self):
        # held by the hub until stop: no other start, kernel or process is handed these ports
        self.port, self.dav_port = port_leases().lease(self.queue_key, 2)
        self.identity_key = new_key()
        try:
            return await self._start_on_ports()
        except BaseException:
            port_leases().release(self.queue_key)
            raise

    async def _start_on_ports(self):
        try:
            self.account = await asyncio.to_thread(self._prepare_identity)
        except (AccountError, ConfigError) as e:
            raise SpawnException(f"the account of {self.user.name} cannot be set up: {e.message}",
                                 reason="account", status_code=500) from None
        self._step(55, f"Your account {self.account.name} is ready" if self.account else "Your home is ready")
        self._step(60, "Your storage: " + ", ".join(self.write_adaptor_config()))
        enforcement = self._enforcement()
        await asyncio.to_thread(enforcement.prepare)
        if enforcement.fallback:
            self.log.warning("%s's server %r: %s", self.user.name, self.name, enforcement.fallback)
        self.limits = enforcement.describe()
        self._active_enforcement = enforcement
        log_fd, self._log_start = await asyncio.to_thread(self._open_server_log)
        self._step(65, "Starting your Jupyter server and WebDAV endpoint")
        # the server's output goes to its own log, not the hub's: its user may read it
        self.popen_kwargs = {**self.popen_kwargs, "stdout": log_fd, "stderr": subprocess.STDOUT}
        try:
            ip_port = await SimpleLocalProcessSpawner.start(self)  # the process (MicroInfrastructure.start led here)
        finally:
            self._active_enforcement = None
            os.close(log_fd)
        self.started = start_time(self.pid) or 0
        await self._wait_for_endpoints()
        return ip_port

    async def _wait_for_endpoints(self):
        """Both endpoints answer on their own ports and prove they are this start's (module
        docstring); SpawnException with the reason otherwise."""
        checks = [(self.dav_port, self.dav_prefix, "webdav", 80, f"Your WebDAV endpoint answers at {self.dav_prefix}"),
                  (self.port, self.server.base_url, "jupyter", 95, "Your Jupyter server answers")]
        try:
            for port, prefix, role, progress, said in checks:
                await check_identity(port, prefix, self.identity_key, self.user.name, self.name or "", role,
                                     self.start_timeout, alive=lambda: self.proc.poll() is None)
                self._step(progress, said)
        except WrongServer as e:
            raise SpawnException(f"the micro-infrastructure of {self.user.name} could not take its port: "
                                 f"{e.message}; start it again", reason=e.code, status_code=e.status) from None
        except IdentityError as e:
            status = self.proc.poll()
            if status is not None:
                raise SpawnException(self._exit_sentence(status), reason="exited_at_start", status_code=500) from None
            raise SpawnException(e.message, reason=e.code, status_code=e.status) from None

    def _exit_sentence(self, status: int) -> str:
        """Why the server exited at start, in its own words: the last error its processes
        printed this start (``skerry.logtail``), and where its whole log is."""
        lines = error_lines(self.server_log, self._log_start, count=1)
        where = f"{self.user.name}'s server log: {log_page(self.hub.base_url, self.name)}"
        said = f": {sentence(lines[-1])}" if lines else ""
        return f"the micro-infrastructure of {self.user.name} exited at start (status {status}){said} ({where})"

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
        used = self._cpu_seconds(pgid) if pgid and is_running(pgid, self.started or None) else None
        enforcement = self._enforcement() if self.limits else None
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
        if enforcement is not None:
            # after the group is gone; it kills what left the group (kernels), so it may wait
            await asyncio.to_thread(enforcement.cleanup)
        port_leases().release(self.queue_key)  # nothing of the server listens on them any more
        await self._release(used)

    async def delete_forever(self):
        """A named server is deleted: its parked WebDAV route goes. The hub user is deleted
        (JupyterHub deletes the default server only with its user): their account is locked and
        every process of it killed (``skerry.accounts.lock_account``). The account and the home
        stay, for an admin to archive, unlock or remove; a new hub user of the same name cannot
        start until then.

        JupyterHub runs this in a task it keeps no reference to (``asyncio.ensure_future`` in
        its DELETE handler): a garbage collection while it waits destroyed it ("Task was
        destroyed but it is pending"), the spawner was never removed and the service's DELETE
        waited 60 s for nothing. The task is held in ``_DELETING`` until it ends."""
        task = asyncio.current_task()
        _DELETING.add(task)
        try:
            await self._delete_forever()
        finally:
            _DELETING.discard(task)

    async def _delete_forever(self):
        if self.name:  # a named server: its parked WebDAV route (``SkerryProxy.park``) goes with it
            proxy = self.user.settings.get("proxy")
            if proxy is not None:
                await proxy.delete_route(self.dav_prefix)
            return
        if not self.switch_users:
            return
        account = await asyncio.to_thread(lock_account, self.user.name, self._policy())
        if account is not None:
            self.log.info("%s was deleted: account %s is locked (home %s kept)", self.user.name, account.name,
                          account.home)

    @staticmethod
    def _cpu_seconds(pgid: int) -> float:
        """CPU seconds of the server's processes so far: the group and every process below its
        leader (kernels run in sessions of their own), with the children they reaped."""
        return cpu_seconds({pgid, *group_members(pgid), *descendants(pgid, zombies=True)})

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
            state.update(dav_port=self.dav_port, port=self.port, started=self.started, profile=self.profile,
                         limits=self.limits)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.dav_port = state.get("dav_port", 0)
        self.started = state.get("started", 0)
        if state.get("pid"):  # a server found running after a hub restart keeps its ports
            self.port = state.get("port", 0) or self.port
            port_leases().adopt(self.queue_key, [p for p in (self.port, self.dav_port) if p])
        self.profile = state.get("profile")
        self.limits = state.get("limits")

    def clear_state(self):
        super().clear_state()
        self._release_start_ticket()
        port_leases().release(self.queue_key)
        self.account = None
        self.identity_key = ""
        self.dav_port = 0
        self.started = 0
        self.profile = None
        self.limits = None

