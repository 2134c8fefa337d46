"""The workload manager on Kubernetes: each user's jobs on her own ``DaskCluster``.

``python -m skerry.hub.plugins.kube.workload`` is the scheduler service where
``SKERRY_KUBERNETES`` is set: ``skerry.workload.manager`` with :class:`KubeUserPools` as
its runner, the local ``UserPools`` with Kubernetes clusters in place of local ones::

    pools = KubeUserPools(data_dir, load_pools(path), KubeAPI.from_settings(), image="skerry/user:1")
    pools.adaptors_for("alice")   # her jobs' adaptor configuration, as her cluster's Secret
    pools.submit_batches("cpu", batches)   # as any runner

Rules:
- a user's cluster is ``objects.dask_cluster`` (one per user, ``jobs=True``), run by the
  dask-kubernetes operator: her scheduler pod holds the jobs' runner
  (``skerry.workload.userjobs listen``), her workers mount her home claim and her jobs'
  Secret. It runs as the uid and gid her home claim names (``objects.UID_KEY``: the
  spawner wrote them at her first start); a user without a home claim has no cluster,
  and her jobs are lost with that sentence;
- each pool of ``pools.json`` is a worker group of her cluster: ``gpu`` is the GPU group
  (``objects.gpu_workers``), every other pool the default group. A pool's group is
  scaled to the pool's ``workers`` when her jobs come, and to 0 when it is idle; the
  cluster, its Secrets and its NetworkPolicy are deleted when no pool of hers is left;
- the platform is never a Dask client of her cluster: it speaks JSON lines to her runner
  over TLS (``UserJobs.connect``), a connection per pool, with a client certificate made
  for that cluster (``clusters.new_credentials``: the CA's key is dropped; the platform's
  key stays in ``DIR/run/kube-dask/<cluster>/``, 0600, the pods get the cluster's own);
- her jobs' adaptor configuration (``owners``: home at ``~``, her stored adaptors, the
  credentials decrypted) is her cluster's jobs Secret, written again for every task seen
  afresh; the jobs name no configuration file (the workers' ``SKERRY_ADAPTORS`` names the
  mounted Secret). Lost attempts are therefore not looked for on storage
  (``scheduling.outputs``): the platform cannot see her home; they run again;
- idle means no attempt of the platform in flight for ``idle_after`` seconds (her own
  clients of her cluster are not counted: none is offered on Kubernetes yet, and
  ``cluster_for`` says so);
- the API server is ``SKERRY_KUBERNETES``: ``in-cluster`` (the pod's service account), or
  a URL that needs no credentials (``kubectl proxy``, a test's API server).
"""

from __future__ import annotations

import logging
import shutil
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from dask.utils import parse_bytes

from skerry import config
from skerry.errors import ConfigError, SkerryError
from skerry.hub.plugins.kube.objects import (DASK_API, GID_KEY, JOBS_PORT, SCHEDULER_PORT, UID_KEY, ClusterSpec,
                                             claim_name, cluster_policy, cluster_tls_secret, dask_cluster,
                                             gpu_workers, jobs_secret, safe_name)
from skerry.hub.stores.profiles import DaskLimits
from skerry.localfiles import write_private
from skerry.workload.clusters import ClusterError, new_credentials
from skerry.workload.manager import Manager, main
from skerry.workload.userjobs import UserJobs
from skerry.workload.userpools import UserPools

__all__ = ["KubeAPI", "KubeUserPools", "KubeManager"]

log = logging.getLogger("skerry.scheduler")
START_S = 120.0  # how long a cluster's scheduler and runner may take to be ready
IN_CLUSTER = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_MEMORY = 2 * 2**30  # a worker's memory where the pool says "auto"
GROUPS = "daskworkergroups"


class KubeAPI:
    """A small synchronous client of the API server's JSON (module docstring)."""

    def __init__(self, url: str, namespace: str, token: str | None = None, ca: str | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify = ssl.create_default_context(cafile=ca) if ca else True
        self.namespace = namespace
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, verify=verify, timeout=30)

    @classmethod
    def from_settings(cls) -> KubeAPI:
        url = config.KUBERNETES.require()
        namespace = config.KUBE_NAMESPACE.get()
        if url != "in-cluster":
            return cls(url, namespace)
        token = Path(IN_CLUSTER, "token").read_text().strip()
        return cls("https://kubernetes.default.svc", namespace, token, f"{IN_CLUSTER}/ca.crt")

    def path(self, kind: str, name: str = "") -> str:
        """The URL path of ``kind`` (``secrets``, ``daskclusters``...) in the namespace."""
        group = {"daskclusters": f"/apis/{DASK_API}", GROUPS: f"/apis/{DASK_API}",
                 "networkpolicies": "/apis/networking.k8s.io/v1"}.get(kind, "/api/v1")
        return f"{group}/namespaces/{self.namespace}/{kind}" + (f"/{name}" if name else "")

    def get(self, kind: str, name: str = "", **params) -> dict | None:
        r = self.http.get(self.path(kind, name), params=params)
        return None if r.status_code == 404 else self._ok(r)

    def put(self, kind: str, obj: dict) -> dict:
        """Create ``obj``, or replace the one of its name."""
        r = self.http.post(self.path(kind), json=obj)
        if r.status_code == 409:
            current = self._ok(self.http.get(self.path(kind, obj["metadata"]["name"])))
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            r = self.http.put(self.path(kind, obj["metadata"]["name"]), json=obj)
        return self._ok(r)

    def scale(self, kind: str, name: str, replicas: int) -> None:
        r = self.http.patch(self.path(kind, name), json={"spec": {"worker": {"replicas": replicas}}},
                            headers={"Content-Type": "application/merge-patch+json"})
        self._ok(r)

    def delete(self, kind: str, name: str) -> None:
        r = self.http.delete(self.path(kind, name))
        if r.status_code != 404:
            self._ok(r)

    @staticmethod
    def _ok(r: httpx.Response) -> dict:
        if r.status_code >= 400:
            try:
                why = r.json().get("message") or r.text
            except ValueError:
                why = r.text
            raise ClusterError(f"the Kubernetes API answered {r.status_code} to {r.request.method} "
                               f"{r.request.url.path}: {why[:300]}")
        return r.json()


@dataclass(frozen=True)
class Owner:
    """Whose cluster it is (what ``UserJobs`` names in its sentences)."""

    name: str
    hub_name: str


class KubeCluster:
    """One pool of a user's Kubernetes cluster, as ``UserPools`` sees a local one."""

    def __init__(self, spec: ClusterSpec, pool: str, scheduler: dict, folder: Path):
        self.spec, self.pool, self.folder = spec, pool, folder
        self.account = Owner(safe_name(spec.username), spec.username)
        self.ip = scheduler["status"]["podIP"]
        self.pod = scheduler["metadata"]["name"]
        self.address = f"tls://{self.ip}:{SCHEDULER_PORT}"
        self.started_in = 0.0
        self.running = True
        self.busy_at = time.monotonic()

    def platform_files(self) -> dict[str, str]:
        return {"tls_ca_file": str(self.folder / "ca.pem"), "tls_client_cert": str(self.folder / "platform.pem"),
                "tls_client_key": str(self.folder / "platform-key.pem")}

    def idle_for(self) -> float:
        return time.monotonic() - self.busy_at


class KubeUserPools(UserPools):
    """``UserPools`` whose clusters are the users' ``DaskCluster`` resources (module docstring)."""

    def __init__(self, data_dir, specs: dict, api: KubeAPI, image: str, *, release: str = "skerry", **options):
        self.api, self.image, self.release = api, image, release
        super().__init__(data_dir, specs, None, gpus=0, **options)
        self.folder = self.data.path / "run" / "kube-dask"

    def _clusters(self):
        return _Clusters(self)

    # ---- what the scheduler and service call ----

    def adaptors_for(self, owner: str) -> None:
        """Write ``owner``'s jobs' adaptor configuration into her cluster's Secret (module
        docstring); None: the jobs name no file."""
        from skerry.adaptors.config import config_text
        from skerry.adaptors.store import AccountStore

        specs, credentials = AccountStore.for_data_dir(self.data).federation(owner, "~")
        text = config_text(specs, credentials).encode()
        self.api.put("secrets", jobs_secret(owner, self.api.namespace, self.release, text))
        return None

    def cluster_for(self, user: str, pool: str, timeout: float = 120.0) -> dict:
        raise ClusterError("on Kubernetes a user's own Dask clients are not offered yet: her cluster runs "
                           "the workload scheduler's jobs only")

    # ---- UserPools' hooks ----

    def _cluster(self, user: str, pool: str) -> KubeCluster:
        return self.clusters.ensure(user, pool)

    def _runner(self, cluster: KubeCluster, needs: dict) -> UserJobs:
        where = f"kubectl logs -n {self.api.namespace} {cluster.pod} -c jobs"
        deadline = time.monotonic() + START_S
        while True:  # the runner's container starts beside the scheduler: it may not listen yet
            try:
                return UserJobs.connect(cluster, self._report, (cluster.ip, JOBS_PORT), cluster.platform_files(),
                                        where, needs)
            except OSError as e:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the jobs' runner of {cluster.spec.username}'s cluster cannot be reached "
                                       f"at {cluster.ip}:{JOBS_PORT}: {e} ({where})") from None
                time.sleep(0.5)

    def _stop_idle(self) -> None:
        with self._lock:
            busy = set(self._waiting) | set(self._owner.values())
        for key, cluster in list(self.clusters.clusters.items()):
            if key in busy:
                cluster.busy_at = time.monotonic()
        super()._stop_idle()


class _Clusters:
    """The users' Kubernetes clusters, by (user, pool): ``UserClusters``' part that
    ``UserPools`` uses (``clusters``, ``stop``, ``close``)."""

    def __init__(self, pools: KubeUserPools):
        self.pools = pools
        self.clusters: dict[tuple[str, str], KubeCluster] = {}
        self._made: dict[str, tuple[ClusterSpec, Path]] = {}  # user -> her cluster's spec, platform files

    def ensure(self, user: str, pool: str) -> KubeCluster:
        pools, api = self.pools, self.pools.api
        running = self.clusters.get((user, pool))
        spec, folder = self._make(user)
        scheduler = self._scheduler(spec)
        if running is not None and running.ip == scheduler["status"]["podIP"]:
            return running
        started = time.monotonic()
        group = self._group(spec, pool)
        _until(lambda: api.get(GROUPS, group), START_S, f"{user}'s worker group {group}")
        api.scale(GROUPS, group, pools.shapes[pool].workers)
        cluster = KubeCluster(spec, pool, scheduler, folder)
        cluster.started_in = time.monotonic() - started
        self.clusters[(user, pool)] = cluster
        return cluster

    def _make(self, user: str) -> tuple[ClusterSpec, Path]:
        """Her cluster's spec and the platform's files, the cluster made first if it is not."""
        pools, api = self.pools, self.pools.api
        made = self._made.get(user)
        if made is not None and api.get("daskclusters", made[0].name) is not None:
            return made
        spec = self._spec(user)
        folder = pools.folder / spec.name
        pems = new_credentials()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700, parents=True)
        for name, pem in (("ca.pem", pems["ca"]), ("platform.pem", pems["platform"]),
                          ("platform-key.pem", pems["platform-key"])):
            write_private(folder / name, pem)
        pools.adaptors_for(user)
        api.delete("daskclusters", spec.name)  # one left by a manager that lost its files
        api.put("secrets", cluster_tls_secret(spec, pems["ca"], pems["cluster"], pems["cluster-key"]))
        api.put("networkpolicies", cluster_policy(spec))
        api.put("daskclusters", dask_cluster(spec))
        log.info("%s's Dask cluster %s made", user, spec.name)
        self._made[user] = (spec, folder)
        return spec, folder

    def _spec(self, user: str) -> ClusterSpec:
        """Her cluster's spec: her home claim's uid and gid, the pools' shapes."""
        pools, api = self.pools, self.pools.api
        claim = api.get("persistentvolumeclaims", claim_name(user))
        notes = ((claim or {}).get("metadata") or {}).get("annotations") or {}
        try:
            uid, gid = int(notes[UID_KEY]), int(notes[GID_KEY])
        except (KeyError, ValueError):
            raise ClusterError(f"{user} has no home claim naming her uid ({claim_name(user)}): her jobs run as "
                               f"the owner of her files, known once her server has started") from None
        cpu = next((s for name, s in pools.shapes.items() if name != "gpu"), None) or pools.shapes["gpu"]
        memory = DEFAULT_MEMORY if cpu.memory == "auto" else parse_bytes(cpu.memory)
        gpu = pools.shapes.get("gpu")
        return ClusterSpec(username=user, uid=uid, gid=gid, image=pools.image, namespace=api.namespace,
                           release=pools.release, jobs=True, gpu_workers=gpu.workers if gpu else 0,
                           dask=DaskLimits(max_workers=cpu.workers, worker_threads=cpu.threads, worker_memory=memory))

    def _group(self, spec: ClusterSpec, pool: str) -> str:
        """The worker group of ``pool`` (made for the GPU pool at its first use)."""
        if pool != "gpu":
            return f"{spec.name}-default"
        group = gpu_workers(spec)
        if self.pools.api.get(GROUPS, group["metadata"]["name"]) is None:
            self.pools.api.put(GROUPS, group)
        return group["metadata"]["name"]

    def _scheduler(self, spec: ClusterSpec) -> dict:
        """Her scheduler's pod once it is ready; a ``ClusterError`` with its reason if not in time."""
        api = self.pools.api
        selector = f"dask.org/cluster-name={spec.name},dask.org/component=scheduler"

        def ready():
            for pod in api.get("pods", labelSelector=selector)["items"]:
                status = pod.get("status") or {}
                if status.get("podIP") and any(c.get("type") == "Ready" and c.get("status") == "True"
                                               for c in status.get("conditions") or []):
                    return pod
            return None
        return _until(ready, START_S, f"{spec.username}'s Dask scheduler")

    def stop(self, user: str, pool: str) -> None:
        """Scale the pool's group to 0; delete her cluster once no pool of hers is left."""
        cluster = self.clusters.pop((user, pool), None)
        api = self.pools.api
        if cluster is None:
            return
        cluster.running = False
        try:
            api.scale(GROUPS, self._group(cluster.spec, pool), 0)
            if not any(u == user for u, _ in self.clusters):
                for kind, name in (("daskclusters", cluster.spec.name), ("secrets", cluster.spec.tls_secret),
                                   ("secrets", cluster.spec.jobs_secret), ("networkpolicies", cluster.spec.name)):
                    api.delete(kind, name)
                self._made.pop(user, None)
                shutil.rmtree(cluster.folder, ignore_errors=True)
        except (SkerryError, httpx.HTTPError) as e:
            log.warning("stopping %s's %s cluster: %s", user, pool, e)

    def close(self) -> None:
        for key in list(self.clusters):
            self.stop(*key)


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} was not ready within {timeout:g} s")
        time.sleep(0.5)


class KubeManager(Manager):
    """The workload manager whose users' clusters are on Kubernetes (module docstring)."""

    def _pools(self, specs, policy):
        image = config.USER_IMAGE.get()
        if not image:
            raise ConfigError("SKERRY_USER_IMAGE names no image: the users' Dask pods need one")
        options = {} if self.idle_after is None else {"idle_after": self.idle_after}
        return KubeUserPools(self.data_dir, specs, KubeAPI.from_settings(), image, **options)

    def _adaptors_of(self, policy):
        return self.runner.adaptors_for


if __name__ == "__main__":
    sys.exit(main(KubeManager))
