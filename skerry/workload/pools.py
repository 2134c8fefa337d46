"""The Dask pools of ``skerry up``'s scheduler: what runs the jobs.

``DIR/pools.json`` (optional) names them; without it, or for a pool it leaves out:

- ``cpu``: a LocalCluster on this machine, one single-threaded worker process per core;
- ``gpu``: when ``nvidia-smi -L`` lists GPUs, one worker process per GPU, each declaring
  the Dask resource ``GPU=1`` and seeing only its own GPU (``CUDA_VISIBLE_DEVICES``);
  no GPU, no ``gpu`` pool (GPU jobs then fail with ``no_pool``).

Examples::

    {"cpu": {"workers": 4, "threads": 1, "memory": "4GiB"}}
    {"gpu": {"address": "tcp://gpu-node:8786"}}     # an existing Dask cluster
    {"gpu": {"workers": 1}}                         # a local worker declaring GPU=1
    {"gpu": null}                                   # no gpu pool, even with GPUs
    {"cpu": null, "gpu": null}                      # no pool: jobs stay queued (a catalog-only hub)

Rules:
- a pool is either local (``workers``, ``threads``, ``memory``) or an ``address`` of a
  running Dask scheduler (one started by hand, dask-gateway or dask-kubernetes); any other
  key, or both kinds at once, is a ``ConfigError`` naming it;
- every worker of the ``gpu`` pool must declare ``GPU`` (a local one does); the scheduler
  sends GPU jobs only there, and CPU jobs to the ``cpu`` pool, so neither waits behind
  the other;
- local clusters run with Dask's ``allowed-failures: 0`` (a dead worker's attempt goes
  back to the catalog, whose retry policy decides) and no dashboard; a cluster at an
  address should be configured the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = ["PoolSpec", "load_pools", "gpu_count", "start_pools", "DASK_CONFIG", "dask_environment"]

GPU = {"GPU": 1}
# a Dask scheduler serves HTTP (metrics) even without a dashboard, on port 8787 unless told
NO_DASHBOARD = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
DASK_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    # the scheduler bounds what Dask holds; Dask need not hold tasks back itself
    "distributed.scheduler.worker-saturation": "inf",
    # the dashboard's profile sampled every 100 ms, not 10: an idle worker took 4.5-4.7% of a core, 2.7-3.0 at 100
    "distributed.worker.profile.interval": "100ms",
    # each Dask process's event-loop health check every 200 ms, not 20 (its warning comes after 3 s
    # anyway): an idle worker 2.8-3.0% of a core -> 1.2-1.4, the scheduler and a client 6.5-7.8 -> 2.9-3.0
    "distributed.admin.tick.interval": "200ms",
}


def dask_environment(settings: dict) -> dict[str, str]:
    """Dask settings as the environment variables Dask reads at start (``DASK_A__B_C``):
    for processes started elsewhere (a user's cluster, a Kubernetes pod)."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value) for key, value in settings.items()}


class PoolSpec(BaseModel):
    """One pool: a local cluster or the address of a running one."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(default=None, min_length=1)
    workers: int | None = Field(default=None, ge=1, le=1024)
    threads: int = Field(default=1, ge=1, le=256)
    memory: str = Field(default="auto", min_length=1)

    @model_validator(mode="after")
    def _one_kind(self):
        if self.address is not None and (self.workers is not None or "threads" in self.model_fields_set
                                         or "memory" in self.model_fields_set):
            raise ValueError("give either 'address' or local workers (workers, threads, memory), not both")
        return self

    @property
    def local(self) -> bool:
        return self.address is None


def gpu_count() -> int:
    """The GPUs ``nvidia-smi -L`` lists (0 without the program or a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def load_pools(path: str | os.PathLike | None, *, cores: int | None = None, gpus: int | None = None
               ) -> dict[str, PoolSpec]:
    """The pools of ``path`` (``pools.json``; missing: the defaults), checked."""
    given: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            given = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is not readable JSON: {e}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"{path} must hold an object of pools ({{\"cpu\": {{...}}, \"gpu\": {{...}}}})")
        unknown = set(given) - {"cpu", "gpu"}
        if unknown:
            raise ConfigError(f"{path}: unknown pool(s) {', '.join(sorted(unknown))} (pools: cpu, gpu)")
    cores = cores or os.cpu_count() or 1
    gpus = gpu_count() if gpus is None else gpus
    defaults = {"cpu": {"workers": cores}, "gpu": {"workers": gpus} if gpus else None}
    pools = {}
    for name, default in defaults.items():
        raw = given.get(name, default)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: pool {name!r} must be an object or null, not {raw!r}")
        try:
            spec = PoolSpec(**raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: pool {name!r}{' ' + where if where else ''}: {first['msg']}") from None
        if spec.local and spec.workers is None:
            spec.workers = cores if name == "cpu" else max(gpus, 1)
        pools[name] = spec
    return pools


def start_pools(pools: dict[str, PoolSpec], *, gpus: int | None = None) -> tuple[dict[str, str], list]:
    """Start the local clusters; ``({pool: scheduler address}, [clusters to close])``.

    Call inside ``dask.config.set(DASK_CONFIG)``. A pool at an address is only named.
    """
    from distributed import LocalCluster, Nanny, SpecCluster
    from distributed.scheduler import Scheduler

    gpus = gpu_count() if gpus is None else gpus
    addresses, clusters = {}, []
    try:
        for name, spec in pools.items():
            if not spec.local:
                addresses[name] = spec.address
                continue
            if name == "cpu":
                cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=spec.threads,
                                       memory_limit=spec.memory, processes=True, scheduler_kwargs=NO_DASHBOARD)
            else:  # each GPU worker sees its own device, when there are devices to see
                workers = {
                    f"gpu-{i}": {"cls": Nanny, "options": {
                        "nthreads": spec.threads, "resources": GPU, "memory_limit": spec.memory,
                        **({"env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)}} if gpus else {})}}
                    for i in range(spec.workers)}
                cluster = SpecCluster(workers, scheduler={"cls": Scheduler, "options": NO_DASHBOARD},
                                      name="skerry-gpu")
            clusters.append(cluster)
            addresses[name] = cluster.scheduler_address
    except Exception:
        for cluster in clusters:
            cluster.close()
        raise
    return addresses, clusters


def needs(pool: str) -> dict:
    """The Dask resources a worker must declare to run the pool's jobs."""
    return dict(GPU) if pool == "gpu" else {}
