"""A Dask cluster per user: scheduler and workers under the user's OS account, behind TLS.

    spec = ClusterSpec.from_pool("cpu", {"workers": 2, "threads": 1, "memory": "2GiB"})
    cluster = UserCluster.start(account, "cpu", spec, data_dir.handover("alice") / "dask" / "cpu")
    cluster.address           # tls://127.0.0.1:<port>
    cluster.user_files()      # {"tls_ca_file": ..., "tls_client_cert": ..., "tls_client_key": ...}
    cluster.platform_files()  # the same, for the platform's own clients (run as the account!)
    security(files)           # distributed.Security(**files, require_encryption=True)
    cluster.activity()        # {"workers": 2, "tasks": 0, "clients": 0}, as last reported
    cluster.idle_for()        # seconds it has been idle (see below); the caller stops it at a limit
    cluster.stop()            # every process of the cluster is gone when this returns

    clusters = UserClusters()                       # the platform's clusters, one per (user, pool)
    clusters.ensure(account, "cpu", spec, folder)   # the running one, or a new one
    clusters.stop_idle(after=300)                   # stops those idle that long; their keys

Rules:
- each cluster has credentials of its own, made at its start and never reused: a CA (its
  key is never written anywhere, so nobody can sign another certificate for the cluster),
  a certificate for the scheduler and workers (server and client use), one for the
  platform's clients and one for the user's (client use only; the platform's is told apart
  by its name, for idle time only). Files in ``folder`` (the platform's, group of the
  account, 2750: ``accounts.share_folder``): ``ca.pem`` 0640; every certificate and key
  given to the account, keys 0600 (its processes need them). Another account reads none
  of them (it cannot even enter the folder); key material is in files only, never in
  arguments, the environment or a log;
- no process of the platform's own identity is ever a Dask client of a user's cluster:
  everything a cluster sends may be a pickle its user made (a task can reach the scheduler
  and every client), and distributed unpickles what reaches a client (event-log payloads
  even with ``deserializers=["msgpack"]`` and ``distributed.scheduler.pickle: False``:
  tried, the code ran as root). The platform's clients run as the account: the watcher
  (``python -m skerry.workload.clusters watch``), which reports the scheduler's state as
  JSON lines the platform parses and checks, and the jobs' runner (``... jobs``,
  ``userjobs``); nothing else crosses back;
- the scheduler and every worker run as the account (``switch_kwargs``: no preexec_fn, so
  a platform with threads can start clusters), in ``clean_environment`` plus Dask's
  configuration (paths, no secrets), cwd and scratch space in ``folder/work`` (the
  account's own, 0700: /tmp's shared dask-scratch-space would be the first user's);
- they listen on 127.0.0.1 only, ``tls://`` only, with ``require-encryption``; no HTTP
  routes (Dask serves logs, call stacks and metrics over plain HTTP otherwise); the
  dashboard is served on a Unix socket in ``work`` that only the account can connect to
  (``skerry.workload.dashboard``), which the user's Jupyter server proxies;
  ``allowed-failures: 0`` and ``worker-saturation:
  inf`` as the platform's pools (``pools.DASK_CONFIG``);
- each process is started through this module (``python -m skerry.workload.clusters
  scheduler|worker ...``), which, already as the account, asks for SIGTERM when the
  platform's thread that started it dies (PR_SET_PDEATHSIG: set after the uid switch, as
  the kernel clears it at the switch) and becomes a child subreaper (whatever a task
  forks and orphans stays below it, where ``stop`` finds it), then runs Dask's own CLI in
  the same process. Call ``start`` from a thread that lives as long as the cluster should
  (the manager's main thread): the signal follows the starting thread, not the process;
- with ``limits`` (``skerry.limits.Limits``), the cluster's processes together get that CPU
  and memory, by the machine's mechanism (``skerry.limits``: one cgroup per cluster,
  ``<account>--dask.<pool>``, else rlimits and affinity per process): each process waits, in
  the wrapper, until the platform has put it in (``Enforcement.join``), so everything it
  forks is in too; ``stop`` removes the cgroups;
- ``stop`` freezes the whole tree (SIGSTOP, found again until nothing new appears: a
  stopped process cannot fork), then SIGKILLs it; no process of the cluster is left;
- idle means: the scheduler holds no task (none queued, running or held in memory for a
  client) and no client but the platform's (told apart by its certificate) is connected.
  The watcher reports it every ``watch_every`` seconds; ``idle_for`` is the time since a
  report last said otherwise (a cluster whose watcher stopped reporting is not running);
  the caller decides the limit (``UserClusters.stop_idle``);
- every bad input is a ``ConfigError`` sentence; a cluster that cannot start is stopped
  and a ``ClusterError`` says why, with the end of its log.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ..config import CLUSTER_HOLD
from ..accounts import Account, clean_environment, give, share_folder, switch_kwargs
from ..localfiles import write_private
from ..errors import ConfigError, SkerryError

__all__ = ["ClusterSpec", "ClusterError", "UserCluster", "UserClusters", "security", "ROLES", "cluster_folder",
           "clusters_folder", "WORK"]

HOST = "127.0.0.1"
START_S = 60.0  # how long a start waits for the scheduler and its workers
DEATH_S = 30  # workers give up on a scheduler gone this long
PLATFORM_CN = "skerry-platform"
CLUSTER_CN = "dask-internal"  # the scheduler's and workers' certificate (its DNS name too)
USER_CN = "skerry-user"
ROLES = {"scheduler": "distributed.cli.dask_scheduler", "worker": "distributed.cli.dask_worker", "watch": None,
         "jobs": None}
WATCH_EVERY = 5.0  # seconds between the watcher's reports once every worker joined
REPORT_MAX = 4096  # bytes a report line may hold; a longer one is a broken watcher
_PR_SET_CHILD_SUBREAPER = 36
WORKER_OOM_SCORE = 500  # above every other process of the cluster (0): see dask_setup
WORK = "work"  # the cluster folder's own folder for the account: cwd, scratch space, the dashboard's socket

FILES = {"ca": "ca.pem", "cluster": ("cluster.pem", "cluster-key.pem"),
         "user": ("user.pem", "user-key.pem"), "platform": ("platform.pem", "platform-key.pem")}
SPEC_FIELDS = ("workers", "threads", "memory", "resources", "devices")


def clusters_folder(handover: str | os.PathLike) -> Path:
    """The folder of a user's clusters, one folder per pool, in the user's handover folder
    (``DataDir.handover``)."""
    return Path(handover) / "dask"


def cluster_folder(handover: str | os.PathLike, pool: str) -> Path:
    """The folder of a user's cluster of ``pool``: its credentials, connect file and log;
    ``WORK`` below it."""
    return clusters_folder(handover) / pool


class ClusterError(SkerryError):
    """A user's cluster could not start or stop; the sentence says why."""

    code = "cluster_error"


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of one user's cluster: ``workers`` processes of ``threads`` threads and
    ``memory`` each (Dask's ``--memory-limit``: "auto", "4GiB", bytes), each declaring
    ``resources`` ({"GPU": 1} for a gpu pool); with ``devices``, worker i sees only GPU
    ``devices[i % len(devices)]`` (``CUDA_VISIBLE_DEVICES``)."""

    workers: int = 1
    threads: int = 1
    memory: str = "auto"
    resources: tuple[tuple[str, float], ...] = ()
    devices: tuple[int, ...] = ()

    def __post_init__(self):
        for name, value, top in (("workers", self.workers, 1024), ("threads", self.threads, 256)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ConfigError(f"a user cluster's {name} must be a whole number from 1 to {top}, "
                                  f"not {value!r}")
        _check_memory(self.memory)
        object.__setattr__(self, "resources", _check_resources(self.resources))
        if not isinstance(self.devices, tuple) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.devices):
            raise ConfigError(f"a user cluster's devices must be GPU numbers (0, 1, ...), "
                              f"not {self.devices!r}")

    @classmethod
    def from_pool(cls, pool: str, spec: Any) -> ClusterSpec:
        """The spec of a user cluster carved from pool ``pool`` of pools.json: a ``PoolSpec``
        or a dict of ``workers``, ``threads``, ``memory``, ``resources``, ``devices``. A gpu
        pool's workers declare ``GPU: 1`` unless ``resources`` says otherwise."""
        from .pools import PoolSpec, needs

        if isinstance(spec, PoolSpec):
            if not spec.local:
                raise ConfigError(f"pool {pool!r} is a Dask cluster at {spec.address}: user clusters "
                                  f"are started on this machine only, from a local pool's workers")
            spec = {"workers": spec.workers or 1, "threads": spec.threads, "memory": spec.memory}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"pool {pool!r}: a user cluster's spec must be an object of "
                              f"{', '.join(SPEC_FIELDS)}, not {spec!r}")
        unknown = sorted(set(spec) - set(SPEC_FIELDS))
        if unknown:
            raise ConfigError(f"pool {pool!r}: unknown user cluster field(s) {', '.join(map(repr, unknown))} "
                              f"(fields: {', '.join(SPEC_FIELDS)})")
        given = dict(spec)
        given.setdefault("resources", needs(pool))
        resources = given["resources"]
        if isinstance(resources, Mapping):
            given["resources"] = tuple(sorted(resources.items()))
        if isinstance(given.get("devices"), list):
            given["devices"] = tuple(given["devices"])
        return cls(**given)


def _check_memory(memory: Any) -> None:
    from dask.utils import parse_bytes

    if memory == "auto":
        return
    try:
        ok = isinstance(memory, str) and parse_bytes(memory) > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"a user cluster's memory per worker must be 'auto' or a size such as "
                          f"'4GiB', not {memory!r}")


def _check_resources(resources: Any) -> tuple[tuple[str, float], ...]:
    if isinstance(resources, Mapping):
        resources = tuple(sorted(resources.items()))
    ok = isinstance(resources, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and p[0].isidentifier()
        and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) and p[1] > 0 for p in resources)
    if not ok:
        raise ConfigError(f"a user cluster's resources must map names to positive amounts "
                          f"(e.g. {{\"GPU\": 1}}), not {resources!r}")
    return resources


# ---- credentials ---------------------------------------------------------------------------


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())  # a millisecond, where RSA takes ~100 ms


def _certificate(subject: str, key, issuer: str, signer, *, ca: bool = False,
                 server: bool = False):
    """A certificate of ``key`` for ``subject`` signed by ``signer`` (as Security.temporary
    does, but from a CA of the cluster's own)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks that differ a little
               .not_valid_after(now + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if not ca:
        uses = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(uses), critical=False)  # a client cert serves nothing
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(CLUSTER_CN)]),
                                        critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(cert=None, key=None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if cert is not None:
        return cert.public_bytes(serialization.Encoding.PEM)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int, owner: Account | None) -> None:
    """Write a fresh file (never through a link, never an old one), then give it away."""
    write_private(path, data, mode)
    if owner is not None:
        give(path, owner)


def new_credentials() -> dict[str, bytes]:
    """A new CA and the cluster's, the user's and the platform's certificates and keys, as PEM
    by name (``ca``, ``cluster``, ``cluster-key``, ``user``, ...); the CA's key is dropped."""
    ca_key = _key()
    ca = _certificate("skerry-cluster-ca", ca_key, "skerry-cluster-ca", ca_key, ca=True)
    pems = {"ca": _pem(cert=ca)}
    for who, cn in (("cluster", CLUSTER_CN), ("user", USER_CN), ("platform", PLATFORM_CN)):
        key = _key()
        pems[who] = _pem(cert=_certificate(cn, key, "skerry-cluster-ca", ca_key, server=who == "cluster"))
        pems[who + "-key"] = _pem(key=key)
    return pems  # the CA's key dies here: no other certificate can ever be signed for this cluster


def make_credentials(folder: Path, account: Account) -> dict[str, Path]:
    """Write ``new_credentials`` in ``folder`` (module docstring); their paths by name."""
    pems = new_credentials()
    paths = {"ca": folder / FILES["ca"]}
    _write(paths["ca"], pems["ca"], 0o640, None)
    for who in ("cluster", "user", "platform"):
        cert_name, key_name = FILES[who]
        paths[who], paths[who + "-key"] = folder / cert_name, folder / key_name
        _write(paths[who + "-key"], pems[who + "-key"], 0o600, account)
        _write(paths[who], pems[who], 0o640, account)
    return paths


# ---- processes -----------------------------------------------------------------------------


def _dask_environment(account: Account, paths: dict[str, Path], work: Path) -> dict[str, str]:
    """The account's clean environment plus Dask's configuration: paths and flags only."""
    from .pools import DASK_CONFIG, dask_environment

    config = {**DASK_CONFIG,
              "distributed.comm.require-encryption": True,
              "distributed.comm.tls.ca-file": str(paths["ca"]),
              "distributed.comm.tls.scheduler.cert": str(paths["cluster"]),
              "distributed.comm.tls.scheduler.key": str(paths["cluster-key"]),
              "distributed.comm.tls.worker.cert": str(paths["cluster"]),
              "distributed.comm.tls.worker.key": str(paths["cluster-key"]),
              "distributed.comm.tls.client.cert": str(paths["cluster"]),
              "distributed.comm.tls.client.key": str(paths["cluster-key"]),
              "distributed.scheduler.http.routes": [],  # Dask's HTTP is plain and unauthenticated
              "distributed.worker.http.routes": [],
              "temporary-directory": str(work)}
    return clean_environment(account, dask_environment(config))


def _launch(role: str, args: list[str], account: Account, env: dict[str, str], work: Path,
            log, extra_env: dict[str, str] | None = None, stdout=None, stdin=subprocess.DEVNULL,
            limits=None) -> subprocess.Popen:
    """Start one process of the cluster as the account, through this module's wrapper
    (``_main``), which waits until ``limits`` (a ``skerry.limits.Enforcement``) took it in."""
    # this Python as given (a venv's own, not the interpreter it links to): it imports this skerry
    command = [sys.executable, "-m", "skerry.workload.clusters", role, *args]
    hold, go = os.pipe()  # the wrapper reads ``hold`` until we close ``go``
    try:
        process = subprocess.Popen(command, cwd=work, env={**env, **(extra_env or {}), CLUSTER_HOLD.name: str(hold)},
                                   stdin=stdin, stdout=stdout or log, stderr=log, close_fds=True,
                                   pass_fds=(hold,),
                                   start_new_session=True,  # the terminal's ^C goes to the platform only
                                   **switch_kwargs(account))
    finally:
        os.close(hold)
    try:
        if limits is not None:
            limits.join(process.pid)
    except OSError as e:
        process.kill()
        process.wait()
        raise ClusterError(f"the {role} of {account.name}'s cluster could not be put under its limits: "
                           f"{e.strerror or e}") from None
    finally:
        os.close(go)
    return process


def _scheduler_args(scheduler_file: Path) -> list[str]:
    # Dask's own dashboard would be TCP, open to every local process: ours is on a socket (dashboard)
    return ["--host", HOST, "--port", "0", "--protocol", "tls", "--scheduler-file", str(scheduler_file),
            "--no-dashboard", "--dashboard-address", f"{HOST}:0", "--preload", "skerry.workload.dashboard"]


def _worker_args(spec: ClusterSpec, scheduler_file: Path, work: Path, nworkers: int, name: str) -> list[str]:
    args = ["--scheduler-file", str(scheduler_file), "--host", HOST, "--protocol", "tls",
            "--preload", "skerry.workload.clusters",  # dask_setup: a worker is the first OOM victim
            "--nworkers", str(nworkers), "--nthreads", str(spec.threads), "--memory-limit", spec.memory,
            "--no-dashboard", "--dashboard-address", f"{HOST}:0", "--local-directory", str(work),
            "--death-timeout", str(DEATH_S), "--name", name]
    if spec.resources:
        args += ["--resources", " ".join(f"{k}={v:g}" for k, v in spec.resources)]
    return args


def _tree(roots: list[int]) -> dict[int, int]:
    """The live processes at and below ``roots``: {pid: start time} (a pid alone may be reused)."""
    from ..process import descendants, start_time

    found = {}
    for root in roots:
        for pid in {root} | descendants(root):
            started = start_time(pid)
            if started is not None:
                found[pid] = started
    return found


def kill_tree(roots: list[int], rounds: int = 100) -> dict[int, int]:
    """Freeze every process below ``roots`` (again until no new one appears), then kill them
    all; the processes killed, {pid: start time}."""
    frozen: dict[int, int] = {}
    for _ in range(rounds):
        new = {pid: t for pid, t in _tree(roots).items() if pid not in frozen}
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)  # a stopped process forks no more
        frozen.update(new)
    frozen.update(_tree(roots))
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    return frozen


def _left(killed: dict[int, int]) -> list[int]:
    from ..process import is_running

    return sorted(pid for pid, started in killed.items() if is_running(pid, started))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _read_address(path: Path) -> str | None:
    """The scheduler's address from its file (the account writes it: never followed through a
    link, never shown), or None while it is not there or not whole yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, OSError):
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(65536)
    try:
        address = json.loads(data).get("address")
    except (ValueError, AttributeError):
        return None  # half written: read it again
    if not isinstance(address, str) or not address.startswith(f"tls://{HOST}:"):
        raise ClusterError(f"the scheduler's file {path} names an address that is not tls://{HOST}:<port>")
    return address


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join(text) or "(empty log)"


# ---- one cluster ---------------------------------------------------------------------------


@dataclass
class UserCluster:
    """One user's running cluster (``start`` makes one)."""

    account: Account
    pool: str
    spec: ClusterSpec
    folder: Path
    address: str
    paths: dict[str, Path]
    processes: list[subprocess.Popen]  # scheduler, worker CLI(s), then the watcher
    started_in: float = 0.0  # seconds from the call to start until every worker had joined
    enforcement: Any = None  # skerry.limits.Enforcement of its limits (None: unlimited)
    _report: dict[str, int] | None = field(default=None, repr=False)
    _busy_at: float = field(default_factory=time.monotonic, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @classmethod
    def start(cls, account: Account, pool: str, spec: ClusterSpec, folder: str | os.PathLike, *,
              watch_every: float = WATCH_EVERY,
              timeout: float = START_S, limits=None) -> UserCluster:
        """Make new credentials in ``folder`` and start the cluster as ``account``; returns once
        all ``spec.workers`` workers joined. ``limits`` (``skerry.limits.Limits``): CPU and memory
        of the whole cluster, by the machine's mechanism (cgroups, else rlimits and affinity),
        every process of it under them from its start. ConfigError on bad input, ClusterError
        if it fails."""
        from skerry.limits import Enforcement

        began = time.monotonic()
        folder = _check_start(account, pool, spec, folder, watch_every)
        _share(folder, account)
        work = _work_folder(folder, account)
        paths = make_credentials(folder, account)
        env = _dask_environment(account, paths, work)
        scheduler_file = work / "scheduler.json"
        processes: list[subprocess.Popen] = []
        log_path = folder / "cluster.log"
        enforcement = None
        if limits is not None and not limits.none:
            enforcement = Enforcement.plan(limits, f"{account.name}--dask.{pool}")  # no server has a "."
            enforcement.prepare()
        with _log(log_path) as log:
            try:
                processes.append(_launch("scheduler", _scheduler_args(scheduler_file),
                                         account, env, work, log, limits=enforcement))
                for name, count, extra in _worker_groups(spec, pool):  # they wait for the scheduler's file
                    processes.append(_launch("worker", _worker_args(spec, scheduler_file, work, count, name),
                                             account, env, work, log, extra, limits=enforcement))
                address = _wait_for_address(scheduler_file, processes, began + timeout, log_path)
                watch = [address, str(paths["ca"]), str(paths["platform"]), str(paths["platform-key"]),
                         str(spec.workers), str(watch_every)]
                processes.append(_launch("watch", watch, account, env, work, log, stdout=subprocess.PIPE,
                                         limits=enforcement))
                cluster = cls(account, pool, spec, folder, address, paths, processes, enforcement=enforcement)
                threading.Thread(target=cluster._read_reports, name=f"skerry-watch-{account.name}-{pool}",
                                 daemon=True).start()
                cluster._wait_for_workers(began + timeout, log_path)
            except BaseException:
                kill_tree([p.pid for p in processes])
                for p in processes:
                    p.wait()
                if enforcement is not None:
                    enforcement.cleanup()
                raise
        cluster.started_in = time.monotonic() - began
        return cluster

    # ---- credentials -----------------------------------------------------------------------

    def user_files(self) -> dict[str, str]:
        """What the user's own processes pass to ``security``: files only the account (and
        root) can read."""
        return self._files("user")

    def platform_files(self) -> dict[str, str]:
        """The same for the platform's clients, which run as the account (module docstring)."""
        return self._files("platform")

    def _files(self, who: str) -> dict[str, str]:
        return {"tls_ca_file": str(self.paths["ca"]), "tls_client_cert": str(self.paths[who]),
                "tls_client_key": str(self.paths[who + "-key"])}

    # ---- state -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Every process of it runs (the watcher too: without it nobody knows its state)."""
        return all(p.poll() is None for p in self.processes)

    def pids(self) -> set[int]:
        """Every live process of the cluster (scheduler, worker CLIs, their workers, the watcher...)."""
        return set(_tree([p.pid for p in self.processes]))

    def activity(self) -> dict[str, int]:
        """The watcher's last report: ``workers``, ``tasks`` and ``clients`` (not the platform's)."""
        with self._changed:
            return dict(self._report or {"workers": 0, "tasks": 0, "clients": 0})

    def idle_for(self) -> float:
        """Seconds since a report last showed work (a task, or a client not the platform's), or
        since the start; 0.0 while it shows work."""
        with self._changed:
            return time.monotonic() - self._busy_at

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(activity)`` holds for a report (True) or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (self._report is not None and predicate(dict(self._report))):
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return False
                self._changed.wait(min(left, 0.5))
            return True

    def stop(self, timeout: float = 10) -> None:
        """Kill every process of the cluster; returns when none is left (ClusterError if one is)."""
        killed = kill_tree([p.pid for p in self.processes])
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))  # reaps our children
            except subprocess.TimeoutExpired:
                pass
        while _left(killed) and time.monotonic() < deadline:
            time.sleep(0.01)  # the others were adopted by init, which reaps them
        left = _left(killed)
        if self.enforcement is not None:
            self.enforcement.cleanup()  # kills what escaped the tree, removes the cgroups
        if left:
            raise ClusterError(f"the {self.pool} cluster of {self.account.name} was killed but "
                               f"processes {left} still run")

    def _read_reports(self) -> None:
        """The watcher's reports, checked (its output is the account's: nothing but numbers)."""
        stream = self.processes[-1].stdout
        while True:
            line = stream.readline(REPORT_MAX)
            if not line:
                break  # the watcher ended: ``running`` says so
            report = _parse_report(line)
            if report is None:
                break  # a watcher that says anything else is not trusted any further
            with self._changed:
                self._report = report
                if report["tasks"] or report["clients"]:
                    self._busy_at = time.monotonic()
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._changed.notify_all()

    def _wait_for_workers(self, deadline: float, log_path: Path) -> None:
        if not self.wait_for(lambda a: a["workers"] >= self.spec.workers, deadline - time.monotonic()):
            why = "a process of it exited" if not self.running else "not all in time"
            raise ClusterError(f"the {self.pool} cluster of {self.account.name} did not start: "
                               f"{self.spec.workers} workers were asked for, {why}; its log "
                               f"({log_path}) ends:\n{_tail(log_path)}")
        with self._changed:
            self._busy_at = time.monotonic()  # idle from now on, not from the call to start


def security(files: Mapping[str, str]):
    """``distributed.Security`` over ``user_files()`` or ``platform_files()``, TLS required."""
    from distributed.security import Security

    return Security(**files, require_encryption=True)


def _parse_report(line: bytes) -> dict[str, int] | None:
    try:
        report = json.loads(line)
    except ValueError:
        return None
    keys = {"workers", "tasks", "clients"}
    if not isinstance(report, dict) or set(report) != keys or not all(
            type(report[k]) is int and report[k] >= 0 for k in keys):
        return None
    return report


def _activity(platform_cn: str, dask_scheduler=None) -> dict[str, int]:
    """Run on the scheduler: its workers, tasks and the clients whose certificate is not the platform's."""
    others = 0
    for _client, stream in list(dask_scheduler.client_comms.items()):
        comm = getattr(stream, "comm", None)
        cert = (comm.extra_info.get("peercert") or {}) if comm is not None else {}
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        others += names != [platform_cn]
    return {"workers": len(dask_scheduler.workers), "tasks": len(dask_scheduler.tasks), "clients": others}


def _watch(address: str, ca: str, cert: str, key: str, workers: str, every: str) -> None:
    """The watcher, as the account: one JSON line of the scheduler's state each ``every`` s
    (every 50 ms until ``workers`` joined); ends when the scheduler or the platform goes."""
    from distributed import Client

    client = Client(address, security=security({"tls_ca_file": ca, "tls_client_cert": cert,
                                                "tls_client_key": key}),
                    timeout=30, set_as_default=False)
    wanted, every = int(workers), float(every)
    while True:
        report = client.run_on_scheduler(_activity, PLATFORM_CN)
        print(json.dumps(report), flush=True)  # BrokenPipeError when the platform went: the end
        time.sleep(every if report["workers"] >= wanted else 0.05)


def _check_start(account: Account, pool: str, spec: ClusterSpec, folder, watch_every) -> Path:
    if not isinstance(account, Account):
        raise ConfigError(f"a user cluster needs the user's Account (accounts.ensure_account), not {account!r}")
    if account.uid == 0 or account.uid == os.geteuid():
        raise ConfigError(f"a user cluster never runs as the platform's own account ({account.name})")
    if not isinstance(pool, str) or not pool.isidentifier():
        raise ConfigError(f"pool name {pool!r} must be a plain name such as 'cpu' or 'gpu'")
    if not isinstance(spec, ClusterSpec):
        raise ConfigError(f"a user cluster needs a ClusterSpec (ClusterSpec.from_pool), not {spec!r}")
    if isinstance(watch_every, bool) or not isinstance(watch_every, (int, float)) or not 0.05 <= watch_every <= 3600:
        raise ConfigError(f"a user cluster's watch interval must be 0.05 to 3600 seconds, not {watch_every!r}")
    folder = Path(folder)
    if not folder.is_absolute():
        raise ConfigError(f"the folder of a user cluster's credentials must be an absolute path, not {folder}")
    return folder


def _share(folder: Path, account: Account) -> None:
    """Make ``folder`` and the missing folders above it the platform's, shared with the account."""
    missing = [f for f in folder.parents if not f.exists()]
    for f in reversed(missing):
        share_folder(f, account)
    share_folder(folder, account)


def _work_folder(folder: Path, account: Account) -> Path:
    """``folder/work``, new and the account's own (0700): its processes write only there."""
    work = folder / WORK
    if work.is_symlink() or work.exists():
        if work.is_symlink() or not work.is_dir():
            work.unlink()
        else:
            shutil.rmtree(work)  # rmtree follows no link the account may have planted
    work.mkdir(mode=0o700)
    give(work, account)
    return work


def _worker_groups(spec: ClusterSpec, pool: str) -> list[tuple[str, int, dict[str, str]]]:
    """The worker CLIs to start: one with all workers, or one per worker when each sees its GPU."""
    if not spec.devices:
        return [(f"{pool}", spec.workers, {})]
    return [(f"{pool}-{i}", 1, {"CUDA_VISIBLE_DEVICES": str(spec.devices[i % len(spec.devices)])})
            for i in range(spec.workers)]


class _log:
    """The cluster's log file (the platform's, 0640, group of the account: its own processes'
    output), opened for the processes to inherit."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        self.file = os.fdopen(fd, "ab")
        return self.file

    def __exit__(self, *exc):
        self.file.close()  # the children hold their own copies


def _wait_for_address(path: Path, processes: list[subprocess.Popen], deadline: float, log_path: Path) -> str:
    while True:
        address = _read_address(path)
        if address is not None:
            return address
        if processes[0].poll() is not None or time.monotonic() > deadline:
            why = (f"it exited ({processes[0].returncode})" if processes[0].poll() is not None
                   else "it wrote no address in time")
            raise ClusterError(f"the scheduler of a user cluster did not start: {why}; its log "
                               f"({log_path}) ends:\n{_tail(log_path)}")
        time.sleep(0.02)


# ---- the platform's clusters ---------------------------------------------------------------


class UserClusters:
    """The platform's user clusters, one per (hub user, pool), started on demand."""

    def __init__(self):
        self.clusters: dict[tuple[str, str], UserCluster] = {}
        self._lock = threading.Lock()

    def ensure(self, account: Account, pool: str, spec: ClusterSpec, folder: str | os.PathLike,
               **options) -> UserCluster:
        """The user's running cluster of ``pool``, started now (``UserCluster.start``) if there is
        none or it died."""
        key = (account.hub_name, pool)
        with self._lock:
            cluster = self.clusters.get(key)
            if cluster is not None and cluster.running:
                return cluster
            if cluster is not None:
                self._stop(key)
            cluster = self.clusters[key] = UserCluster.start(account, pool, spec, folder, **options)
            return cluster

    def stop_idle(self, after: float) -> list[tuple[str, str]]:
        """Stop every cluster idle for ``after`` seconds or more, or broken (a process of it
        gone, the watcher's included); the (user, pool) keys stopped."""
        stopped = []
        for key, cluster in list(self.clusters.items()):
            if cluster.idle_for() >= after or not cluster.running:
                with self._lock:
                    if self.clusters.get(key) is cluster:
                        self._stop(key)
                        stopped.append(key)
        return stopped

    def stop(self, hub_name: str, pool: str) -> bool:
        """Stop that user's cluster of ``pool``; False if none ran."""
        with self._lock:
            return self._stop((hub_name, pool))

    def close(self) -> None:
        """Stop them all (the platform stops)."""
        with self._lock:
            for key in list(self.clusters):
                self._stop(key)

    def _stop(self, key) -> bool:
        cluster = self.clusters.pop(key, None)
        if cluster is None:
            return False
        cluster.stop()
        return True


# ---- in the cluster's processes ------------------------------------------------------------


def dask_setup(worker) -> None:
    """The workers' preload: under the cluster's memory limit, the kernel's OOM killer picks a
    worker (whose nanny starts it again) before the scheduler, a nanny or the watcher, which
    the cluster cannot do without (a process may raise its own score, never lower it)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(WORKER_OOM_SCORE))
    except OSError:  # no /proc: the machine's own choice stands
        pass


# ---- the wrapper each cluster process starts through ---------------------------------------


def _main(argv: list[str]) -> None:
    """``python -m skerry.workload.clusters scheduler|worker|watch|jobs ARGS``: already the account, ask to
    die with the platform and to adopt our orphans, then be Dask's CLI in this same process."""
    import ctypes

    from ..process import die_with_parent
    from ..quickstart import leave_out_unused

    leave_out_unused()  # a worker's first notebook job imports papermill: 1.5-2 s of CPU less

    hold = CLUSTER_HOLD.pop()
    if hold is not None:  # wait (reading to EOF) until the platform put us under the cluster's limits
        while os.read(hold, 64):
            pass
        os.close(hold)
    if not argv or argv[0] not in ROLES:
        sys.exit(f"usage: python -m skerry.workload.clusters {'|'.join(ROLES)} [dask options]")
    if os.geteuid() == 0:
        sys.exit("a user cluster's process never runs as root")
    die_with_parent(signal.SIGTERM)  # after the uid switch: the kernel cleared any earlier one
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if argv[0] in ("watch", "jobs"):  # the platform's clients, as the account
        from .userjobs import serve

        try:
            (_watch if argv[0] == "watch" else serve)(*argv[1:])
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        return
    import importlib

    cli = importlib.import_module(ROLES[argv[0]])
    cli.main(args=argv[1:], prog_name=f"dask {argv[0]}")


if __name__ == "__main__":
    _main(sys.argv[1:])
