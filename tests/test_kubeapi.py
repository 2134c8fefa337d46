"""The stand-in Kubernetes API server and kubelet (tests/kubeapi.py), through the real client
(kubernetes_asyncio, as KubeSpawner uses it): what the backend's tests rely on it to do as a
real cluster would. The stand-in exists because no API server can run here (its docstring).
"""

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from kubeapi import running


HERE = Path(__file__).resolve().parent
IMAGE = "skerry/test:1"


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    with running(root, images=[IMAGE], namespaces=["lab"]) as url:
        yield url, root


def run(coro):
    return asyncio.run(coro)


async def api(url):
    conf = client.Configuration(host=url)
    return client.ApiClient(conf)


def test_objects_get_uids_and_increasing_versions_and_errors_are_statuses(kube):
    async def go():
        async with await api(kube[0]) as c:
            core = client.CoreV1Api(c)
            body = {"metadata": {"name": "s1", "labels": {"team": "a"}}, "data": {"k": "dg=="}}
            first = await core.create_namespaced_secret("lab", body)
            assert first.metadata.uid and int(first.metadata.resource_version) > 0
            with pytest.raises(ApiException) as e:
                await core.create_namespaced_secret("lab", body)
            assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
            with pytest.raises(ApiException) as e:
                await core.read_namespaced_secret("nope", "lab")
            assert e.value.status == 404 and json.loads(e.value.body)["reason"] == "NotFound"
            second = await core.create_namespaced_secret("lab", {"metadata": {"name": "s2", "labels": {"team": "b"}}})
            assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
            names = [s.metadata.name for s in (await core.list_namespaced_secret("lab", label_selector="team=a")).items]
            assert names == ["s1"]
            assert [s.metadata.name for s in (await core.list_namespaced_secret(
                "lab", label_selector="team in (a,b),team!=b")).items] == ["s1"]
            assert len((await core.list_namespaced_secret("lab", label_selector="!team")).items) == 0
            stale = first.to_dict() | {"metadata": {"name": "s1", "resourceVersion": first.metadata.resource_version}}
            await core.patch_namespaced_secret("s1", "lab", {"metadata": {"labels": {"team": "c"}}})
            with pytest.raises(ApiException) as e:
                await core.replace_namespaced_secret("s1", "lab", stale)
            assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"
            await core.delete_namespaced_secret("s1", "lab")
            await core.delete_namespaced_secret("s2", "lab")
    run(go())


def test_a_watch_delivers_added_modified_and_deleted(kube):
    async def go():
        async with await api(kube[0]) as c:
            core = client.CoreV1Api(c)
            listed = await core.list_namespaced_config_map("lab", label_selector="w=1")
            seen = []

            async def follow():
                w = watch.Watch()
                async with w.stream(core.list_namespaced_config_map, namespace="lab", label_selector="w=1",
                                    resource_version=listed.metadata.resource_version, timeout_seconds=10) as stream:
                    async for event in stream:
                        seen.append((event["type"], event["object"].metadata.name))
                        if event["type"] == "DELETED":
                            return
            task = asyncio.ensure_future(follow())
            await asyncio.sleep(0.3)
            await core.create_namespaced_config_map("lab", {"metadata": {"name": "cm", "labels": {"w": "1"}}})
            await core.create_namespaced_config_map("lab", {"metadata": {"name": "other", "labels": {"w": "2"}}})
            await core.patch_namespaced_config_map("cm", "lab", {"data": {"a": "b"}})
            await core.delete_namespaced_config_map("cm", "lab")
            await asyncio.wait_for(task, 10)
            assert seen == [("ADDED", "cm"), ("MODIFIED", "cm"), ("DELETED", "cm")]
    run(go())


POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
SERVE = """
import http.server, json, os, sys
out = os.path.join(os.environ["HOME"], "seen.json")
json.dump({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "token": os.environ["TOKEN"],
           "key": open(os.environ["KEY_FILE"]).read(), "key_mode": oct(os.stat(os.environ["KEY_FILE"]).st_mode & 0o777),
           "cwd": os.getcwd(), "ip": os.environ["POD_IP"]}, open(out, "w"))
http.server.ThreadingHTTPServer(("0.0.0.0", 8888), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def pod(name, image=IMAGE, gpus=0, claim="data"):
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {"metadata": {"name": name, "labels": {"app": "t"}},
            "spec": {"securityContext": {"runAsUser": 100777, "runAsGroup": 100777, "fsGroup": 100777,
                                         "runAsNonRoot": True},
                     "restartPolicy": "OnFailure",
                     "containers": [{"name": "notebook", "image": image, "command": ["python", "-c", SERVE],
                                     "workingDir": "/home/me",
                                     "env": [{"name": "HOME", "value": "/home/me"},
                                             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "pod-secret",
                                                                                              "key": "token"}}},
                                             {"name": "KEY_FILE", "value": "/etc/test/key"}, POD_IP],
                                     "ports": [{"name": "http", "containerPort": 8888}],
                                     "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                                     "resources": {"limits": limits},
                                     "volumeMounts": [{"name": "home", "mountPath": "/home/me"},
                                                      {"name": "secret", "mountPath": "/etc/test", "readOnly": True}]}],
                     "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim}},
                                 {"name": "secret", "secret": {"secretName": "pod-secret", "defaultMode": 0o440}}]}}


async def wait_for(core, name, check, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = await core.read_namespaced_pod(name, "lab")
        if check(p):
            return p
        await asyncio.sleep(0.1)
    log = await core.read_namespaced_pod_log(name, "lab")
    raise AssertionError(f"pod {name}: {p.status}\nits log:\n{log}")


def test_a_pod_runs_as_its_user_with_its_secret_and_claim_and_is_gone_once_deleted(kube):
    url, root = kube

    async def go():
        async with await api(url) as c:
            core = client.CoreV1Api(c)
            await core.create_namespaced_persistent_volume_claim("lab", {
                "metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                       "resources": {"requests": {"storage": "1Gi"}}}})
            await core.create_namespaced_pod("lab", pod("p1"))  # its Secret comes after it: it waits
            await asyncio.sleep(0.5)
            waiting = await core.list_namespaced_event("lab", field_selector="involvedObject.name=p1")
            said = [e.message for e in waiting.items if e.reason == "FailedMount"]
            assert any('secret "pod-secret" not found' in m for m in said), said
            await core.create_namespaced_secret("lab", {"metadata": {"name": "pod-secret"},
                                                        "stringData": {"token": "t0k", "key": "k3y"}})
            up = await wait_for(core, "p1", lambda p: p.status.phase == "Running"
                                and all(s.ready for s in p.status.container_statuses))
            ip = up.status.pod_ip
            assert ip.startswith("127.0.") and ip != "127.0.0.1"
            assert urllib.request.urlopen(f"http://{ip}:8888/seen.json", timeout=5).status == 200
            seen = json.loads((root / "volumes" / "lab" / "data" / "seen.json").read_text())
            assert seen["uid"] == 100777 and seen["gid"] == 100777 and seen["groups"] == [100777]
            assert seen["token"] == "t0k" and seen["key"] == "k3y" and seen["key_mode"] == "0o440"
            assert seen["cwd"] == str(root / "volumes" / "lab" / "data") and seen["ip"] == ip
            await core.delete_namespaced_pod("p1", "lab")
            gone = time.monotonic() + 15
            while time.monotonic() < gone:
                try:
                    await core.read_namespaced_pod("p1", "lab")
                except ApiException as e:
                    assert e.status == 404
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the pod was not deleted")
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{ip}:8888/", timeout=2)
            assert (root / "volumes" / "lab" / "data" / "seen.json").exists()  # the claim outlives the pod
    run(go())


def test_a_pod_no_node_can_take_stays_pending_and_says_why(kube):
    async def go():
        async with await api(kube[0]) as c:
            core = client.CoreV1Api(c)
            await core.create_namespaced_pod("lab", pod("greedy", gpus=1))
            await core.create_namespaced_pod("lab", pod("unknown", image="skerry/nope:0"))
            await asyncio.sleep(0.5)
            greedy = await wait_for(core, "greedy", lambda p: p.status.conditions)
            assert greedy.status.phase == "Pending"
            assert "Insufficient nvidia.com/gpu" in greedy.status.conditions[0].message
            unknown = await wait_for(core, "unknown", lambda p: p.status.container_statuses)
            assert unknown.status.container_statuses[0].state.waiting.reason == "ErrImagePull"
            events = await core.list_namespaced_event("lab", field_selector="involvedObject.name=unknown")
            assert any(e.reason == "Failed" and "skerry/nope:0" in e.message for e in events.items)
            for name in ("greedy", "unknown"):
                await core.delete_namespaced_pod(name, "lab")
    run(go())


def test_deleting_an_owner_deletes_its_dependents(kube):
    async def go():
        async with await api(kube[0]) as c:
            core = client.CoreV1Api(c)
            owner = await core.create_namespaced_config_map("lab", {"metadata": {"name": "owner"}})
            ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
            await core.create_namespaced_secret("lab", {"metadata": {"name": "dependent", "ownerReferences": [ref]}})
            await core.delete_namespaced_config_map("owner", "lab")
            with pytest.raises(ApiException) as e:
                await core.read_namespaced_secret("dependent", "lab")
            assert e.value.status == 404
    run(go())


def test_two_pods_listen_on_one_port_each_at_its_own_address(kube):
    """A pod's network is its own: two pods both listen on 8888, at their own IPs."""
    async def go():
        async with await api(kube[0]) as c:
            core = client.CoreV1Api(c)
            for name in ("twin-a", "twin-b"):
                await core.create_namespaced_persistent_volume_claim("lab", {
                    "metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                         "resources": {"requests": {"storage": "1Gi"}}}})
                await core.create_namespaced_pod("lab", pod(name, claim=name))
            ips = []
            for name in ("twin-a", "twin-b"):
                p = await wait_for(core, name, lambda p: p.status.container_statuses
                                   and all(s.ready for s in p.status.container_statuses))
                ips.append(p.status.pod_ip)
            assert ips[0] != ips[1]
            for ip in ips:
                assert urllib.request.urlopen(f"http://{ip}:8888/seen.json", timeout=5).status == 200
            for name in ("twin-a", "twin-b"):
                await core.delete_namespaced_pod(name, "lab")
    run(go())
