"""The platform on the Kubernetes backend: ``skerry up`` with ``SKERRY_KUBERNETES`` set spawns
users' servers as pods through KubeSpawner, against our own API server and its stand-in
kubelet (tests/kubeapi.py: no Kubernetes API server can run here). The hub, the proxy and
the service are the real ones; the pods' containers are real processes of the pod's uid.
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sqlalchemy import func, select

from helpers import Platform, pids_of, progress_events, wait_for
from kubeapi import dask_operator, kubeconfig, running
from skerry.workload.catalog import Catalog
from skerry.workload.models import File, Job, JobAttempt, Run, Task

HERE = Path(__file__).resolve().parent
IMAGE = "skerry/user:test"
NAMESPACE = "lab"
UID_BASE = 100000  # SkerryKubeSpawner.uid_base's default


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    with running(root, images=[IMAGE], namespaces=[NAMESPACE]) as url:
        with dask_operator(url, tmp_path_factory.mktemp("operator"), NAMESPACE):
            yield url, root


@pytest.fixture(scope="module")
def platform(kube, tmp_path_factory):
    config = kubeconfig(kube[0], tmp_path_factory.mktemp("kubeconfig") / "config", NAMESPACE)
    env = {**os.environ, "KUBECONFIG": str(config), "SKERRY_KUBERNETES": kube[0], "SKERRY_KUBE_NAMESPACE": NAMESPACE,
           "SKERRY_USER_IMAGE": IMAGE, "SKERRY_KUBE_PENDING_TIMEOUT": "12"}
    data = tmp_path_factory.mktemp("kube-platform") / "data"
    data.mkdir()
    (data / "pools.json").write_text(json.dumps({"cpu": {"workers": 2, "threads": 2, "memory": "1GiB"},
                                                 "gpu": None}))
    p = Platform(data, env=env).start()
    yield p
    p.stop()
    # the manager's clusters go with it: resource, certificates, adaptors, policy
    for path in ("/apis/kubernetes.dask.org/v1/namespaces/lab/daskclusters/dask-frank",
                 "/api/v1/namespaces/lab/secrets/dask-frank-tls", "/api/v1/namespaces/lab/secrets/dask-frank-jobs",
                 "/apis/networking.k8s.io/v1/namespaces/lab/networkpolicies/dask-frank"):
        assert get(kube, path) is None, path


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


API = "/services/skerry/api/v1"
FILES = 24


def test_her_runs_jobs_run_on_her_own_dask_cluster_as_her_and_write_each_output_once(kube, platform):
    """The workload scheduler feeds frank's DaskCluster (the real operator's pods, his uid),
    through the runner in his scheduler pod: the platform is never a Dask client of it."""
    platform.create_user("frank")
    token = platform.user_token("frank")
    platform.start_server("frank")  # his home claim names his uid: his jobs run as the owner of his files
    uid = get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/skerry-frank")["spec"]["securityContext"]["runAsUser"]
    home = kube[1] / "volumes" / NAMESPACE / "home-frank"
    content = {f"f{i:02d}.bin": os.urandom(1000 + i) for i in range(FILES)}
    (home / "in").mkdir()
    for name, data in content.items():
        (home / "in" / name).write_bytes(data)
    for path in [home / "in", *(home / "in").iterdir()]:
        os.chown(path, uid, uid)  # his files, as his pod writes them

    def ok(r, status=200):
        assert r.status_code == status, r.text
        return r.json()
    ok(platform.api("POST", API + "/datasets", token=token, json={"name": "frank.in", "location": "skerry://home/in"}),
       201)
    ok(platform.api("POST", API + "/datasets/frank.in/files", token=token, json={"files": [
        {"uri": f"skerry://home/in/{n}", "size": len(d)} for n, d in content.items()]}))
    ok(platform.api("POST", API + "/datasets/frank.in/close", token=token))
    ok(platform.api("POST", API + "/workflows", token=token, json={"name": "sums", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}), 201)
    run = subprocess.run([sys.executable, "-m", "skerry", "run", "sums", "frank.in", "--wait"],
                         env={**os.environ, "SKERRY_URL": platform.url, "SKERRY_TOKEN": token},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    # each output once, in his home claim, written by his uid
    written = sorted(home.rglob("*.md5"))
    assert sorted(p.name for p in written) == sorted(f"{n}.md5" for n in content)
    for path in written:
        assert path.read_text().split()[0] == hashlib.md5(content[path.name[:-4]]).hexdigest()
        assert path.stat().st_uid == uid
    catalog = Catalog.for_data_dir(platform.data_dir)
    with catalog.session() as s:
        uris = s.execute(select(File.uri).join(Task, Task.output_dataset_id == File.dataset_id)
                         .join(Run, Run.id == Task.run_id).where(Run.owner == "frank")).scalars().all()
        workers = set(s.execute(select(JobAttempt.worker).join(Job, Job.id == JobAttempt.job_id)
                                .join(Task, Task.id == Job.task_id).join(Run, Run.id == Task.run_id)
                                .where(Run.owner == "frank")).scalars())
        attempts = s.execute(select(func.count()).select_from(JobAttempt).join(Job, Job.id == JobAttempt.job_id)
                             .join(Task, Task.id == Job.task_id).join(Run, Run.id == Task.run_id)
                             .where(Run.owner == "frank")).scalar_one()
    catalog.dispose()
    assert len(uris) == len(set(uris)) == FILES and attempts == FILES

    # on his cluster's worker pods: the operator's, of his uid
    pods = get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=dask.org/cluster-name=dask-frank")["items"]
    by_component = {}
    for pod in pods:
        by_component.setdefault(pod["metadata"]["labels"]["dask.org/component"], []).append(pod)
        assert pod["spec"]["securityContext"]["runAsUser"] == uid
    worker_ips = {p["status"]["podIP"] for p in by_component["worker"]}
    assert len(by_component["worker"]) == 2 and {w.split("://")[-1].rsplit(":", 1)[0] for w in workers} <= worker_ips
    for pod in pods:
        for pid in pod_processes(pod["metadata"]["name"]):
            assert f"Uid:\t{uid}\t" in Path(f"/proc/{pid}/status").read_text()
    # his jobs saw his storage: his home (where his worker pods mount his claim), from his jobs' Secret
    jobs = get(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/dask-frank-jobs")
    adaptors = json.loads(base64.b64decode(jobs["data"]["adaptors.json"]))["adaptors"]
    assert {"name": "home", "type": "local", "path": "~"} in adaptors
        # the platform is a client of his runner (JSON lines over TLS), never of his Dask scheduler
    manager = pids_of("skerry.hub.plugins.kube.workload")
    assert len(manager) == 1
    peers = tcp_peers(next(iter(manager)))
    scheduler_ip = by_component["scheduler"][0]["status"]["podIP"]
    assert (scheduler_ip, 8788) in peers and (scheduler_ip, 8786) not in peers, peers


def tcp_peers(pid: int) -> set[tuple[str, int]]:
    """The (address, port) each TCP socket of process ``pid`` is connected to (IPv4)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
            address, port = fields[2].split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
            peers.add((ip, int(port, 16)))
    return peers
