"""skerry.workload.clusters on real OS accounts and real Dask processes: a user's cluster runs
as that user, behind TLS credentials only that user (and the platform) can read.

Accounts use a test-only template (``skc<random>-{username}``) and are removed at the end,
with every process of theirs, even when a test fails.
"""

import json
import os
import pwd
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from helpers import open_for_accounts, remove_accounts, wait_for
from skerry.accounts import Account, AccountPolicy, clean_environment, ensure_account, switch_kwargs
from skerry.datadir import DataDir
from skerry.errors import ConfigError
from skerry.workload.clusters import ClusterSpec, UserCluster, UserClusters, _parse_report, security
from skerry.workload.pools import DASK_CONFIG, PoolSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="user clusters run as OS accounts: root starts them")

PYTHON = os.path.realpath(sys.executable)
TIMES: dict[str, float] = {}  # start and stop times, printed at the end (pytest -s) for the README


@pytest.fixture(scope="module")
def policy():
    p = AccountPolicy(template=f"skc{secrets.token_hex(3)}-{{username}}")
    yield p
    remove_accounts(p.template)  # kills their processes first
    prefix = p.template.split("{")[0]
    assert not [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(prefix)], "accounts left behind"
    print("\nuser cluster times (s):", {k: round(v, 2) for k, v in TIMES.items()})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = DataDir(open_for_accounts(tmp_path_factory.mktemp("clusters") / "data")).ensure()
    return data


def account(data, policy, name) -> Account:
    return ensure_account(name, data.user_home(name), policy)


def start(data, policy, name, pool="cpu", **spec) -> UserCluster:
    acc = account(data, policy, name)
    cluster = UserCluster.start(acc, pool, ClusterSpec.from_pool(pool, spec or {"workers": 1}),
                                data.handover(name) / "dask" / pool, watch_every=0.1)
    TIMES[f"start {name} {pool} {cluster.spec.workers}w"] = cluster.started_in
    return cluster


@pytest.fixture(scope="module")
def alice(data, policy):
    cluster = start(data, policy, "alice")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def bob(data, policy):
    cluster = start(data, policy, "bob")
    yield cluster
    cluster.stop()


def platform_client(cluster: UserCluster):
    """A client with the platform's credentials, in this (root) test process: the platform
    itself never does this (clusters.py: a user's cluster may send pickles); tests run only
    their own tasks on it."""
    from distributed import Client

    return Client(cluster.address, security=security(cluster.platform_files()), timeout=10, set_as_default=False)


@pytest.fixture(scope="module")
def platform_a(alice):
    client = platform_client(alice)
    yield client
    client.close()


def status_of(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.split() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def processes_of(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = status_of(int(entry))
        except OSError:
            continue
        if int(st["Uid"][0]) == uid and st["State"][0] != "Z":
            found.append(int(entry))
    return found


def as_account(acc: Account, code: str, *args: str, **popen) -> subprocess.Popen:
    """This Python running ``code`` as the account, in its clean environment."""
    return subprocess.Popen([PYTHON, "-c", code, *args], cwd="/", env=clean_environment(acc), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **switch_kwargs(acc), **popen)


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_a_task_runs_as_the_account_in_a_process_of_the_account(alice, platform_a, bob):
    uid = platform_a.submit(os.getuid, pure=False).result(timeout=30)
    assert uid == alice.account.uid and uid not in (0, os.geteuid(), bob.account.uid)
    for pid in worker_pids(platform_a) | alice.pids():  # the workers, scheduler, worker CLI, watcher
        st = status_of(pid)
        assert st["Uid"] == [str(alice.account.uid)] * 4 and st["Gid"] == [str(alice.account.gid)] * 4
        assert st["Groups"] == []  # no supplementary group
    assert alice.address.startswith("tls://127.0.0.1:")


def test_a_users_cluster_runs_with_the_platforms_dask_settings(alice, platform_a):
    """Its scheduler and workers read ``pools.DASK_CONFIG`` as the platform's own pools do
    (no retries of Dask's own, no held-back tasks, the profile sampled every 100 ms)."""
    def settings(keys):
        import dask
        return {key: str(dask.config.get(key)) for key in keys}

    expected = {key: str(value) for key, value in DASK_CONFIG.items()}
    assert platform_a.run_on_scheduler(settings, list(expected)) == expected
    assert list(platform_a.run(settings, list(expected)).values()) == [expected] * len(worker_pids(platform_a))


def test_two_users_never_share_a_worker_process(alice, bob, platform_a):
    with platform_client(bob) as platform_b:
        assert platform_b.submit(os.getuid, pure=False).result(timeout=30) == bob.account.uid
        a, b = worker_pids(platform_a), worker_pids(platform_b)
    assert a and b and not a & b
    assert not alice.pids() & bob.pids()
    assert {int(status_of(p)["Uid"][0]) for p in b} == {bob.account.uid}


def test_nobody_connects_without_the_clusters_credentials(alice, bob):
    from distributed import Client
    from distributed.security import Security

    attempts = {
        "plain tcp": (alice.address.replace("tls://", "tcp://"), None),
        "self-made TLS": (alice.address, Security.temporary()),
        "another cluster's credentials": (alice.address, security(bob.platform_files())),
    }
    outcomes = {}

    def attempt(what, address, security):
        try:
            Client(address, security=security, timeout=2, set_as_default=False).close()
            outcomes[what] = "connected"
        except (OSError, TimeoutError) as e:
            outcomes[what] = f"refused: {type(e).__name__}"

    threads = [threading.Thread(target=attempt, args=(w, *a)) for w, a in attempts.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(outcomes) == set(attempts) and all(v.startswith("refused") for v in outcomes.values()), outcomes
    assert tls_without_certificate(alice) == "refused"  # the cluster's own CA, no certificate
    time.sleep(0.3)
    assert alice.activity()["clients"] == 0  # none of them got in


def tls_without_certificate(cluster: UserCluster) -> str:
    """A raw TLS connection that trusts the cluster's CA but shows no certificate of its own."""
    host, port = cluster.address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(cluster.paths["ca"]))
    ctx.check_hostname = False
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\0" * 8)
                return "refused" if tls.recv(1) == b"" else "answered"
    except (ssl.SSLError, ConnectionError):
        return "refused"


CONNECT = """
import json, os, sys
result = {}
files = json.loads(sys.argv[1])
for name, path in files.items():
    try:
        open(path, "rb").close()
        result[name] = "read"
    except OSError as e:
        result[name] = os.strerror(e.errno)
try:
    from distributed import Client
    from distributed.security import Security
    security = Security(**{k: files[k] for k in ("tls_ca_file", "tls_client_cert", "tls_client_key")},
                        require_encryption=True)
    client = Client(sys.argv[2], security=security, timeout=5, set_as_default=False)
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # connected: the test looks at the cluster meanwhile
    result["uid"] = client.submit(os.getuid, pure=False).result(timeout=30)
    client.close()
except Exception as e:
    result["connect"] = type(e).__name__ + ": " + str(e)[:200]
print(json.dumps(result), flush=True)
"""


def credential_files(cluster: UserCluster) -> dict[str, str]:
    return {**cluster.user_files(), "cluster key": str(cluster.paths["cluster-key"]),
            "platform key": str(cluster.paths["platform-key"]),
            "scheduler file": str(cluster.folder / "work" / "scheduler.json")}


def test_another_account_cannot_read_the_credentials_nor_connect(alice, bob):
    proc = as_account(bob.account, CONNECT, json.dumps(credential_files(alice)), alice.address)
    out, err = proc.communicate(timeout=60)
    seen = json.loads(out.splitlines()[-1])
    files = {k: v for k, v in seen.items() if k != "connect"}
    assert set(files.values()) == {os.strerror(13)}, seen  # EACCES: Permission denied, every one
    assert "Permission denied" in seen["connect"], seen


def test_the_account_connects_with_its_own_credentials_and_counts_as_activity(alice, platform_a):
    files = credential_files(alice)
    proc = as_account(alice.account, CONNECT, json.dumps(files), alice.address, stdin=subprocess.PIPE)
    try:
        first = json.loads(proc.stdout.readline() or "{}")
        assert first and set(first.values()) == {"read"}, (first, proc.stderr.read() if proc.poll() else "")
        assert alice.wait_for(lambda a: a["clients"] == 1, 10)  # the user's client: not the platform's
        assert alice.idle_for() < 0.5
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert json.loads(out.splitlines()[-1])["uid"] == alice.account.uid, err
    assert alice.wait_for(lambda a: a["clients"] == 0 and a["tasks"] == 0, 10)
    held = platform_a.submit(os.getpid, pure=False)
    held.result(timeout=30)
    assert alice.wait_for(lambda a: a["tasks"] == 1, 10) and alice.idle_for() < 0.5  # a result held is work
    del held
    assert alice.wait_for(lambda a: a["tasks"] == 0, 10)
    time.sleep(0.5)
    assert alice.idle_for() >= 0.5  # idle: nothing but the platform's clients, no task
    clusters = UserClusters()
    clusters.clusters[("alice", "cpu")] = alice
    assert clusters.stop_idle(after=3600) == [] and alice.running  # not idle that long


ORPHAN = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(600)  # a daemon a task left behind, no longer its worker's child
    os._exit(0)
"""


def test_stop_leaves_no_process_even_one_a_task_orphaned(data, policy):
    cluster = start(data, policy, "carol", "gpu", workers=2)
    try:
        with platform_client(cluster) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            assert [w["resources"] for w in workers] == [{"GPU": 1}] * 2  # a gpu pool's workers
            # subprocess.run, not a function of this module: the account's Python cannot import tests/
            assert client.submit(subprocess.run, [PYTHON, "-c", ORPHAN], pure=False).result(timeout=30).returncode == 0
        uid = cluster.account.uid
        before = processes_of(uid)
        assert len(before) >= 6  # scheduler, worker CLI, 2 workers, watcher, the orphan (and Python's resource tracker)
        orphans = [p for p in before if b"time.sleep(600)" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(orphans) == 1 and int(status_of(orphans[0])["PPid"][0]) == cluster.processes[1].pid  # adopted
        began = time.monotonic()
        cluster.stop()
        TIMES["stop carol gpu 2w"] = time.monotonic() - began
        assert processes_of(uid) == []
    finally:
        if cluster.running:
            cluster.stop()


ALLOCATE = "big = b'x' * %d"


def test_a_cluster_with_limits_holds_every_process_of_it_to_them(data, policy):
    from skerry.limits import Limits, members, offered

    acc = account(data, policy, "erin")
    limits = Limits(cpu=1.0, memory=900 * 2**20)
    cluster = UserCluster.start(acc, "cpu", ClusterSpec(workers=2, threads=1), data.handover("erin") / "dask" / "cpu",
                                watch_every=0.1, limits=limits)
    try:
        described = cluster.enforcement.describe()
        assert described["mechanism"] == offered() and (described["cpu"], described["memory"]) == (1.0, 900 * 2**20)
        with platform_client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
            # the OOM killer's first choice is a worker, never the scheduler
            score = lambda pid: int(open(f"/proc/{pid}/oom_score_adj").read())  # noqa: E731
            assert {score(pid) for pid in worker_pids} == {500} and score(cluster.processes[0].pid) == 0
            if described["mechanism"] == "cgroup1":  # these machines: every process of it is in its cgroups
                memory = cluster.enforcement.cgroups["memory"]
                assert int((memory / "memory.limit_in_bytes").read_text()) == 900 * 2**20
                cpu = cluster.enforcement.cgroups["cpu"]
                assert int((cpu / "cpu.cfs_quota_us").read_text()) == int((cpu / "cpu.cfs_period_us").read_text())
                inside = members(memory) & members(cpu)
                assert cluster.pids() <= inside and worker_pids <= inside, (cluster.pids(), inside)
            # a task allocating past the cluster's memory is stopped (its worker killed, or MemoryError)
            big = client.submit(exec, ALLOCATE % (limits.memory + 2**30), pure=False)
            with pytest.raises(Exception) as failed:
                big.result(timeout=120)
            assert type(failed.value).__name__ in ("KilledWorker", "MemoryError", "CommClosedError"), failed.value
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, what="the nanny to restart its worker")
            assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3  # the cluster runs on
        cgroups = list(cluster.enforcement.cgroups.values())
    finally:
        cluster.stop()
    assert not [c for c in cgroups if c.exists()]  # stop removes them
    assert processes_of(acc.uid) == []


PLATFORM = """
import sys, time
from pathlib import Path
from skerry.accounts import AccountPolicy, find_account
from skerry.workload.clusters import ClusterSpec, UserCluster, UserClusters, _parse_report, security
account = find_account("dave", AccountPolicy(template=sys.argv[1]))
cluster = UserCluster.start(account, "cpu", ClusterSpec(workers=1), Path(sys.argv[2]))
print(len(cluster.pids()), flush=True)
time.sleep(600)
"""


def test_the_cluster_dies_with_the_platform(data, policy):
    acc = account(data, policy, "dave")
    platform = subprocess.Popen([PYTHON, "-c", PLATFORM, policy.template, str(data.handover("dave") / "dask" / "cpu")],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert int(platform.stdout.readline() or 0) >= 3
        assert processes_of(acc.uid)
    finally:
        platform.send_signal(signal.SIGKILL)
        platform.wait()
    wait_for(lambda: not processes_of(acc.uid), timeout=30, interval=0.2,
             what="the cluster to die with the platform that started it")


def test_bad_input_is_refused_with_a_sentence(data, policy, tmp_path):
    with pytest.raises(ConfigError, match=r"pool 'cpu': unknown user cluster field\(s\) 'wokers' \(fields: workers"):
        ClusterSpec.from_pool("cpu", {"wokers": 2})
    with pytest.raises(ConfigError, match="workers must be a whole number from 1 to 1024, not 0"):
        ClusterSpec.from_pool("cpu", {"workers": 0})
    with pytest.raises(ConfigError, match="threads must be a whole number"):
        ClusterSpec(threads=True)
    with pytest.raises(ConfigError, match="memory per worker must be 'auto' or a size such as '4GiB', not 'lots'"):
        ClusterSpec(memory="lots")
    with pytest.raises(ConfigError, match="resources must map names to positive amounts"):
        ClusterSpec.from_pool("gpu", {"resources": {"GPU": -1}})
    with pytest.raises(ConfigError, match="devices must be GPU numbers"):
        ClusterSpec.from_pool("gpu", {"devices": ["all"]})
    refusal = "is a Dask cluster at tcp://gpu:8786: user clusters are started on this machine"
    with pytest.raises(ConfigError, match=refusal):
        ClusterSpec.from_pool("gpu", PoolSpec(address="tcp://gpu:8786"))
    with pytest.raises(ConfigError, match="must be an object of workers"):
        ClusterSpec.from_pool("cpu", 3)
    assert _parse_report(b'{"workers": 1, "tasks": 0, "clients": 0}\n') == {"workers": 1, "tasks": 0, "clients": 0}
    for lie in (b"{}", b'{"workers": 1, "tasks": -1, "clients": 0}',
                b'{"workers": 1, "tasks": 0, "clients": 0, "x": 1}', b'{"workers": true, "tasks": 0, "clients": 0}',
                b"\x80"):
        assert _parse_report(lie) is None  # the watcher is the account's: only numbers are taken
    assert ClusterSpec.from_pool("gpu", PoolSpec(workers=2)) == ClusterSpec(workers=2, resources=(("GPU", 1),))
    acc = account(data, policy, "erin")
    with pytest.raises(ConfigError, match="must be an absolute path, not dask/cpu"):
        UserCluster.start(acc, "cpu", ClusterSpec(), "dask/cpu")
    root = Account("root", "root", 0, 0, tmp_path, "/bin/sh")
    with pytest.raises(ConfigError, match="never runs as the platform's own account"):
        UserCluster.start(root, "cpu", ClusterSpec(), tmp_path / "dask")
    with pytest.raises(ConfigError, match="needs a ClusterSpec"):
        UserCluster.start(acc, "cpu", {"workers": 1}, tmp_path / "dask")
    with pytest.raises(ConfigError, match="pool name '../x' must be a plain name"):
        UserCluster.start(acc, "../x", ClusterSpec(), tmp_path / "dask")
    assert not (tmp_path / "dask").exists()  # nothing was made before the refusal
