"""A user's Dask cluster on the Kubernetes backend: skerry's objects (hub/plugins/kube/objects.py)
handed to the real dask-kubernetes operator (its kopf controller, run as a program of its own:
.ci/run installs ``dask-kubernetes-operator``), against our API server and stand-in kubelet
(tests/kubeapi.py: no Kubernetes API server can run here). The scheduler and workers are real
Dask processes of the user's uid, speaking TLS with the cluster's own certificates.
"""

import asyncio
import os
import time

import pytest
from distributed import Client
from distributed.security import Security
from kubernetes_asyncio import client

from kubeapi import dask_operator, running
from skerry.hub.plugins.kube.objects import ClusterSpec, cluster_policy, cluster_tls_secret, dask_cluster
from skerry.hub.stores.profiles import DaskLimits

NAMESPACE = "lab"
IMAGE = "skerry/user:test"
UID = 100321
DASK = "kubernetes.dask.org"


@pytest.fixture(scope="module")
def cluster_api(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    with running(root, images=[IMAGE], namespaces=[NAMESPACE]) as url:
        with dask_operator(url, tmp_path_factory.mktemp("operator"), NAMESPACE):
            yield url


async def until(what, check, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def ready_pods(pods, component):
    return [p for p in pods.items if p.metadata.labels.get("dask.org/component") == component
            and p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def test_a_users_cluster_runs_as_the_user_speaks_only_tls_and_goes_with_its_resource(cluster_api):
    spec = ClusterSpec(username="alice", uid=UID, gid=UID, image=IMAGE, namespace=NAMESPACE,
                       dask=DaskLimits(max_workers=2, worker_threads=1, worker_memory=2**30))
    tls = Security.temporary()  # the cluster's own certificates, as the workload scheduler makes them
    ca, cert, key = (x.encode() for x in (tls.tls_ca_file, tls.tls_client_cert, tls.tls_client_key))

    async def go():
        async with client.ApiClient(client.Configuration(host=cluster_api)) as c:
            core, custom = client.CoreV1Api(c), client.CustomObjectsApi(c)
            net = client.NetworkingV1Api(c)
            await core.create_namespaced_secret(NAMESPACE, cluster_tls_secret(spec, ca, cert, key))
            await net.create_namespaced_network_policy(NAMESPACE, cluster_policy(spec))
            await custom.create_namespaced_custom_object(DASK, "v1", NAMESPACE, "daskclusters", dask_cluster(spec))
            scheduler = await until("the scheduler", lambda: _pods(core, "scheduler"))
            # the operator made the default worker group from the cluster's worker template: scale it
            await until("the worker group", lambda: _group(custom, "dask-alice-default"))
            await custom.patch_namespaced_custom_object(DASK, "v1", NAMESPACE, "daskworkergroups",
                                                        "dask-alice-default", {"spec": {"worker": {"replicas": 2}}})
            workers = await until("two workers", lambda: _pods(core, "worker", 2))
            return scheduler[0], workers

    scheduler, workers = asyncio.run(go())
    for pod in [scheduler, *workers]:
        assert pod.spec.security_context.run_as_user == UID and pod.spec.automount_service_account_token is False
    address = f"tls://{scheduler.status.pod_ip}:8786"
    with Client(address, security=_security(tls), timeout=30) as dask:
        dask.wait_for_workers(2, timeout=60)
        assert set(dask.run(os.getuid).values()) == {UID}  # the user's uid, on every worker
        assert dask.submit(lambda x: x * 2, 21).result(timeout=30) == 42
    with pytest.raises((OSError, TimeoutError)):  # plain TCP: refused (TLS only)
        Client(f"tcp://{scheduler.status.pod_ip}:8786", timeout=5)
    other = Security.temporary()  # another cluster's certificates: refused
    with pytest.raises((OSError, TimeoutError)):
        Client(address, security=_security(other), timeout=5)

    async def gone():
        async with client.ApiClient(client.Configuration(host=cluster_api)) as c:
            core, custom = client.CoreV1Api(c), client.CustomObjectsApi(c)
            await custom.delete_namespaced_custom_object(DASK, "v1", NAMESPACE, "daskclusters", "dask-alice")

            async def none_left():
                pods = await core.list_namespaced_pod(NAMESPACE, label_selector="dask.org/cluster-name=dask-alice")
                return not pods.items
            await until("the cluster's pods to go", none_left, timeout=60)
    asyncio.run(gone())


def _security(tls: Security) -> Security:
    return Security(tls_ca_file=tls.tls_ca_file, tls_client_cert=tls.tls_client_cert,
                    tls_client_key=tls.tls_client_key, require_encryption=True)


async def _pods(core, component, count=1):
    pods = await core.list_namespaced_pod(NAMESPACE, label_selector="dask.org/cluster-name=dask-alice")
    ready = ready_pods(pods, component)
    return ready if len(ready) >= count else None


async def _group(custom, name):
    groups = await custom.list_namespaced_custom_object(DASK, "v1", NAMESPACE, "daskworkergroups")
    return [g for g in groups["items"] if g["metadata"]["name"] == name]
