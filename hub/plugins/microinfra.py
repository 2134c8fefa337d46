"""What a user's server is on every backend: a micro-infrastructure, started from a profile.

``MicroInfrastructure`` is the part of skerry's spawners that does not depend on where the
server runs; ``SkerrySpawner`` (local processes, :mod:`skerry.hub.plugins.spawner`) and
``SkerryKubeSpawner`` (a pod, :mod:`skerry.hub.plugins.kube.spawner`) add the rest. Rules:

- a start waits its turn in the hub's start queue (``run_pre_spawn_hook``), telling the spawn
  page its place, then the start's own steps (``progress``, ``_step``);
- refusals come first, before anything is started or recorded: a name the backend cannot use
  (``_refuse_early``), a named server that would hide a folder of the default one, a profile
  the user may not use (403, 400 for malformed ``user_options``), a quota (403); a start that
  fails after its quota was admitted releases it;
- profiles are read from the store at each start and each showing of the spawn page, so an
  admin's change applies to the next start; the chosen profile is kept in ``profile``;
- the server's adaptors: home, the user's stored adaptors and the server's own, then the
  profile's (``adaptor_configuration``); a profile adaptor named like one of the user's
  refuses the start (409).
"""

import asyncio
import os

from jupyterhub.spawner import SpawnException
from jupyterhub.utils import maybe_future
from traitlets import Any, Unicode, default
from traitlets.config import LoggingConfigurable

from skerry import config
from skerry.adaptors.store import RESERVED_ADAPTORS, AccountStore
from skerry.errors import ConfigError
from skerry.extensions import CONFIG_DIR as JUPYTER_CONFIG_DIR
from skerry.hub.plugins import spawn_form
from skerry.hub.plugins.selection import Refused, select
from skerry.hub.plugins.startqueue import start_queue
from skerry.hub.stores.profiles import ProfileStore, allowed
from skerry.hub.stores.quotas import QuotaExceeded, QuotaStore
from skerry.kernels import JUPYTER_PATH_DIR


class MicroInfrastructure(LoggingConfigurable):
    """The backend-independent part of a skerry spawner (module docstring): a mixin, first in
    the bases of a JupyterHub ``Spawner``, whose ``start`` it provides."""

    profile = Any(None, allow_none=True,
                  help="The resolved profile the running server started with (dict), or None: no profiles.")
    data_dir = Unicode(
        config=True,
        help="The data dir whose profiles.sqlite (profiles) and usage.sqlite (quotas) apply; "
             "default $SKERRY_DATA_DIR; empty: no profiles, no quotas.",
    )

    @default("data_dir")
    def _default_data_dir(self):
        return str(config.DATA_DIR.get() or "")

    _start_ticket = None  # this start's place in the hub's start queue, until start() ends
    _steps: list[dict] | None = None  # this start's steps so far, for the spawn page (``progress``)
    _step_added = None  # set when a step is added (then replaced): ``progress`` waits on it

    @property
    def queue_key(self) -> str:
        """This server's name in the start queue and the port leases: ``<user>/<server>``."""
        return f"{self.user.name}/{self.name}"

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
        handed over in the server's adaptor configuration only (a 0600 file of the user's
        account here, the server's own Secret on Kubernetes).
        """,
    )

    credentials_key_file = Unicode(
        "",
        config=True,
        help="The credentials' Fernet key file (made once), used when $SKERRY_CRYPT_KEY is not set.",
    )

    def skerry_env(self, env: dict) -> dict:
        """``env`` with what a server of any backend is told of skerry's: our Jupyter config
        and kernels first, the platform's public URL, the profile's slug."""
        # our Jupyter config first: it enables the skerry server extension
        env[config.JUPYTER_CONFIG_PATH.name] = os.pathsep.join(
            p for p in (JUPYTER_CONFIG_DIR, env.get(config.JUPYTER_CONFIG_PATH.name)) if p)
        # the skerry kernels first: "Python 3 (skerry)" and "Python 3 (skerry, GPU)"
        env[config.JUPYTER_PATH.name] = os.pathsep.join(
            p for p in (JUPYTER_PATH_DIR, env.get(config.JUPYTER_PATH.name)) if p)
        if config.PUBLIC_URL.get():
            env[config.URL.name] = config.PUBLIC_URL.get().rstrip("/")
        if self.profile:
            env[config.PROFILE.name] = self.profile["slug"]
        return env

    def _handover_root(self) -> str | None:
        """Where the account store hands the user's files over (local backend); None: nowhere."""
        return None

    @property
    def account_store(self) -> AccountStore:
        return AccountStore(self.accounts_dir, self.credentials_dir, self.credentials_key_file, self._handover_root())

    def adaptor_configuration(self, home: str) -> tuple[list[dict], dict]:
        """The server's adaptor specs (home at ``home``, the user's stored adaptors, this
        server's own, then the profile's) and the credentials they name; SpawnException (not
        a traceback) if they are broken. Read at each start: changes apply at the next."""
        try:
            if self.accounts_dir:
                specs, credentials = self.account_store.federation(self.user.name, home, server=self.name)
            else:
                specs, credentials = [{"name": "home", "type": "local", "path": home}], {}
            extra = list((self.profile or {}).get("adaptors") or [])
            names = {s["name"] for s in specs}
            for spec in extra:
                if spec["name"] in names:
                    raise SpawnException(
                        f"the profile {self.profile['slug']!r} adds an adaptor named {spec['name']!r}, and "
                        f"{self.user.name} has one by that name already: rename theirs "
                        f"(/services/skerry/api/v1/users/{self.user.name}/adaptors) or choose another profile.",
                        reason="adaptor_name_clash", status_code=409)
                names.add(spec["name"])
            wanted = {s["credentials"] for s in extra if s.get("credentials")} - credentials.keys()
            if wanted:
                credentials = {**credentials, **self.account_store.backend_credentials(self.user.name, wanted)}
            return specs + extra, credentials
        except ConfigError as e:
            raise self.bad_adaptors(e) from None

    def bad_adaptors(self, e: ConfigError) -> SpawnException:
        return SpawnException(f"the adaptors of {self.user.name} cannot be set up: {e.message.rstrip('.')}. "
                              f"Fix them (/services/skerry/api/v1/users/{self.user.name}/adaptors) "
                              "and start again.", reason="bad_adaptors", status_code=500)


    # ---- profiles: the spawn page, the choice, the limits, quotas ------------------------

    def _profile_store(self) -> ProfileStore | None:
        return ProfileStore.for_data_dir(self.data_dir) if self.data_dir else None

    def _stored_profiles(self) -> list[dict]:
        """Every stored profile, read now (no caching: an admin's change applies at once)."""
        store = self._profile_store()
        if store is None:
            return []
        try:
            return store.list_profiles()
        finally:
            store.dispose()

    def hidden_folder(self) -> str | None:
        """The folder of the user's default server that this named server's WebDAV route
        (``/dav/<user>/<server>/``) would hide: its name, if ``home``, an adaptor the user stored
        or one a profile adds is named so; else None. ConfigError if the adaptors are unreadable."""
        if not self.name:
            return None
        names = set(RESERVED_ADAPTORS)
        if self.accounts_dir:
            names |= {spec["name"] for spec in self.account_store.adaptors(self.user.name)}
        for profile in self._stored_profiles():
            names |= {spec["name"] for spec in profile.get("adaptors") or []}
        return self.name if self.name in names else None

    def _refuse_a_hiding_name(self) -> None:
        """SpawnException 409 with the reason for a named server that would hide a folder."""
        try:
            hidden = self.hidden_folder()
        except ConfigError as e:
            raise SpawnException(f"the adaptors of {self.user.name} cannot be read: {e.message}",
                                 reason="bad_adaptors", status_code=500) from None
        if hidden:
            raise SpawnException(
                f"a server may not be named {hidden!r}: /dav/{self.user.name}/{hidden}/ is the "
                f"folder of the adaptor {hidden!r}; choose another name",
                reason="server_name_clash", status_code=409)

    @property
    def group_names(self) -> list[str]:
        return sorted(g.name for g in self.user.groups)

    @default("options_form")
    def _default_options_form(self):
        return lambda spawner: spawner.render_options_form()

    async def render_options_form(self) -> str:
        """The spawn page's profiles (empty, so no form, if the store has no enabled profile)."""
        groups = self.group_names  # the hub's ORM, on the hub's thread
        profiles = await asyncio.to_thread(self._stored_profiles)
        usable = [p for p in profiles if not p["disabled"] and allowed(p, self.user.name, groups)]
        return spawn_form.render(usable, any(not p["disabled"] for p in profiles))

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # user_options are applied in start(), where a refusal stops the spawn before any process
        return lambda spawner, user_options: None

    @default("options_from_form")
    def _default_options_from_form(self):
        return spawn_form.read

    async def choose_profile(self) -> dict | None:
        """The snapshot of the profile this spawn gets (None: no profiles); SpawnException 403
        (400 for malformed user_options) with the reason if refused."""
        groups = self.group_names
        profiles = await asyncio.to_thread(self._stored_profiles)
        try:
            return select(profiles, self.user.name, groups, self.user_options)
        except Refused as e:
            raise SpawnException(e.message, reason=e.code, status_code=e.status) from None

    def _wanted(self) -> dict:
        """What this server asks of the quotas; no limit (no profile): None, which a CPU or
        memory quota refuses (an unlimited server cannot be counted against it)."""
        resources = (self.profile or {}).get("resources") or {}
        cpu, memory = resources.get("cpu_limit"), resources.get("mem_limit")
        return {"cpu": float(cpu) if cpu else None, "memory": int(memory) if memory else None,
                "gpus": int(resources.get("gpus") or 0)}

    def _quota_store(self) -> QuotaStore | None:
        return QuotaStore.for_data_dir(self.data_dir) if self.data_dir else None

    async def _admit(self) -> None:
        store = self._quota_store()
        if store is None:
            return
        try:
            # in a thread: admit waits for the usage database's write lock
            await asyncio.to_thread(store.admit, self.user.name, self.group_names, self.name or "",
                                    (self.profile or {}).get("slug"), self._wanted())
        except QuotaExceeded as e:
            raise SpawnException(e.message, reason="quota_exceeded", status_code=403) from None
        finally:
            store.dispose()

    async def _release(self, used_cpu: float | None) -> None:
        store = self._quota_store()
        if store is None:
            return
        try:
            await asyncio.to_thread(store.release, self.user.name, self.name or "", cpu_seconds=used_cpu)
        except Exception:  # a stop must not fail for the usage record
            self.log.exception("could not record the end of %s's server %r", self.user.name, self.name)
        finally:
            store.dispose()

    @property
    def dav_prefix(self) -> str:
        """URL path of this server's WebDAV endpoint on the proxy."""
        base = f"/dav/{self.user.name}/"
        return base + f"{self.name}/" if self.name else base

    async def run_pre_spawn_hook(self):
        """Wait this start's turn in the hub's start queue (JupyterHub awaits this before it
        starts timing ``start``); the place is released if the spawn ends or is cancelled."""
        self._steps, self._step_added = [], asyncio.Event()  # before the spawn page may ask
        ticket = start_queue().join(self.queue_key)
        ticket.release_when_done(self._spawn_future)
        self._start_ticket = ticket
        await ticket.turn()
        return await maybe_future(super().run_pre_spawn_hook())

    async def progress(self):
        """The spawn page's events: the place in the start queue while it waits, its turn, then
        the start's own steps as they happen (``_step``); JupyterHub stops asking once the
        start has ended."""
        async for event in start_queue().progress(self.queue_key):
            yield event
        shown = 0
        while self._steps is not None:
            added = self._step_added  # set by any step added from here on, even while we yield
            while shown < len(self._steps):
                shown += 1
                yield self._steps[shown - 1]
            await added.wait()

    def _step(self, progress: int, message: str) -> None:
        """A step of this start, shown on the spawn page."""
        if self._steps is None:  # a start without the pre-spawn hook (none in JupyterHub today)
            return
        self._steps.append({"progress": progress, "message": message})
        added, self._step_added = self._step_added, asyncio.Event()
        added.set()

    def _release_start_ticket(self) -> None:
        ticket, self._start_ticket = self._start_ticket, None
        if ticket is not None:
            ticket.release()  # the slot goes to the next start

    async def start(self):
        try:
            return await self._start_micro()
        finally:
            self._release_start_ticket()

    def _refuse_early(self) -> None:
        """Refusals that need nothing read (a name, a folder): SpawnException. None here."""

    async def _start_admitted(self):
        """Start the server, its profile chosen and its quota admitted: the backend's part."""
        raise NotImplementedError

    async def _start_micro(self):
        self._refuse_early()
        # refusals first: nothing is started or recorded for a spawn that may not happen
        if self.name:
            await asyncio.to_thread(self._refuse_a_hiding_name)
        self.profile = await self.choose_profile()
        await self._admit()
        try:
            return await self._start_admitted()
        except BaseException:
            await asyncio.shield(self._release(None))
            raise
