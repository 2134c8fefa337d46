"""``/services/skerry/api/v1/clusters``: a user's own Dask clusters, for her kernels.

``GET /clusters`` answers the pools the platform runs and the caller's running clusters::

    {"pools": ["cpu"], "clusters": {"cpu": "tls://127.0.0.1:40123"}}

``POST /clusters/cpu`` with alice's token answers her cluster of the ``cpu`` pool, started
now by the workload manager if none runs (``skerry.workload.clusterask``)::

    {"pool": "cpu", "address": "tls://127.0.0.1:40123",
     "tls": {"tls_ca_file": ..., "tls_client_cert": ..., "tls_client_key": ...}}

``tls`` names files in her handover folder that only her account can read (the key is
never in an answer); pass them to ``skerry.workload.clusters.security``. On a
single-user platform the pools are the one user's and ``tls`` is null.

Errors: 403 ``not_a_user`` for a token that is not a user's (a service's cluster would run
as nobody); 404 ``no_pool`` for a pool the platform does not run; 409 ``account_locked``;
503 ``manager_unavailable`` or ``cluster_error`` with the sentence why.
"""

from __future__ import annotations


from fastapi import APIRouter, Depends

from skerry.errors import SkerryError

from skerry.hub.service.toolkit import API, ApiError, caller, in_thread
from skerry import config

STATUS = {"no_pool": 404, "account_locked": 409, "bad_request": 400}


router = APIRouter(prefix=API, tags=["clusters"])


@router.get("/clusters")
async def user_clusters(who: dict = Depends(caller)):
    """The platform's pools (``pools.json``) and the caller's running clusters."""
    from skerry.datadir import DataDir
    from skerry.workload.pools import load_pools
    from skerry.workload.userpools import running_clusters

    data = DataDir(config.DATA_DIR.require())
    try:
        pools = await in_thread(load_pools, data.path / "pools.json")
    except SkerryError as e:
        raise ApiError(503, e.code, e.message) from None
    mine = running_clusters(data, who["name"]) if who.get("kind") == "user" else {}
    return {"pools": sorted(pools), "clusters": mine}


@router.post("/clusters/{pool}")
async def user_cluster(pool: str, who: dict = Depends(caller)):
    """The caller's Dask cluster of ``pool``, started if none runs (module docstring)."""
    from skerry.workload.clusterask import ask

    if who.get("kind") != "user":
        raise ApiError(403, "not_a_user", "Only a user has a Dask cluster: use a user's token.")
    try:
        return await in_thread(ask, config.DATA_DIR.require(), who["name"], pool)
    except SkerryError as e:
        raise ApiError(STATUS.get(e.code, 503), e.code, e.message) from None
