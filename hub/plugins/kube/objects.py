"""The Kubernetes objects of a user's micro-infrastructure and Dask cluster, from pure functions.

    spec = ServerSpec(username="alice", uid=100001, gid=100001, image="skerry/user:1",
                      resources=profile.resources, placement=profile.kubernetes, env=hub_env)
    user_pod(spec), server_secret(spec, {"adaptors.json": ...}), home_claim(spec)
    cluster = ClusterSpec(username="alice", uid=100001, gid=100001, image=..., dask=profile.dask)
    dask_cluster(cluster), gpu_workers(cluster), cluster_policy(cluster)

Rules (``tests/test_kube_objects.py`` holds every builder to them):

- names are DNS labels of at most 63 characters (:func:`safe_name`): a user name that is one
  already stays as it is; any other is cut and given a hash, so two users never share one;
- every pod runs as the user's uid and gid (never root), with no service-account token, no
  service links (no other service's address in its environment), no privilege escalation
  and no capabilities; the user's pods carry the label ``skerry.io/user``, which network
  policies select on;
- nothing secret is in a pod object: the server's credentials (its adaptor configuration with
  the credentials, its JWT keys) are files of the server's own Secret, mounted read-only;
  the hub token and the identity key are keys of the same Secret, read into the environment
  by reference (``SECRET_ENV``);
- a profile's resources are the Jupyter container's requests (guarantees) and limits; GPUs are
  ``nvidia.com/gpu`` limits, with the toleration of GPU nodes' taint, only where the profile
  (or the worker group) has GPUs; the profile's node selector and tolerations apply as given;
- a user's Dask cluster speaks TLS only, with the certificates of its own Secret, and only the
  user's own pods and the platform's workload scheduler may reach it (:func:`cluster_policy`).
"""

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from skerry import config
from skerry.hub.stores.profiles import DaskLimits, Placement, Resources
from skerry.workload.pools import DASK_CONFIG, dask_environment

NAME_LIMIT = 63  # a DNS label; also the longest label value
APP = "skerry"
USER_LABEL = "skerry.io/user"
UID_KEY, GID_KEY = "skerry.io/uid", "skerry.io/gid"  # the home claim's owner (home_claim)
GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}  # GPU node pools' usual taint
HOME = "/home/jovyan"
SERVER_FILES = "/etc/skerry/server"  # the server's Secret, read-only
DASK_TLS = "/etc/skerry/dask-tls"  # the cluster's certificates, read-only
JUPYTER_PORT, DAV_PORT = 8888, 8889
SCHEDULER_PORT, DASHBOARD_PORT, JOBS_PORT = 8786, 8787, 8788
SECRET_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", config.IDENTITY_KEY.name)
FILE_MODE = 0o440  # the Secret's files: the user's group (fsGroup) reads, nobody writes


def safe_name(*parts: str, limit: int = NAME_LIMIT) -> str:
    """``parts`` joined by '-' as a DNS label of at most ``limit`` characters.

    Kept as it is where it is one already; otherwise lower-cased, every run of other characters
    made one '-', cut, and ended with 8 hex digits of the original's hash (so ``Alice`` and
    ``alice``, or two long names with one beginning, stay apart).
    """
    raw = "-".join(parts)
    if len(raw) <= limit and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", raw):
        return raw
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{slug[:limit - 9].rstrip('-')}-{digest}".lstrip("-0123456789") or f"x-{digest}"


def cpu(cores: float) -> str:
    """A CPU quantity: whole cores as they are, else millicores."""
    return str(int(cores)) if cores == int(cores) else f"{round(cores * 1000)}m"


def memory(size: int) -> str:
    """A memory quantity: in Gi or Mi where it divides evenly, else bytes."""
    for unit, scale in (("Gi", 2**30), ("Mi", 2**20)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _not_root(what: str, uid: int, gid: int) -> None:
    if uid <= 0 or gid <= 0:
        raise ValueError(f"{what}: a uid and gid above 0 (root) are needed, not {uid}:{gid}")


@dataclass(frozen=True)
class Sidecar:
    """What the WebDAV/data-API container may use (the profile's resources are Jupyter's)."""

    cpu_guarantee: float = 0.1
    cpu_limit: float = 1.0
    mem_guarantee: int = 128 * 2**20
    mem_limit: int = 512 * 2**20


@dataclass(frozen=True)
class ServerSpec:
    """One user server's pod: who, from which image, with what, and where.

    ``env`` is what the hub gives the server (JupyterHub's variables and skerry's); the names
    in ``SECRET_ENV`` go to the Secret, the rest into the pod as values.
    """

    username: str
    uid: int
    gid: int
    image: str
    resources: Resources | None  # None: no requests or limits (no profile)
    placement: Placement = Placement()
    server_name: str = ""
    namespace: str = "default"
    release: str = APP
    env: Mapping[str, str] = field(default_factory=dict)
    home_size: str = "10Gi"
    storage_class: str | None = None
    sidecar: Sidecar = Sidecar()
    pull_policy: str = "IfNotPresent"
    profile: str = ""
    args: tuple[str, ...] = ()  # the Jupyter server's own arguments (JupyterHub's Spawner.get_args)
    extra_labels: Mapping[str, str] = field(default_factory=dict)  # e.g. what KubeSpawner watches pods by

    def __post_init__(self):
        _not_root(f"the pods of {self.username!r}", self.uid, self.gid)

    @property
    def pod_name(self) -> str:
        return safe_name(APP, self.username, *([self.server_name] if self.server_name else []))

    @property
    def secret_name(self) -> str:
        return self.pod_name  # one Secret per server, named as its pod

    @property
    def claim_name(self) -> str:
        return claim_name(self.username)

    @property
    def dav_prefix(self) -> str:
        return f"/dav/{self.username}/" + (f"{self.server_name}/" if self.server_name else "")


def claim_name(username: str) -> str:
    """The user's home claim: one per user, whichever server or Dask worker mounts it."""
    return safe_name("home", username)


def labels(release: str, component: str, username: str | None = None) -> dict[str, str]:
    """The labels skerry's objects carry; ``username``: one user's (``USER_LABEL``)."""
    out = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": release,
           "app.kubernetes.io/component": component}
    if username is not None:
        out[USER_LABEL] = safe_name(username)
    return out


def _meta(name: str, namespace: str, labels_: dict, username: str | None = None) -> dict:
    meta = {"name": name, "namespace": namespace, "labels": labels_}
    if username is not None:
        meta["annotations"] = {"skerry.io/username": username}  # the name as the hub knows it
    return meta


def _run_as(uid: int, gid: int) -> dict:
    return {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True, "fsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"}}


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _resources(cpu_guarantee: float, cpu_limit: float, mem_guarantee: int, mem_limit: int, gpus: int = 0) -> dict:
    requests = {}
    if cpu_guarantee:
        requests["cpu"] = cpu(cpu_guarantee)
    if mem_guarantee:
        requests["memory"] = memory(mem_guarantee)
    limits = {"cpu": cpu(cpu_limit), "memory": memory(mem_limit)}
    if gpus:
        limits[GPU] = str(gpus)  # an extended resource: its request is its limit
    return {"requests": requests, "limits": limits} if requests else {"limits": limits}


def _placement(placement: Placement, gpus: int) -> dict:
    out = {}
    if placement.node_selector:
        out["nodeSelector"] = dict(placement.node_selector)
    tolerations = [t.model_dump(exclude_defaults=True) for t in placement.tolerations]
    if gpus and GPU_TOLERATION not in tolerations:
        tolerations.append(dict(GPU_TOLERATION))
    if tolerations:
        out["tolerations"] = tolerations
    return out


def _server_env(spec: ServerSpec) -> list[dict]:
    own = {config.USER.name: spec.username, config.SERVER.name: spec.server_name,
           config.DAV_PORT.name: str(DAV_PORT), config.DAV_PREFIX.name: spec.dav_prefix,
           config.ADAPTORS.name: f"{SERVER_FILES}/adaptors.json",
           config.JWT_KEYS.name: f"{SERVER_FILES}/jwt-keys.json", config.DAV_IP.name: "0.0.0.0", "HOME": HOME}
    if spec.profile:
        own[config.PROFILE.name] = spec.profile
    env = {**spec.env, **own}
    out = []
    for name in sorted(env):
        if name in SECRET_ENV:
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": spec.secret_name, "key": _env_key(name)}}})
        else:
            out.append({"name": name, "value": env[name]})
    return out


def _env_key(name: str) -> str:
    return f"env.{name}"


def user_pod(spec: ServerSpec) -> dict:
    """The pod of one user server: the Jupyter container and the WebDAV/data-API sidecar."""
    env = _server_env(spec)
    mounts = [{"name": "home", "mountPath": HOME},
              {"name": "server", "mountPath": SERVER_FILES, "readOnly": True}]
    r, s = spec.resources, spec.sidecar
    gpus = r.gpus if r else 0
    containers = [
        {"name": "notebook", "image": spec.image, "imagePullPolicy": spec.pull_policy,
         "command": ["python", "-m", "skerry.quickstart", "jupyterhub.singleuser"],
         **({"args": list(spec.args)} if spec.args else {}),
         "ports": [{"name": "notebook-port", "containerPort": JUPYTER_PORT}],
         "env": env, "workingDir": HOME, "volumeMounts": mounts,
         "resources": _resources(r.cpu_guarantee, r.cpu_limit, r.mem_guarantee, r.mem_limit, r.gpus) if r else {},
         "securityContext": CONTAINER_SECURITY},
        {"name": "webdav", "image": spec.image, "imagePullPolicy": spec.pull_policy,
         "command": ["python", "-m", "skerry.hub.userserver.webdav"],
         "ports": [{"name": "dav", "containerPort": DAV_PORT}],
         "env": env, "workingDir": HOME, "volumeMounts": mounts,
         "resources": _resources(s.cpu_guarantee, s.cpu_limit, s.mem_guarantee, s.mem_limit),
         "securityContext": CONTAINER_SECURITY},
    ]
    volumes = [
        {"name": "home", "persistentVolumeClaim": {"claimName": spec.claim_name}},
        {"name": "server", "secret": {"secretName": spec.secret_name, "defaultMode": FILE_MODE,
                                      "items": [{"key": f, "path": f} for f in SERVER_FILE_NAMES]}},
    ]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta(spec.pod_name, spec.namespace,
                          {**spec.extra_labels, **labels(spec.release, "user-server", spec.username)}, spec.username),
        "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False,
                 "restartPolicy": "OnFailure", "securityContext": _run_as(spec.uid, spec.gid),
                 "containers": containers, "volumes": volumes,
                 **_placement(spec.placement, gpus)},
    }


SERVER_FILE_NAMES = ("adaptors.json", "jwt-keys.json")


def server_secret(spec: ServerSpec, files: Mapping[str, bytes]) -> dict:
    """The server's own Secret: ``files`` (exactly ``SERVER_FILE_NAMES``) and its secret
    environment (the ``SECRET_ENV`` names present in ``spec.env``)."""
    if set(files) != set(SERVER_FILE_NAMES):
        raise ValueError(f"a server's Secret holds {', '.join(SERVER_FILE_NAMES)}, "
                         f"not {', '.join(sorted(files)) or 'nothing'}")
    data = {name: files[name] for name in SERVER_FILE_NAMES}
    data.update({_env_key(n): spec.env[n].encode() for n in SECRET_ENV if n in spec.env})
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": _meta(spec.secret_name, spec.namespace, labels(spec.release, "user-server", spec.username),
                          spec.username),
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def home_claim(spec: ServerSpec) -> dict:
    """The user's home volume (one per user, kept when servers stop), ``ReadWriteMany``: her
    server and her Dask workers mount it at once. It names her uid and gid (``UID_KEY``,
    ``GID_KEY``), so the workload scheduler runs her jobs as the owner of her files."""
    claim = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": spec.home_size}}}
    if spec.storage_class:
        claim["storageClassName"] = spec.storage_class
    meta = _meta(spec.claim_name, spec.namespace, labels(spec.release, "user-home", spec.username), spec.username)
    meta["annotations"].update({UID_KEY: str(spec.uid), GID_KEY: str(spec.gid)})
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": claim}


# -- a user's Dask cluster (dask-kubernetes operator resources) -------------------------------

DASK_API = "kubernetes.dask.org/v1"


@dataclass(frozen=True)
class ClusterSpec:
    """One user's Dask cluster: CPU workers sized by the profile's ``dask`` limits, and up to
    ``gpu_workers`` GPU workers (one GPU each) where the profile may use GPUs."""

    username: str
    uid: int
    gid: int
    image: str
    dask: DaskLimits
    gpu_workers: int = 0
    placement: Placement = Placement()
    namespace: str = "default"
    release: str = APP
    pull_policy: str = "IfNotPresent"
    jobs: bool = False  # the workload scheduler's jobs run on it: a runner, her home and adaptors

    def __post_init__(self):
        _not_root(f"the Dask cluster of {self.username!r}", self.uid, self.gid)

    @property
    def jobs_secret(self) -> str:
        """Her adaptor configuration for jobs (``jobs_secret``)."""
        return jobs_secret_name(self.username)

    @property
    def name(self) -> str:
        return safe_name("dask", self.username)

    @property
    def tls_secret(self) -> str:
        return safe_name("dask", self.username, "tls")

    @property
    def address(self) -> str:
        """Where the user's code and the workload scheduler reach it."""
        return f"tls://{self.name}-scheduler.{self.namespace}.svc:{SCHEDULER_PORT}"


POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}  # what Dask listens on
TLS_ARGS = ("--tls-ca-file", f"{DASK_TLS}/ca.pem", "--tls-cert", f"{DASK_TLS}/cert.pem",
            "--tls-key", f"{DASK_TLS}/key.pem")
# the local pools' settings (a lost job reaches the catalog, ...), TLS required
DASK_ENV = [{"name": name, "value": value} for name, value in dask_environment(
    {**DASK_CONFIG, "distributed.comm.require-encryption": True}).items()] + [POD_IP]
JOBS_FILES = "/etc/skerry/jobs"  # the cluster's jobs Secret (her adaptors), read-only


def _dask_pod(spec: ClusterSpec, containers: list[dict], gpus: int = 0, worker: bool = False) -> dict:
    """A scheduler's or worker's pod spec: as the user, TLS files mounted read-only; a
    worker of a jobs cluster also mounts her home and her jobs' adaptor configuration."""
    mounts = [{"name": "tls", "mountPath": DASK_TLS, "readOnly": True}]
    volumes = [{"name": "tls", "secret": {"secretName": spec.tls_secret, "defaultMode": FILE_MODE}}]
    env = list(DASK_ENV)
    if spec.jobs and worker:
        mounts += [{"name": "home", "mountPath": HOME}, {"name": "jobs", "mountPath": JOBS_FILES, "readOnly": True}]
        volumes += [{"name": "home", "persistentVolumeClaim": {"claimName": claim_name(spec.username)}},
                    {"name": "jobs", "secret": {"secretName": spec.jobs_secret, "defaultMode": FILE_MODE}}]
        env += [{"name": "HOME", "value": HOME},
                {"name": config.ADAPTORS.name, "value": f"{JOBS_FILES}/adaptors.json"}]
    containers = [{**c, "image": spec.image, "imagePullPolicy": spec.pull_policy, "env": env,
                   "volumeMounts": mounts, "securityContext": CONTAINER_SECURITY} for c in containers]
    return {"automountServiceAccountToken": False, "enableServiceLinks": False,
            "securityContext": _run_as(spec.uid, spec.gid), "containers": containers, "volumes": volumes,
            **_placement(spec.placement if gpus else Placement(), gpus)}


def _jobs_runner() -> dict:
    """The runner of the workload scheduler's jobs (``skerry.workload.userjobs``), beside the
    scheduler: the cluster's only client the platform asks for, reached over TLS."""
    return {"name": "jobs", "command": ["python", "-m", "skerry.workload.userjobs", "listen", "$(POD_IP)",
                                        str(JOBS_PORT), f"tls://$(POD_IP):{SCHEDULER_PORT}",
                                        f"{DASK_TLS}/ca.pem", f"{DASK_TLS}/cert.pem", f"{DASK_TLS}/key.pem"],
            "ports": [{"name": "jobs", "containerPort": JOBS_PORT, "protocol": "TCP"}],
            "resources": _resources(0.25, 1, 256 * 2**20, 1 * 2**30)}


def _worker(spec: ClusterSpec, command: list[str], gpus: int) -> dict:
    """A worker container: named by the operator, on its pod's address, the profile's size."""
    d = spec.dask
    return {"name": "worker", "command": [*command, spec.address, "--name", "$(DASK_WORKER_NAME)",
                                          "--host", "$(POD_IP)", "--nthreads", str(d.worker_threads),
                                          "--memory-limit", str(d.worker_memory), *TLS_ARGS,
                                          *(["--resources", "GPU=1"] if gpus else [])],
            "resources": _resources(d.worker_threads, d.worker_threads, d.worker_memory, d.worker_memory, gpus)}


def dask_cluster(spec: ClusterSpec) -> dict:
    """The user's ``DaskCluster``: a TLS scheduler and a CPU worker group (at most
    ``dask.max_workers``, none to begin with: the workload scheduler scales it)."""
    dask_labels = labels(spec.release, "dask", spec.username)
    scheduler = {"name": "scheduler", "command": ["dask", "scheduler", "--protocol", "tls", "--host", "$(POD_IP)",
                                                  "--port", str(SCHEDULER_PORT),
                                                  "--dashboard-address", f":{DASHBOARD_PORT}", *TLS_ARGS],
                 "ports": [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
                           {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}],
                 "resources": _resources(0.5, 1, 512 * 2**20, 2 * 2**30)}
    return {
        "apiVersion": DASK_API, "kind": "DaskCluster",
        "metadata": _meta(spec.name, spec.namespace, dask_labels, spec.username),
        "spec": {
            "worker": {"replicas": 0, "metadata": {"labels": dask_labels},
                       "spec": _dask_pod(spec, [_worker(spec, ["dask", "worker"], 0)], worker=True)},
            "scheduler": {
                "metadata": {"labels": dask_labels},
                "spec": _dask_pod(spec, [scheduler, *([_jobs_runner()] if spec.jobs else [])]),
                "service": {"type": "ClusterIP",
                            "selector": {"dask.org/cluster-name": spec.name, "dask.org/component": "scheduler"},
                            "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT,
                                       "targetPort": "tcp-comm"},
                                      {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
                                       "targetPort": "http-dashboard"}]},
            },
        },
    }


def gpu_workers(spec: ClusterSpec) -> dict | None:
    """The cluster's GPU ``DaskWorkerGroup`` (``dask-cuda-worker``, one GPU and the ``GPU=1``
    resource each), or None where the profile has no GPU workers."""
    if not spec.gpu_workers:
        return None
    dask_labels = labels(spec.release, "dask", spec.username)
    return {
        "apiVersion": DASK_API, "kind": "DaskWorkerGroup",
        "metadata": _meta(safe_name("dask", spec.username, "gpu"), spec.namespace, dask_labels, spec.username),
        "spec": {"cluster": spec.name,
                 "worker": {"replicas": 0, "metadata": {"labels": dask_labels},
                            "spec": _dask_pod(spec, [_worker(spec, ["dask-cuda-worker"], 1)], gpus=1,
                                              worker=True)}},
    }


def cluster_tls_secret(spec: ClusterSpec, ca: bytes, cert: bytes, key: bytes) -> dict:
    """The cluster's own certificates (``Security.temporary()``-style: made for this cluster
    alone), mounted read-only by its pods and handed to its owner's server."""
    files = {"ca.pem": ca, "cert.pem": cert, "key.pem": key}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(spec.tls_secret, spec.namespace, labels(spec.release, "dask", spec.username),
                              spec.username),
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


def jobs_secret_name(username: str) -> str:
    return safe_name("dask", username, "jobs")


def jobs_secret(username: str, namespace: str, release: str, adaptors: bytes) -> dict:
    """The adaptor configuration her jobs see (home at ``~``, her stored adaptors, their
    credentials), mounted read-only by her cluster's workers at ``JOBS_FILES``."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(jobs_secret_name(username), namespace, labels(release, "dask", username), username),
            "data": {"adaptors.json": base64.b64encode(adaptors).decode()}}


def cluster_policy(spec: ClusterSpec) -> dict:
    """Who may reach the user's Dask pods: the user's own pods, and the platform's workload
    scheduler; nobody else (another user's pods included)."""
    own = {USER_LABEL: safe_name(spec.username), "app.kubernetes.io/instance": spec.release}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(spec.name, spec.namespace, labels(spec.release, "dask", spec.username), spec.username),
        "spec": {"podSelector": {"matchLabels": {**own, "app.kubernetes.io/component": "dask"}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": own}},
                                       {"podSelector": {"matchLabels": {
                                           "app.kubernetes.io/instance": spec.release,
                                           "app.kubernetes.io/component": "workload"}}}]}]},
    }
