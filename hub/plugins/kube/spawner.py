"""``SkerryKubeSpawner``: a user's micro-infrastructure as a pod (the Kubernetes backend).

KubeSpawner talks to the API server (the pod and the home claim made, pods and events
watched, the pod deleted); skerry gives it the objects (:mod:`.objects`), and before and after
it does what every backend does (:class:`~skerry.hub.plugins.microinfra.MicroInfrastructure`:
the start queue, refusals, profiles, quotas, adaptors). Rules:

- the pod is ``user_pod`` of the server's spec: the user's own uid and gid (``uid_base`` + their
  hub user id), the profile's resources and placement, the profile's image or ``image``;
- its Secret (``server_secret``: the adaptor configuration with the credentials, the user's
  JWT keys, the hub token) is made before the pod and deleted after it: it exists only while
  the server runs, and no credential is in the pod object;
- the home claim (``home_claim``) is made at the first start and kept while the user is;
- the user's WebDAV route goes to the pod's IP (``dav_url``);
- while the pod is not running, each of its events is a step on the spawn page; a pod that
  cannot be scheduled, cannot get its image or cannot mount a volume for ``pending_timeout``
  seconds is deleted, and the start fails with the event's own words.
"""

import asyncio
import json
import time
from types import SimpleNamespace
from urllib.parse import urlparse

from jupyterhub.spawner import SpawnException
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets import Dict, Float, Integer, Unicode, default

from skerry import config
from skerry.adaptors.config import config_text
from skerry.errors import ConfigError
from skerry.hub.plugins.kube.objects import (DAV_PORT, JUPYTER_PORT, ServerSpec, Sidecar, home_claim, server_secret,
                                             user_pod)
from skerry.hub.plugins.microinfra import MicroInfrastructure
from skerry.hub.stores.profiles import Placement, Resources

BLOCKING = {"FailedScheduling", "Failed", "FailedMount", "BackOff"}  # a pod's events that keep it from running
COMPONENT = "user-server"  # the label KubeSpawner watches pods by, and ours


class SkerryKubeSpawner(MicroInfrastructure, KubeSpawner):
    """Spawns a micro-infrastructure (Jupyter + WebDAV sidecar) per user server, as a pod."""

    uid_base = Integer(100000, config=True,
                       help="A user's pods run as uid and gid uid_base + their hub user id (never root, never shared).")
    home_size = Unicode("10Gi", config=True, help="The size of each user's home claim.")
    home_storage_class = Unicode("", config=True, help="The StorageClass of home claims; empty: the cluster's default.")
    pending_timeout = Float(config=True,
                            help="Seconds a pod may be kept from running (not schedulable, no image, a volume "
                                 "not mounted) before the start fails with the reason; default "
                                 "$SKERRY_KUBE_PENDING_TIMEOUT.")
    release = Unicode("skerry", config=True, help="The Helm release the pods belong to (their labels).")
    sidecar = Dict(config=True, help="The WebDAV sidecar's cpuGuarantee, cpuLimit, memGuarantee and memLimit "
                                     "(the chart's users.sidecar); empty: objects.Sidecar's defaults.")
    dav_url = Unicode("", help="Where the running server's WebDAV endpoint is (the pod's IP).")

    _spec_now: ServerSpec | None = None  # the spec of the pod this start makes

    @default("pending_timeout")
    def _default_pending_timeout(self):
        return config.KUBE_PENDING_TIMEOUT.get()

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self):
        return True  # every user has a home claim (home_claim)

    @default("component_label")
    def _default_component_label(self):
        return COMPONENT

    @default("namespace")
    def _default_namespace(self):
        return config.KUBE_NAMESPACE.get()

    @default("image")
    def _default_image(self):
        return config.USER_IMAGE.get() or "skerry/user:latest"

    @default("port")
    def _default_port(self):
        return JUPYTER_PORT

    def server_spec(self) -> ServerSpec:
        """The spec of this server's pod, from its profile (module docstring)."""
        profile = self.profile or {}
        env = self.skerry_env(self.get_env())
        uid = self.uid_base + self.user.id
        return ServerSpec(
            username=self.user.name, uid=uid, gid=uid, image=profile.get("image") or self.image,
            resources=Resources(**profile["resources"]) if profile.get("resources") else None,
            placement=Placement(**profile.get("kubernetes") or {}), server_name=self.name or "",
            namespace=self.namespace, release=self.release, env=env, home_size=self.home_size,
            storage_class=self.home_storage_class or None, pull_policy=self.image_pull_policy or "IfNotPresent",
            profile=profile.get("slug", ""), args=tuple(self.get_args()),
            extra_labels={"component": self.component_label}, sidecar=_sidecar(self.sidecar))

    async def load_user_options(self):
        """Nothing: a start's profile is skerry's (``choose_profile``), not KubeSpawner's profile_list."""

    def _model(self, obj: dict, kind: str):
        """A dict as the client's model object (what KubeSpawner hands the API)."""
        return self.api.api_client.deserialize(SimpleNamespace(data=json.dumps(obj)), kind)

    async def get_pod_manifest(self):
        return self._model(user_pod(self._spec_now), "V1Pod")

    def get_pvc_manifest(self):
        return self._model(home_claim(self._spec_now), "V1PersistentVolumeClaim")

    def _server_files(self) -> dict[str, bytes]:
        """The Secret's files: the adaptor configuration (credentials decrypted) and the JWT keys."""
        specs, credentials = self.adaptor_configuration("~")  # the pod's home, wherever it is mounted
        try:
            adaptors = config_text(specs, credentials).encode()
        except ConfigError as e:
            raise self.bad_adaptors(e) from None
        keys = self.account_store.jwt_keys(self.user.name) if self.accounts_dir else []
        self._step(50, "Your storage: " + ", ".join(s["name"] for s in specs))
        return {"adaptors.json": adaptors, "jwt-keys.json": json.dumps({"keys": keys}).encode()}

    async def _put_secret(self, secret: dict) -> None:
        name = secret["metadata"]["name"]
        try:
            await self.api.create_namespaced_secret(self.namespace, secret)
        except ApiException as e:
            if e.status != 409:
                raise
            await self.api.replace_namespaced_secret(name, self.namespace, secret)  # left by a lost stop

    async def _delete_secret(self) -> None:
        try:  # named as its pod (ServerSpec.secret_name), which the server's state keeps
            await self.api.delete_namespaced_secret(self.pod_name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                self.log.warning("could not delete the Secret of %s's server: %s", self.user.name, e.reason)

    async def _start_admitted(self):
        spec = self._spec_now = self.server_spec()
        self.pod_name, self.pvc_name = spec.pod_name, spec.claim_name
        files = await asyncio.to_thread(self._server_files)
        await self._put_secret(server_secret(spec, files))
        self._step(60, f"Starting your pod {spec.pod_name}")
        started = asyncio.ensure_future(KubeSpawner._start(self))  # the claim, the pod, until it runs
        blocked = asyncio.ensure_future(self._until_blocked())
        try:
            await asyncio.wait({started, blocked}, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                started.cancel()
                await asyncio.gather(started, return_exceptions=True)
                reason = blocked.result()
                await KubeSpawner.stop(self, now=True)
                raise SpawnException(f"the pod of {self.user.name}'s server could not start: {reason}",
                                     reason="pod_pending", status_code=500)
            url = started.result()
        except BaseException:
            await asyncio.shield(self._delete_secret())
            raise
        finally:
            blocked.cancel()
        self.dav_url = f"http://{urlparse(url).hostname}:{DAV_PORT}"
        self._step(95, "Your Jupyter server and WebDAV endpoint run")
        return url

    async def _until_blocked(self) -> str:
        """Each new event of the pod as a step; returns the words of the event that kept it
        from running for ``pending_timeout`` seconds."""
        said, since = 0, None
        while True:
            events = self.events
            for event in events[said:]:
                self._step(70, f"{event['reason']}: {event['message']}")
            said = len(events)
            blocking = [e for e in events if e.get("reason") in BLOCKING]
            if blocking and since is None:
                since = time.monotonic()
            if since is not None and time.monotonic() - since > self.pending_timeout:
                last = blocking[-1]
                return f"{last['reason']}: {last['message']}"
            await asyncio.sleep(0.5)

    async def stop(self, now=False):
        await super().stop(now=now)
        await self._delete_secret()  # the credentials exist only while the server runs
        await self._release(None)

    def get_state(self):
        state = super().get_state()
        if self.dav_url:
            state.update(dav_url=self.dav_url, profile=self.profile)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.dav_url = state.get("dav_url", "")
        self.profile = state.get("profile")

    def clear_state(self):
        super().clear_state()
        self._release_start_ticket()
        self.dav_url = ""
        self.profile = None


def _sidecar(given: dict) -> Sidecar:
    """The sidecar's resources from the chart's names (sizes as Kubernetes writes them)."""
    from skerry.workload.modules import parse_memory

    names = {"cpuGuarantee": ("cpu_guarantee", float), "cpuLimit": ("cpu_limit", float),
             "memGuarantee": ("mem_guarantee", parse_memory), "memLimit": ("mem_limit", parse_memory)}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"SkerryKubeSpawner.sidecar: unknown field(s) {', '.join(unknown)} "
                          f"(fields: {', '.join(names)})")
    return Sidecar(**{names[k][0]: names[k][1](v) for k, v in given.items()})
