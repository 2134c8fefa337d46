"""The platform on the Kubernetes backend: ``skerry up`` with ``SKERRY_KUBERNETES`` set spawns
users' servers as pods through KubeSpawner, against our own API server and its stand-in
kubelet (tests/kubeapi.py: no Kubernetes API server can run here). The hub, the proxy and
the service are the real ones; the pods' containers are real processes of the pod's uid.
"""

import base64
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import Platform, progress_events, wait_for
from kubeapi import kubeconfig, running

HERE = Path(__file__).resolve().parent
IMAGE = "skerry/user:test"
NAMESPACE = "lab"
UID_BASE = 100000  # SkerryKubeSpawner.uid_base's default


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    with running(root, images=[IMAGE], namespaces=[NAMESPACE]) as url:
        yield url, root


@pytest.fixture(scope="module")
def platform(kube, tmp_path_factory):
    config = kubeconfig(kube[0], tmp_path_factory.mktemp("kubeconfig") / "config", NAMESPACE)
    env = {**os.environ, "KUBECONFIG": str(config), "SKERRY_KUBERNETES": kube[0], "SKERRY_KUBE_NAMESPACE": NAMESPACE,
           "SKERRY_USER_IMAGE": IMAGE, "SKERRY_KUBE_PENDING_TIMEOUT": "12"}
    p = Platform(tmp_path_factory.mktemp("kube-platform") / "data", env=env).start()
    yield p
    p.stop()


def get(kube, path):
    """An object of our API server, as any client sees it (None: 404)."""
    try:
        with urllib.request.urlopen(kube[0] + path, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def test_alice_spawns_a_pod_her_jupyter_and_dav_work_through_the_hub_and_stopping_removes_it(kube, platform):
    platform.create_user("alice")
    token = platform.user_token("alice")
    hub_id = platform.api("GET", "/hub/api/users/alice").json()
    platform.start_server("alice")
    pod = get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/skerry-alice")
    uid = pod["spec"]["securityContext"]["runAsUser"]
    assert uid > UID_BASE and pod["status"]["phase"] == "Running", hub_id
    assert [c["name"] for c in pod["spec"]["containers"]] == ["notebook", "webdav"]
    secret = get(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/skerry-alice")
    assert secret is not None and "adaptors.json" in secret["data"]
    assert token not in json.dumps(pod)

    auth = {"Authorization": f"token {token}"}
    r = httpx.get(f"{platform.url}/user/alice/api/status", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.put(f"{platform.url}/dav/alice/home/hello.txt", content=b"from the desktop", headers=auth, timeout=30)
    assert r.status_code in (201, 204), r.text
    r = httpx.get(f"{platform.url}/dav/alice/home/hello.txt", headers=auth, timeout=30)
    assert r.status_code == 200 and r.content == b"from the desktop"
    # in her home claim, written by her pod's uid
    written = kube[1] / "volumes" / NAMESPACE / "home-alice" / "hello.txt"
    assert written.read_bytes() == b"from the desktop" and written.stat().st_uid == uid

    platform.stop_server("alice")
    wait_for(lambda: get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/skerry-alice") is None, 30, what="the pod gone")
    assert get(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/skerry-alice") is None
    assert get(kube, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/home-alice") is not None
    r = httpx.get(f"{platform.url}/dav/alice/home/hello.txt", headers=auth, timeout=30)
    assert r.status_code == 503, r.text  # her route went with the pod: the service says she has no server


CANNOT_RUN = [  # (user, profile, what the spawn page says)
    ("bob", {"slug": "gpu", "resources": {"cpu_limit": 1, "mem_limit": "1Gi", "gpus": 1}},
     "FailedScheduling: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu"),
    ("erin", {"slug": "torch", "resources": {"cpu_limit": 1, "mem_limit": "1Gi", "gpus": 0}, "image": "skerry/torch:9"},
     'Failed: Failed to pull image "skerry/torch:9"'),
]


def test_a_pod_that_cannot_run_says_why_on_the_spawn_page(kube, platform):
    for user, profile, _ in CANNOT_RUN:
        profile = {**profile, "display_name": profile["slug"], "dask": {"max_workers": 1, "worker_memory": "1Gi"},
                   "access": {"users": [user]}}
        r = platform.api("POST", "/services/skerry/api/v1/profiles", json=profile)
        assert r.status_code == 201, r.text
        platform.create_user(user)
    # both start at once; the hub answers 202 after 10 s of a start, and a pod may wait 12 s
    # (SKERRY_KUBE_PENDING_TIMEOUT) before its start fails
    with ThreadPoolExecutor(len(CANNOT_RUN)) as pool:
        answers = list(pool.map(lambda case: platform.api("POST", f"/hub/api/users/{case[0]}/server",
                                                           json={"profile": case[1]["slug"]}), CANNOT_RUN))
        assert [r.status_code for r in answers] == [202] * len(CANNOT_RUN), [r.text for r in answers]
        progress = list(pool.map(lambda case: progress_events(platform, case[0], timeout=120), CANNOT_RUN))
    for (user, _, said), events in zip(CANNOT_RUN, progress, strict=True):
        messages = [e.get("message", "") for e in events]
        assert any(said in m for m in messages), messages  # while it waits, on the spawn page
        assert events[-1].get("failed") and said in events[-1]["message"], events[-1]  # and why it failed
        wait_for(lambda u=user: get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/skerry-{u}") is None, 30,
                 what=f"{user}'s pod gone")
        assert get(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/skerry-{user}") is None


def pod_processes(name: str) -> list[int]:
    """The processes of pod ``name`` (the stand-in kubelet names each container's HOSTNAME so)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HOSTNAME={name}".encode() in environ:
            found.append(int(pid))
    return found


def test_each_users_pod_runs_as_their_own_uid_holds_no_platform_secret_and_cannot_read_anothers_home(
        kube, platform):
    profile = {"slug": "cpu", "display_name": "CPU", "resources": {"cpu_limit": 1, "mem_limit": "1Gi", "gpus": 0},
               "dask": {"max_workers": 1, "worker_memory": "1Gi"}, "access": {"everyone": True}}
    r = platform.api("POST", "/services/skerry/api/v1/profiles", json=profile)
    assert r.status_code in (201, 409), r.text
    uids = {}
    for name in ("carol", "dave"):
        platform.create_user(name)
        r = platform.api("POST", f"/hub/api/users/{name}/server", json={"profile": "cpu"})
        assert r.status_code in (201, 202), r.text
        wait_for(lambda n=name: (platform.server(n) or {}).get("ready"), 60, what=f"{name}'s server")
        uids[name] = get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/skerry-{name}")["spec"]["securityContext"][
            "runAsUser"]
    assert len(set(uids.values())) == 2 and min(uids.values()) > UID_BASE
    platform_secrets = [p.read_text().strip() for p in (platform.data_dir / "secrets").iterdir() if p.is_file()]
    assert len(platform_secrets) >= 3  # the admin's token and password, the proxy's token, the cookie secret
    for name, uid in uids.items():
        procs = pod_processes(f"skerry-{name}")
        assert len(procs) >= 2, name  # Jupyter and the WebDAV sidecar (granian forks a worker)
        for pid in procs:
            status = Path(f"/proc/{pid}/status").read_text()
            assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, (name, status)
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert not [s for s in platform_secrets if s.encode() in environ], name
        secret = get(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/skerry-{name}")
        held = b"".join(base64.b64decode(v) for v in secret["data"].values())
        assert not [s for s in platform_secrets if s.encode() in held], name
    # carol's uid (her kernel's, her terminal's) cannot read dave's home claim, nor list it
    dave_home = kube[1] / "volumes" / NAMESPACE / "home-dave"
    (dave_home / "private.txt").write_text("dave's")
    probe = subprocess.run([sys.executable, "-c", f"import os; print(os.listdir({str(dave_home)!r}))"],
                           user=uids["carol"], group=uids["carol"], extra_groups=[], capture_output=True, text=True)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stdout
    for name in uids:
        platform.stop_server(name)
