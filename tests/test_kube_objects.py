"""The Kubernetes backend's objects (skerry.hub.plugins.kube.objects), built for example
profiles and compared with the dicts they must be; every object validated offline against the
Kubernetes schemas of the two newest minors (kubernetes-validate, strict: an unknown field is
an error). No API server runs here: what one would accept is what these schemas accept.
"""

import base64
import copy
import json
import re

import pytest
from kubernetes_validate import ValidationError
from kubernetes_validate import validate as kube_validate

from skerry.hub.plugins.kube.objects import (ClusterSpec, ServerSpec, cluster_policy, cluster_tls_secret, dask_cluster,
                                             gpu_workers, home_claim, jobs_secret, safe_name, server_secret, user_pod)
from skerry.hub.stores.profiles import validate as profile

VERSIONS = ("1.36.0", "1.37.0")  # the two newest minors kubernetes-validate knows
TOKEN = "a1b2c3d4e5f6-hub-token"
KEY = "identity-key-0123456789"
HUB_ENV = {"JUPYTERHUB_API_TOKEN": TOKEN, "SKERRY_IDENTITY_KEY": KEY,
           "JUPYTERHUB_API_URL": "http://hub:8081/hub/api", "JUPYTERHUB_USER": "alice"}
FILES = {"adaptors.json": b'{"adaptors": [{"name": "s3", "secret_key": "s3cr3t"}]}', "jwt-keys.json": b"{}"}

CPU_PROFILE = profile({"slug": "small", "display_name": "Small", "resources": {
    "cpu_limit": 2, "cpu_guarantee": 0.5, "mem_limit": "4Gi", "mem_guarantee": "1Gi", "gpus": 0},
    "dask": {"max_workers": 4, "worker_threads": 2, "worker_memory": "2Gi"}})
GPU_PROFILE = profile({"slug": "gpu-small", "display_name": "Small GPU", "resources": {
    "cpu_limit": 4, "cpu_guarantee": 1, "mem_limit": "16Gi", "mem_guarantee": "4Gi", "gpus": 1},
    "dask": {"max_workers": 2, "worker_threads": 4, "worker_memory": "8Gi"},
    "kubernetes": {"node_selector": {"skerry.io/pool": "gpu"},
                   "tolerations": [{"key": "skerry.io/pool", "value": "gpu", "effect": "NoSchedule"}]}})


def server(p, **kw):
    return ServerSpec(**{"username": "alice", "uid": 100001, "gid": 100001, "image": "skerry/user:1",
                         "resources": p.resources, "placement": p.kubernetes, "namespace": "lab",
                         "env": HUB_ENV, "profile": p.slug, **kw})


def cluster(p, **kw):
    return ClusterSpec(**{"username": "alice", "uid": 100001, "gid": 100001, "image": "skerry/user:1",
                          "dask": p.dask, "placement": p.kubernetes, "namespace": "lab", **kw})


def valid(obj):
    for version in VERSIONS:
        kube_validate(obj, version, strict=True)
    return obj


def valid_pod_spec(spec):
    """The pod templates inside the Dask resources are PodSpecs: validated as a pod's."""
    return valid({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template"}, "spec": spec})


def env_of(secret_ref: str):
    return [
        {"name": "HOME", "value": "/home/jovyan"},
        {"name": "JUPYTERHUB_API_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": secret_ref, "key": "env.JUPYTERHUB_API_TOKEN"}}},
        {"name": "JUPYTERHUB_API_URL", "value": "http://hub:8081/hub/api"},
        {"name": "JUPYTERHUB_USER", "value": "alice"},
        {"name": "SKERRY_ADAPTORS", "value": "/etc/skerry/server/adaptors.json"},
        {"name": "SKERRY_DAV_IP", "value": "0.0.0.0"},
        {"name": "SKERRY_DAV_PORT", "value": "8889"},
        {"name": "SKERRY_DAV_PREFIX", "value": "/dav/alice/"},
        {"name": "SKERRY_IDENTITY_KEY",
         "valueFrom": {"secretKeyRef": {"name": secret_ref, "key": "env.SKERRY_IDENTITY_KEY"}}},
        {"name": "SKERRY_JWT_KEYS", "value": "/etc/skerry/server/jwt-keys.json"},
        {"name": "SKERRY_PROFILE", "value": "small"},
        {"name": "SKERRY_SERVER", "value": ""},
        {"name": "SKERRY_USER", "value": "alice"},
    ]


MOUNTS = [{"name": "home", "mountPath": "/home/jovyan"},
          {"name": "server", "mountPath": "/etc/skerry/server", "readOnly": True}]
LOCKED_DOWN = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
CPU_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "skerry-alice", "namespace": "lab",
                 "labels": {"app.kubernetes.io/name": "skerry", "app.kubernetes.io/instance": "skerry",
                            "app.kubernetes.io/component": "user-server", "skerry.io/user": "alice"},
                 "annotations": {"skerry.io/username": "alice"}},
    "spec": {
        "automountServiceAccountToken": False, "enableServiceLinks": False, "restartPolicy": "OnFailure",
        "securityContext": {"runAsUser": 100001, "runAsGroup": 100001, "runAsNonRoot": True, "fsGroup": 100001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {"name": "notebook", "image": "skerry/user:1", "imagePullPolicy": "IfNotPresent",
             "command": ["python", "-m", "skerry.quickstart", "jupyterhub.singleuser"],
             "ports": [{"name": "notebook-port", "containerPort": 8888}],
             "env": env_of("skerry-alice"), "workingDir": "/home/jovyan", "volumeMounts": MOUNTS,
             "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
             "securityContext": LOCKED_DOWN},
            {"name": "webdav", "image": "skerry/user:1", "imagePullPolicy": "IfNotPresent",
             "command": ["python", "-m", "skerry.hub.userserver.webdav"],
             "ports": [{"name": "dav", "containerPort": 8889}],
             "env": env_of("skerry-alice"), "workingDir": "/home/jovyan", "volumeMounts": MOUNTS,
             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
             "securityContext": LOCKED_DOWN},
        ],
        "volumes": [
            {"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}},
            {"name": "server", "secret": {"secretName": "skerry-alice", "defaultMode": 0o440,
                                          "items": [{"key": "adaptors.json", "path": "adaptors.json"},
                                                    {"key": "jwt-keys.json", "path": "jwt-keys.json"}]}},
        ],
    },
}


def test_a_cpu_profiles_pod_is_exactly_this():
    pod = valid(user_pod(server(CPU_PROFILE)))
    assert pod == CPU_POD


def test_a_gpu_profiles_pod_adds_its_gpus_node_selector_and_tolerations_and_nothing_else():
    pod = valid(user_pod(server(GPU_PROFILE)))
    expected = copy.deepcopy(CPU_POD)
    notebook = expected["spec"]["containers"][0]
    notebook["resources"] = {"requests": {"cpu": "1", "memory": "4Gi"},
                             "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}
    for c in expected["spec"]["containers"]:
        c["env"][10]["value"] = "gpu-small"  # SKERRY_PROFILE
    expected["spec"]["nodeSelector"] = {"skerry.io/pool": "gpu"}
    expected["spec"]["tolerations"] = [{"key": "skerry.io/pool", "value": "gpu", "effect": "NoSchedule"},
                                       {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod == expected


def test_no_gpu_limit_or_toleration_reaches_a_cpu_profiles_objects():
    objects = [user_pod(server(CPU_PROFILE)), dask_cluster(cluster(CPU_PROFILE))]
    text = json.dumps(objects)
    assert "nvidia.com/gpu" not in text and "tolerations" not in text and "dask-cuda-worker" not in text
    assert gpu_workers(cluster(CPU_PROFILE)) is None


def test_nothing_secret_is_in_the_pod_only_in_its_secret_mounted_read_only():
    spec = server(CPU_PROFILE)
    pod, secret = user_pod(spec), valid(server_secret(spec, FILES))
    text = json.dumps(pod)
    assert TOKEN not in text and KEY not in text and "s3cr3t" not in text
    assert not any(TOKEN in " ".join(c["command"]) for c in pod["spec"]["containers"])
    decoded = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert decoded == {**FILES, "env.JUPYTERHUB_API_TOKEN": TOKEN.encode(), "env.SKERRY_IDENTITY_KEY": KEY.encode()}
    assert secret["metadata"]["name"] == "skerry-alice" and secret["type"] == "Opaque"
    # the secret volume: read-only in every container, and only the files (not the env keys)
    for c in pod["spec"]["containers"]:
        assert {"name": "server", "mountPath": "/etc/skerry/server", "readOnly": True} in c["volumeMounts"]
    [volume] = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert [i["key"] for i in volume["secret"]["items"]] == ["adaptors.json", "jwt-keys.json"]
    with pytest.raises(ValueError, match="holds adaptors.json, jwt-keys.json, not adaptors.json"):
        server_secret(spec, {"adaptors.json": b"{}"})


def test_pods_never_run_as_root():
    with pytest.raises(ValueError, match="a uid and gid above 0"):
        server(CPU_PROFILE, uid=0)
    with pytest.raises(ValueError, match="a uid and gid above 0"):
        cluster(CPU_PROFILE, gid=0)


def test_the_home_claim():
    assert valid(home_claim(server(CPU_PROFILE, storage_class="fast", home_size="20Gi"))) == {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "home-alice", "namespace": "lab",
                     "labels": {"app.kubernetes.io/name": "skerry", "app.kubernetes.io/instance": "skerry",
                                "app.kubernetes.io/component": "user-home", "skerry.io/user": "alice"},
                     # whose files it holds: the workload scheduler runs her jobs as that uid
                     "annotations": {"skerry.io/username": "alice", "skerry.io/uid": "100001",
                                     "skerry.io/gid": "100001"}},
        # her server and her Dask workers mount it at once
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}},
                 "storageClassName": "fast"}}


DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.mark.parametrize("username", ["alice", "Alice", "al_ice", "a.b", "x" * 80, "x" * 80 + "y", "élise", "9lives"])
def test_names_are_dns_labels_of_at_most_63_characters_and_never_shared(username):
    spec = server(CPU_PROFILE, username=username, server_name="gpu-run-" + "n" * 60)
    names = {spec.pod_name, spec.secret_name, spec.claim_name, safe_name(username),
             cluster(CPU_PROFILE, username=username).name}
    for name in names:
        assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
    valid(user_pod(spec))  # the labels too: the user label is a valid label value
    others = {"alice", "Alice", "al_ice", "a.b", "x" * 80, "x" * 80 + "y", "élise", "9lives"} - {username}
    assert safe_name(username) not in {safe_name(o) for o in others}


def test_a_readable_name_stays_as_it_is():
    assert safe_name("skerry", "alice") == "skerry-alice"
    assert server(CPU_PROFILE, server_name="big").pod_name == "skerry-alice-big"
    assert server(CPU_PROFILE, server_name="big").dav_prefix == "/dav/alice/big/"


def test_the_users_dask_cluster_runs_as_the_user_with_tls_and_its_own_certificates():
    spec = cluster(CPU_PROFILE)
    dc = dask_cluster(spec)
    assert dc["apiVersion"] == "kubernetes.dask.org/v1" and dc["kind"] == "DaskCluster"
    assert dc["metadata"]["name"] == "dask-alice"
    for part in ("worker", "scheduler"):
        pod = valid_pod_spec(dc["spec"][part]["spec"])["spec"]
        assert pod["securityContext"]["runAsUser"] == 100001 and pod["automountServiceAccountToken"] is False
        assert pod["volumes"] == [{"name": "tls", "secret": {"secretName": "dask-alice-tls", "defaultMode": 0o440}}]
        [c] = pod["containers"]
        assert c["command"][c["command"].index("--tls-ca-file") + 1] == "/etc/skerry/dask-tls/ca.pem"
        assert {"name": "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "value": "True"} in c["env"]
        assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
        assert c["command"][c["command"].index("--host") + 1] == "$(POD_IP)"  # its own address, not every one
        assert dc["spec"][part]["metadata"]["labels"]["skerry.io/user"] == "alice"
    worker = dc["spec"]["worker"]
    assert worker["replicas"] == 0
    assert worker["spec"]["containers"][0]["command"] == [
        "dask", "worker", "tls://dask-alice-scheduler.lab.svc:8786", "--name", "$(DASK_WORKER_NAME)",
        "--host", "$(POD_IP)", "--nthreads", "2", "--memory-limit", str(2 * 2**30),
        "--tls-ca-file", "/etc/skerry/dask-tls/ca.pem", "--tls-cert", "/etc/skerry/dask-tls/cert.pem",
        "--tls-key", "/etc/skerry/dask-tls/key.pem"]
    assert worker["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"},
                                                            "limits": {"cpu": "2", "memory": "2Gi"}}
    service = dc["spec"]["scheduler"]["service"]
    valid({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dask-alice-scheduler"}, "spec": service})
    assert service["selector"] == {"dask.org/cluster-name": "dask-alice", "dask.org/component": "scheduler"}
    secret = valid(cluster_tls_secret(spec, b"CA", b"CERT", b"KEY"))
    assert secret["metadata"]["name"] == "dask-alice-tls"
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "ca.pem": b"CA", "cert.pem": b"CERT", "key.pem": b"KEY"}


def test_a_jobs_cluster_adds_the_runner_beside_the_scheduler_and_her_home_and_adaptors_to_each_worker():
    plain = dask_cluster(cluster(CPU_PROFILE))
    dc = dask_cluster(cluster(CPU_PROFILE, jobs=True))
    scheduler = valid_pod_spec(dc["spec"]["scheduler"]["spec"])["spec"]
    assert [c["name"] for c in scheduler["containers"]] == ["scheduler", "jobs"]
    runner = scheduler["containers"][1]
    assert runner["command"] == ["python", "-m", "skerry.workload.userjobs", "listen", "$(POD_IP)", "8788",
                                 "tls://$(POD_IP):8786", "/etc/skerry/dask-tls/ca.pem",
                                 "/etc/skerry/dask-tls/cert.pem", "/etc/skerry/dask-tls/key.pem"]
    assert scheduler["securityContext"]["runAsUser"] == 100001
    assert scheduler["volumes"] == plain["spec"]["scheduler"]["spec"]["volumes"]  # no home, no adaptors
    for group in (dc["spec"]["worker"], gpu_workers(cluster(GPU_PROFILE, gpu_workers=1, jobs=True))["spec"]["worker"]):
        pod = valid_pod_spec(group["spec"])["spec"]
        assert pod["volumes"] == [
            {"name": "tls", "secret": {"secretName": "dask-alice-tls", "defaultMode": 0o440}},
            {"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}},
            {"name": "jobs", "secret": {"secretName": "dask-alice-jobs", "defaultMode": 0o440}}]
        [c] = pod["containers"]
        assert {"name": "jobs", "mountPath": "/etc/skerry/jobs", "readOnly": True} in c["volumeMounts"]
        assert {"name": "SKERRY_ADAPTORS", "value": "/etc/skerry/jobs/adaptors.json"} in c["env"]
        assert {"name": "HOME", "value": "/home/jovyan"} in c["env"]
        assert {"name": "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "value": "0"} in c["env"]
        assert {"name": "DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL", "value": "100ms"} in c["env"]  # DASK_CONFIG's
    secret = valid(jobs_secret("alice", "lab", "skerry", b'{"adaptors": []}'))
    assert secret["metadata"]["name"] == "dask-alice-jobs" == cluster(CPU_PROFILE).jobs_secret
    assert base64.b64decode(secret["data"]["adaptors.json"]) == b'{"adaptors": []}'
    # without jobs: the user's own cluster, nothing of hers mounted
    [c] = plain["spec"]["worker"]["spec"]["containers"]
    assert [m["name"] for m in c["volumeMounts"]] == ["tls"]


def test_gpu_workers_are_dask_cuda_workers_with_one_gpu_each_on_gpu_nodes():
    group = gpu_workers(cluster(GPU_PROFILE, gpu_workers=2))
    assert group["kind"] == "DaskWorkerGroup" and group["spec"]["cluster"] == "dask-alice"
    assert group["metadata"]["name"] == "dask-alice-gpu"
    pod = valid_pod_spec(group["spec"]["worker"]["spec"])["spec"]
    [c] = pod["containers"]
    assert c["command"][:2] == ["dask-cuda-worker", "tls://dask-alice-scheduler.lab.svc:8786"]
    assert c["command"][-2:] == ["--resources", "GPU=1"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"skerry.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # the CPU workers of a GPU profile stay off the GPU nodes
    cpu_workers = dask_cluster(cluster(GPU_PROFILE, gpu_workers=2))["spec"]["worker"]["spec"]
    assert "nodeSelector" not in cpu_workers and "tolerations" not in cpu_workers


def test_only_the_users_own_pods_and_the_workload_scheduler_reach_the_users_cluster():
    policy = valid(cluster_policy(cluster(CPU_PROFILE)))
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"skerry.io/user": "alice", "app.kubernetes.io/instance": "skerry",
                                        "app.kubernetes.io/component": "dask"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"skerry.io/user": "alice", "app.kubernetes.io/instance": "skerry"}}},
            {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "skerry",
                                             "app.kubernetes.io/component": "workload"}}}]}]}
    # bob's pods carry bob's label: the selector cannot match them
    bob = user_pod(server(CPU_PROFILE, username="bob"))["metadata"]["labels"]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert not allowed.items() <= bob.items()


def test_the_schemas_refuse_a_misspelled_field():
    """The validation above is not vacuous: the same check refuses what an API server would."""
    pod = user_pod(server(CPU_PROFILE))
    pod["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(ValidationError, match="securityContex"):
        valid(pod)


def test_the_charts_sidecar_sizes_reach_the_webdav_container():
    from skerry.errors import ConfigError
    from skerry.hub.plugins.kube.spawner import _sidecar

    sidecar = _sidecar({"cpuGuarantee": 0.2, "cpuLimit": 2, "memGuarantee": "256Mi", "memLimit": "1Gi"})
    [_, webdav] = user_pod(server(CPU_PROFILE, sidecar=sidecar))["spec"]["containers"]
    assert webdav["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"},
                                   "limits": {"cpu": "2", "memory": "1Gi"}}
    with pytest.raises(ConfigError, match="unknown field.*cpu_limit"):
        _sidecar({"cpu_limit": 2})
