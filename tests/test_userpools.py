"""skerry.workload.userpools and userjobs on real OS accounts and real Dask processes: each
owner's jobs run on a cluster of their account, through a runner of that account whose
reports the platform checks; idle clusters stop; a broken or forged runner loses only its
own attempts.

Accounts use a test-only template (``sku<random>-{username}``), removed at the end with
every process of theirs. The user's own code cannot write to her runner's stdout (shown);
the forged reports are written there by this test (through ``/proc/<pid>/fd/1``), as a
runner taken over by her code would send them.
"""

import json
import os
import pwd
import re
import secrets
import stat
import subprocess
import sys
import time

import pytest

from helpers import free_port, open_for_accounts, remove_accounts, wait_for
from skerry.datadir import DataDir
from skerry.accounts import AccountPolicy
from skerry.process import processes_of
from skerry.workload.builtins import BUILTINS
from skerry.workload.pools import PoolSpec
from skerry.workload.runner import Finished, JobSpec, Started
from skerry.workload.userpools import UserPools, connect_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="user clusters run as OS accounts: root starts them")

SLEEP = BUILTINS["sleep"].model_dump(mode="json")


@pytest.fixture(scope="module")
def policy():
    p = AccountPolicy(template=f"sku{secrets.token_hex(3)}-{{username}}")
    yield p
    remove_accounts(p.template)
    prefix = p.template.split("{")[0]
    assert not [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(prefix)], "accounts left behind"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return DataDir(open_for_accounts(tmp_path_factory.mktemp("userpools") / "data")).ensure()


@pytest.fixture
def pools(data, policy):
    p = UserPools(data.path, {"cpu": PoolSpec(workers=1, threads=2)}, policy, gpus=0, idle_after=5.0,
                  watch_every=0.2)
    yield p
    p.close()


def spec(job: int, owner: str | None, seconds: float = 0.0, output: str = "memory://out") -> JobSpec:
    return JobSpec(job, 1, SLEEP, {}, output, {"seconds": seconds}, owner=owner)


def wait_events(pools, want, timeout=60, seen: list | None = None) -> list:
    """Events until ``want(events)`` holds; ``seen``: the events an earlier wait already
    took (a job may end while the test waits for another one to start), kept and extended."""
    got, deadline = ([] if seen is None else seen), time.monotonic() + timeout
    while not want(got):
        assert time.monotonic() < deadline, got
        got += pools.events(timeout=0.2)
    return got


def ended(events) -> dict[int, Finished]:
    return {e.job: e for e in events if isinstance(e, Finished)}


def runner_of(policy, user: str) -> int:
    """The pid of ``user``'s jobs runner (``python -m skerry.workload.clusters jobs ...``)."""
    uid = pwd.getpwnam(policy.template.format(username=user)).pw_uid
    for pid in processes_of(uid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"skerry.workload.clusters" in argv and b"jobs" in argv:
            return pid
    raise AssertionError(f"{user} has no jobs runner")


def as_user(policy, user: str, code: str) -> subprocess.CompletedProcess:
    entry = pwd.getpwnam(policy.template.format(username=user))
    return subprocess.run([os.path.realpath(sys.executable), "-c", code], capture_output=True, text=True,
                          timeout=60, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], cwd="/")


def test_each_owners_jobs_run_on_their_own_cluster_which_stops_when_idle(pools, data, policy):
    assert pools.slots("cpu") == 2
    pools.submit_batches("cpu", [[spec(1, "alice"), spec(2, "bob")], [spec(3, "alice")]])
    pools.submit("cpu", spec(4, None))
    held, seen = {}, {}

    def all_ended(got):  # read while each cluster runs (idle 5 s, it stops): alice's limits, the connect files
        cluster = pools.clusters.clusters.get(("alice", "cpu"))
        if cluster is not None and not held:
            held.update(cluster.enforcement.describe())
        for owner in ("alice", "bob"):
            path = connect_file(data.handover(owner) / "dask" / "cpu")
            if owner not in seen and (owner, "cpu") in pools.clusters.clusters and path.exists():
                account = pwd.getpwnam(policy.template.format(username=owner))
                st = path.stat()  # the platform's file, which the account's group reads
                seen[owner] = (json.loads(path.read_text())["address"],
                               (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid),
                               (0o640, os.geteuid(), account.pw_gid), bool(processes_of(account.pw_uid)))
        return len(ended(got)) == 4

    events = wait_events(pools, all_ended)
    done = ended(events)
    assert done[4].lost and "no owner" in done[4].error
    workers = {}
    for job, owner in ((1, "alice"), (2, "bob"), (3, "alice")):
        assert done[job].result is not None and done[job].result.ok, done[job]
        workers.setdefault(owner, set()).add(done[job].worker)
    assert not workers["alice"] & workers["bob"]  # two clusters: no worker in common
    assert {e.job for e in events if isinstance(e, Started)} == {1, 2, 3}
    assert pools.in_flight() == 0
    # each cluster is held to its pool's shape: 1 worker of 2 threads, 2 cores (memory "auto": no limit)
    from skerry.limits import offered

    assert (held["mechanism"], held["cpu"], held["memory"]) == (offered(), 2.0, None)
    # each cluster's connect file named it while it ran; the clusters were the accounts' processes
    assert sorted(seen) == ["alice", "bob"], seen
    for owner, (address, mode_owner_group, wanted, running) in seen.items():
        assert address.startswith("tls://") and mode_owner_group == wanted and running, (owner, seen[owner])
    # idle for 5 s (no job of the platform's, no task, no client of theirs): stopped, nothing left
    wait_for(lambda: (pools.events(timeout=0.2), not pools.clusters.clusters)[1], 60, what="idle clusters to stop")
    for owner in ("alice", "bob"):
        gone = connect_file(data.handover(owner) / "dask" / "cpu")  # removed as the cluster stops
        wait_for(lambda gone=gone: not gone.exists(), 30, what=f"{owner}'s connect file to go")
        uid = pwd.getpwnam(policy.template.format(username=owner)).pw_uid
        wait_for(lambda uid=uid: not processes_of(uid), 30,
                 what=f"{owner}'s processes to end")
    # the next job starts a new cluster
    pools.submit("cpu", spec(5, "alice"))
    assert ended(wait_events(pools, lambda got: 5 in ended(got)))[5].result.ok


def test_a_killed_runner_loses_its_attempts_only_and_the_next_job_gets_a_new_one(pools, policy):
    pools.submit("cpu", spec(10, "alice"))
    pools.submit("cpu", spec(20, "bob"))
    wait_events(pools, lambda got: {10, 20} <= set(ended(got)))
    pools.submit("cpu", spec(11, "alice", seconds=30))
    pools.submit("cpu", spec(21, "bob", seconds=1))
    seen = wait_events(pools, lambda got: any(isinstance(e, Started) and e.job == 11 for e in got))
    # alice's own code can kill her runner (it is her process): her attempt is lost, bob's is not
    killed = as_user(policy, "alice", f"import os, signal; os.kill({runner_of(policy, 'alice')}, signal.SIGKILL)")
    assert killed.returncode == 0, killed.stderr
    done = ended(wait_events(pools, lambda got: {11, 21} <= set(ended(got)), seen=seen))  # 21 may be over
    assert done[11].lost and "the runner of alice's cpu jobs stopped: it ended" in done[11].error
    assert done[21].result.ok and not done[21].lost
    pools.submit("cpu", spec(12, "alice"))
    twelve = ended(wait_events(pools, lambda got: 12 in ended(got)))[12]
    assert twelve.result is not None and twelve.result.ok, twelve


def test_reports_forged_by_the_users_code_are_dropped_or_end_her_runner(pools, policy):
    pools.submit("cpu", spec(30, "alice", seconds=30))
    pools.submit("cpu", spec(40, "bob", seconds=30, output="memory://bob"))
    wait_events(pools, lambda got: {30, 40} <= {e.job for e in got if isinstance(e, Started)})
    runner = runner_of(policy, "alice")
    # her own code cannot reach her runner's pipe (the platform starts it: not dumpable)...
    tried = as_user(policy, "alice", f"open('/proc/{runner}/fd/1', 'w')")
    assert "PermissionError" in tried.stderr, tried

    def forge(*reports) -> None:
        """...so the lines a runner her code took over would send are written by this test."""
        with open(f"/proc/{runner}/fd/1", "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in reports))

    result = {"job_id": "40", "outputs": [], "exit_code": 0, "error_class": None, "error": None, "log": "",
              "log_location": None}
    # an end for bob's attempt, from alice's runner: not hers, dropped; bob's job runs on
    forge({"e": "end", "job": 40, "attempt": 1, "worker": "x", "lost": False, "error": None, "took": 0.1,
           "result": result})
    time.sleep(1)
    assert 40 not in ended(pools.events(timeout=0.5))
    # an end of her own attempt naming an output outside its folder: her runner is not trusted further
    outside = {"pin": "found", "url": "file:///etc/passwd", "name": "passwd", "size": 1, "checksum": "0" * 32}
    forge({"e": "end", "job": 30, "attempt": 1, "worker": "x", "lost": False, "error": None, "took": 0.1,
           "result": {**result, "job_id": "30", "outputs": [outside]}})
    done = ended(wait_events(pools, lambda got: 30 in ended(got)))
    assert done[30].lost and "breaks the rules" in done[30].error and "outside the job's output folder" in \
        done[30].error
    wait_for(lambda: not os.path.exists(f"/proc/{runner}") or _zombie(runner), 30, what="her runner to end")
    pools.cancel(40, 1)  # bob's long job: cancelled, reported no more
    assert 40 not in ended(pools.events(timeout=1.0))


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_a_listening_runner_takes_only_the_platforms_certificate_of_its_own_cluster(tmp_path):
    """The runner of a Kubernetes cluster (``userjobs listen``) hears the platform only: a
    connection with the user's certificate of the same cluster, or with the platform's of
    another cluster, is dropped before any command is read, so its attempts are lost.
    (The platform's own connection, to a real cluster, is test_kube_backend's.)"""
    from types import SimpleNamespace

    from skerry.workload.clusters import new_credentials
    from skerry.workload.userjobs import UserJobs

    folder = open_for_accounts(tmp_path)
    os.chmod(folder, 0o711)
    mine, other = new_credentials(), new_credentials()
    for name, pem in [*mine.items(), *(("other-" + k, v) for k, v in other.items())]:
        (folder / f"{name}.pem").write_bytes(pem)
        os.chmod(folder / f"{name}.pem", 0o644)  # nobody's runner reads them: a test's files only
    port = free_port()  # below the ephemeral range: no outgoing connection of another test holds it
    files = [str(folder / f"{n}.pem") for n in ("ca", "cluster", "cluster-key")]
    runner = subprocess.Popen([sys.executable, "-m", "skerry.workload.userjobs", "listen", "127.0.0.1", str(port),
                               "tls://127.0.0.1:9", *files],
                              user="nobody", group="nogroup", extra_groups=[], cwd="/", stderr=subprocess.PIPE)
    cluster = SimpleNamespace(account=SimpleNamespace(name="alice", hub_name="alice"), pool="cpu")
    try:
        for who in ("user", "other-platform"):
            files = {"tls_ca_file": str(folder / "ca.pem"), "tls_client_cert": str(folder / f"{who}.pem"),
                     "tls_client_key": str(folder / f"{who}-key.pem")}
            got = []
            try:
                jobs = wait_for(lambda f=files, g=got: _connected(cluster, g, port, f), 30,
                                what="the runner to listen")
            except OSError:  # dropped before our first line went out
                continue
            jobs.submit([[spec(50, "alice")]])
            wait_for(lambda j=jobs: not j.running, 15, what=f"the runner to drop the {who}'s connection")
            wait_for(lambda g=got: g, 5, what="the attempt reported")
            # dropped before or after the attempt was handed over: lost either way
            assert got[0].job == 50 and got[0].lost, got
            assert re.match(r"the runner of alice's cpu jobs (had )?stopped", got[0].error), got
        assert runner.poll() is None  # it goes on listening
        # another cluster's runner is not trusted either: its certificate is not signed by our CA
        with pytest.raises(OSError):
            UserJobs.connect(cluster, got.append, ("127.0.0.1", port), {
                "tls_ca_file": str(folder / "other-ca.pem"), "tls_client_cert": str(folder / "platform.pem"),
                "tls_client_key": str(folder / "platform-key.pem")}, "its log")
    finally:
        runner.kill()
        runner.wait()
    assert b"not the platform's certificate" in runner.stderr.read()


def _connected(cluster, got, port, files):
    from skerry.workload.userjobs import UserJobs

    try:
        return UserJobs.connect(cluster, got.append, ("127.0.0.1", port), files, "its log")
    except ConnectionRefusedError:
        return None
