"""One identity per user: alice's code runs as her own OS account and reaches nothing of
bob's or of the platform's (issue "One identity per user", must-shows 1, 2 and 3): from
her kernel, her terminal, a job of each module kind (callable, command, notebook) run
through the REST API, and tasks, ``run``, ``run_on_scheduler`` and a worker plugin sent
through her ``skerry.client``; her code cannot use bob's Dask cluster, and no worker
process runs jobs of both.

Nothing is mocked: a real ``skerry up`` as root, real accounts made at the first spawn,
alice's real Jupyter server, a "skerry" kernel and a JupyterLab terminal driven through the
hub's proxy as JupyterLab drives them, the workload manager's per-user Dask clusters.
Every refusal asserted here is the kernel's (EACCES, ENOENT, EPERM), not an HTTP one.
"""

import json
import os
import stat
import time
import uuid

import httpx
import pytest
import websocket

from helpers import REPO, open_for_accounts
from skerry.errors import SetupError
from skerry.identity import decide
from skerry.kernels.remote import RemoteKernel
from skerry.process import group_members, processes_of


POOLS = {"cpu": {"workers": 1, "threads": 1}, "gpu": None}
API = "/services/skerry/api/v1"

# what alice's code tries: ``probe()`` is what each place reports (TARGETS, ADMIN filled in)
ATTEMPT = r'''
import errno, json, os, signal
def attempt(call):
    try:
        call()
        return "allowed"
    except OSError as e:
        return errno.errorcode[e.errno]
'''
PROBE = ATTEMPT + r'''
TARGETS, ADMIN = json.loads(TARGETS_JSON), ADMIN_TOKEN
def probe():
    targets = TARGETS
    umask = os.umask(0o077)
    os.umask(umask)
    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "umask": umask,
           "home": os.environ.get("HOME"), "env_has_admin_token": ADMIN in "".join(os.environ.values()),
           "pid": os.getpid()}
    for label, path in targets["read"].items():
        out["read " + label] = attempt(lambda: open(path, "rb").read(1))
    for label, path in targets["list"].items():
        out["list " + label] = attempt(lambda: os.listdir(path))
    for label, path in targets["write"].items():
        out["write " + label] = attempt(lambda: open(path, "wb").write(b"alice was here"))
    for label, pid in targets["signal"].items():
        out["signal " + label] = attempt(lambda: os.kill(pid, signal.SIGTERM))
    return out
'''


def probe_code(platform, extra: dict | None = None) -> str:
    """PROBE with the targets (and ``extra`` ones) and the admin token filled in."""
    t = targets(platform)
    for kind, more in (extra or {}).items():
        t[kind].update(more)
    return PROBE.replace("TARGETS_JSON", repr(json.dumps(t))).replace("ADMIN_TOKEN", repr(platform.admin_token))


def targets(platform) -> dict:
    data = platform.data_dir
    hub_pid = int((data / "run" / "hub.pid").read_text().split()[0])
    bob_pid = platform.group_of("bob")
    secrets = {f"secrets/{p.name}": str(p) for p in (data / "secrets").iterdir() if p.is_file()}
    databases = {p.name: str(p) for p in data.glob("*.sqlite")}
    assert {"jupyterhub.sqlite", "catalog.sqlite", "profiles.sqlite", "usage.sqlite"} <= set(databases)
    assert "secrets/admin-api-token" in secrets
    return {
        "read": {
            "bob's file": str(data / "users" / "bob" / "private.txt"),
            **secrets,
            "accounts/alice/adaptors.json": str(data / "accounts" / "alice" / "adaptors.json"),
            **databases,
            "run/hub.log": str(data / "run" / "hub.log"),
            "bob's handed adaptors": str(data / "run" / "users" / "bob" / "default.adaptors.json"),
            "/proc of bob's server": f"/proc/{bob_pid}/environ",
            "/proc of the hub": f"/proc/{hub_pid}/environ",
        },
        "list": {"bob's home": str(data / "users" / "bob"), "accounts/": str(data / "accounts"),
                 "secrets/": str(data / "secrets"), "the data dir": str(data), "run/": str(data / "run")},
        "write": {"into bob's home": str(data / "users" / "bob" / "planted.txt"),
                  "the catalog": str(data / "catalog.sqlite"),
                  "a new file in the data dir": str(data / "planted.txt")},
        "signal": {"bob's server": bob_pid, "the hub": hub_pid},
    }


@pytest.fixture(scope="module")
def bob_file(platform, bob):
    r = httpx.put(f"{platform.url}/dav/bob/home/private.txt", content=b"bob only", auth=("bob", bob))
    assert r.status_code == 201, r.text
    # alice's own stored adaptors exist, so that accounts/alice/ is not empty
    r = platform.api("PUT", "/services/skerry/api/v1/users/alice/adaptors/scratch",
                     json={"type": "memory"})
    assert r.status_code in (200, 201), r.text


def check_refused(found: dict, platform):
    alice, bob = platform.account("alice"), platform.account("bob")
    assert found["uid"] == alice.pw_uid and found["gid"] == alice.pw_gid
    assert found["uid"] not in (bob.pw_uid, 0, os.getuid())
    assert found["groups"] == [], found["groups"]
    assert found["umask"] == 0o077
    assert found["home"] == str(platform.data_dir / "users" / "alice"), found["home"]
    assert found["env_has_admin_token"] is False
    refusals = {k: v for k, v in found.items() if k.split(" ")[0] in ("read", "list", "write", "signal")}
    allowed = {k: v for k, v in refusals.items() if v not in ("EACCES", "ENOENT", "EPERM")}
    assert not allowed, allowed
    assert len(refusals) >= 20, refusals


@pytest.mark.platform
def test_alices_kernel_runs_as_her_account_and_reaches_nothing_else(platform, alice, bob, bob_file):
    code = probe_code(platform) + "print(json.dumps(probe()))"
    with RemoteKernel(f"{platform.url}/user/alice/", alice, "skerry") as kernel:
        result = kernel.execute(code)
        assert result.error is None, "\n".join(result.error["traceback"])
        check_refused(json.loads(result.stdout), platform)
        # her own files are hers: what she writes is 0600 and her account's
        made = kernel.execute("open('mine.txt', 'w').write('x'); import os; print(os.path.realpath('mine.txt'))")
    path = platform.data_dir / "users" / "alice" / "mine.txt"
    assert made.stdout.strip() == str(path)
    st = path.stat()
    assert st.st_uid == platform.account("alice").pw_uid and stat.S_IMODE(st.st_mode) == 0o600
    assert (platform.data_dir / "users" / "bob" / "private.txt").read_bytes() == b"bob only"
    assert not (platform.data_dir / "users" / "bob" / "planted.txt").exists()


def terminal(platform, token: str, command: str, timeout: float = 60) -> str:
    """What a JupyterLab terminal of alice's printed for ``command`` (driven as JupyterLab does)."""
    headers = {"Authorization": f"token {token}"}
    r = httpx.post(f"{platform.url}/user/alice/api/terminals", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    url = f"ws://127.0.0.1:{platform.port}/user/alice/terminals/websocket/{name}"
    ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=timeout)
    end = uuid.uuid4().hex
    try:
        ws.send(json.dumps(["stdin", f"{command}; echo {end[:8]}''{end[8:]}\r"]))
        out, deadline = "", time.monotonic() + timeout
        while end not in out:
            assert time.monotonic() < deadline, f"the terminal did not finish: {out[-2000:]}"
            kind, *rest = json.loads(ws.recv())
            if kind == "stdout":
                out += rest[0]
        return out
    finally:
        ws.close()
        httpx.delete(f"{platform.url}/user/alice/api/terminals/{name}", headers=headers, timeout=60)


@pytest.mark.platform
def test_alices_terminal_runs_as_her_account_and_reaches_nothing_else(platform, alice, bob, bob_file):
    t = targets(platform)
    admin_token = platform.admin_token
    paths = " ".join(f"'{p}'" for p in list(t["read"].values()) + list(t["list"].values()))
    pids = " ".join(str(pid) for pid in t["signal"].values())
    planted = t["write"]["into bob's home"]
    out = terminal(platform, alice, f"id -u; id -G; umask; for p in {paths}; do cat \"$p\" || ls \"$p\"; done 2>&1; "
                                    f"kill -TERM {pids}; echo x > '{planted}'")
    alice_account = platform.account("alice")
    lines = out.replace("\r", "").splitlines()
    assert str(alice_account.pw_uid) in lines and str(alice_account.pw_gid) in lines  # id -u, id -G (own group only)
    assert "0077" in lines
    assert admin_token not in out and "bob only" not in out
    assert out.count("Permission denied") >= len(t["read"]) + len(t["list"]) - 2  # a missing file says so instead
    assert "Operation not permitted" in out  # kill
    assert not (platform.data_dir / "users" / "bob" / "planted.txt").exists()
    assert platform.server("bob")["ready"]


@pytest.mark.platform
def test_a_deleted_hub_user_leaves_a_locked_account_and_nothing_running(platform):
    from skerry.accounts import is_locked

    platform.create_user("carol")
    platform.start_server("carol")
    account = platform.account("carol")
    pgid = platform.group_of("carol")
    r = platform.api("DELETE", "/hub/api/users/carol")
    assert r.status_code == 204, r.text
    assert is_locked(account.pw_name)
    assert not group_members(pgid)
    assert not processes_of(account.pw_uid)
    assert (platform.data_dir / "users" / "carol").is_dir()  # kept for the admin
    # a new hub user of that name does not take the old account over: its start says why
    platform.create_user("carol")
    r = platform.api("POST", "/hub/api/users/carol/server")
    assert r.status_code in (400, 500), r.text
    assert "locked" in r.json()["message"], r.text



# ---- skerry up's decision, before anything starts ----


def test_skerry_up_names_the_folder_that_keeps_accounts_from_their_homes(tmp_path):
    users = tmp_path / "private" / "data" / "users"
    users.mkdir(parents=True)
    for below in (users, users.parent):  # open whatever this process's umask made them
        os.chmod(below, 0o711)
    os.chmod(tmp_path / "private", 0o700)
    open_for_accounts(tmp_path / "private")  # the folders above it: open; "private" is the one in the way
    with pytest.raises(SetupError) as refused:
        decide(users, "skerry-{username}")
    assert f"folder {tmp_path / 'private'} (mode 0700, owner root)" in refused.value.message
    assert f"chmod o+x {tmp_path / 'private'}" in refused.value.message
    os.chmod(tmp_path / "private", 0o711)
    decided = decide(users, "skerry-{username}")
    assert decided.policy.template == "skerry-{username}" and decided.reason is None  # accounts


def test_without_the_right_to_switch_users_skerry_up_is_single_user(tmp_path):
    """``decide`` run by an account that is not root (``nobody``): single-user mode, saying why."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from skerry.identity import decide; "
            "i = decide(Path('/nonexistent'), 'skerry-{username}'); print(i.policy, i.single_user); print(i.reason)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60,
                          user="nobody", group="nogroup", extra_groups=[], env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    first, reason = done.stdout.splitlines()
    assert first == "None nobody"
    assert "without the privilege to switch users" in reason and "single-user mode" in reason


# ---- jobs and Dask: alice's own cluster ----

# a job of each module kind runs probe() and writes what it found to its output (``skerry_probe``
# is a module of alice's own, in her Python user site as ``pip install --user`` would put it)
JOBS = r'''

def job(ctx):  # a callable module
    with ctx.open_output("found") as f:
        f.write(json.dumps(probe()).encode())


if __name__ == "__main__":  # a command module: python -m skerry_probe OUTPUT
    import sys
    with open(sys.argv[1], "w") as f:
        json.dump(probe(), f)
'''
NOTEBOOK_CELLS = ["input = None\nfound = None", "import json, skerry_probe\n"
                  "open(found, 'w').write(json.dumps(skerry_probe.probe()))"]
ONE_OUTPUT = {"inputs": [{"name": "input"}], "outputs": [{"name": "found", "file_name": "{stem}.{job}.json"}]}


def user_site(platform, user: str):
    """``user``'s Python user site (made, the account's own): what their processes import from."""
    import sys

    account = platform.account(user)
    python = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = platform.data_dir / "users" / user / ".local" / "lib" / python / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    for folder in [site, *site.parents]:
        if folder == platform.data_dir / "users" / user:
            break
        os.chown(folder, account.pw_uid, account.pw_gid)
    return site


def write_as(platform, user: str, path, text: str) -> None:
    account = platform.account(user)
    path.write_text(text)
    os.chown(path, account.pw_uid, account.pw_gid)


def run_module(platform, owner: str, token: str, name: str, spec: dict, tag: str) -> list[dict]:
    """Register ``spec`` as ``name``, run it over a one-file dataset of the user's: what each
    job wrote (the run must succeed)."""
    call = lambda method, path, **kw: platform.api(method, API + path, token=token, **kw)  # noqa: E731
    r = call("POST", "/modules", json={"name": name, "version": "1", **ONE_OUTPUT, **spec})
    assert r.status_code == 201, r.text
    home = platform.data_dir / "users" / owner
    folder = home / f"in-{tag}"
    folder.mkdir(exist_ok=True)
    account = platform.account(owner)
    os.chown(folder, account.pw_uid, account.pw_gid)  # hers, whatever this process's umask made it
    write_as(platform, owner, folder / "one.txt", "one\n")
    for method, path, body in [("POST", "/datasets", {"name": f"in.{tag}", "location": f"skerry://home/in-{tag}"}),
                               ("POST", f"/datasets/in.{tag}/files", {"files": [
                                   {"uri": f"skerry://home/in-{tag}/one.txt", "size": 4}]}),
                               ("POST", f"/datasets/in.{tag}/close", None),
                               ("POST", "/workflows", {"name": f"wf-{tag}", "steps": [
                                   {"name": "probe", "module": name, "inputs": {"input": "dataset"}}]})]:
        r = call(method, path, **({"json": body} if body is not None else {}))
        assert r.status_code in (200, 201), r.text
    r = call("POST", "/runs", json={"workflow": f"wf-{tag}", "dataset": f"in.{tag}"})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    deadline = time.monotonic() + 240
    while (run := call("GET", f"/runs/{run_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
    jobs = call("GET", "/jobs", params={"task": run["tasks"][0]["id"]}).json()["jobs"]
    assert run["state"] == "succeeded", jobs
    files = call("GET", f"/datasets/{run['tasks'][0]['output_dataset']}/files").json()["files"]
    assert files, run
    return [json.loads((home / f["uri"].removeprefix("skerry://home/")).read_text()) for f in files]


def cluster_files(platform, user: str) -> dict[str, str]:
    folder = platform.data_dir / "run" / "users" / user / "dask" / "cpu"
    return {f"{user}'s cluster {name}": str(folder / name)
            for name in ("user-key.pem", "platform-key.pem", "cluster-key.pem", "connect.json")}


@pytest.fixture(scope="module")
def bobs_job(platform, bob, bob_file):
    """A callable job of bob's has run on his own cluster: what it reported (its worker's pid)."""
    site = user_site(platform, "bob")
    # bob's own module only says who runs it (a probe of his would signal his own server)
    write_as(platform, "bob", site / "skerry_probe.py", "import json, os\n\ndef probe():\n"
             "    return {'uid': os.getuid(), 'pid': os.getpid()}\n" + JOBS)
    [found] = run_module(platform, "bob", bob, "bob-probe", {"callable": "skerry_probe:job"}, "bob")
    assert found["uid"] == platform.account("bob").pw_uid
    return found


def bob_extras(platform, bobs_job) -> dict:
    """What alice's code also tries once bob's cluster runs: its keys, his jobs' adaptors,
    the environment of his worker, a signal to it."""
    handed = platform.data_dir / "run" / "users" / "bob"
    for path in [*cluster_files(platform, "bob").values(), handed / "jobs.adaptors.json"]:
        assert os.path.isfile(path), path  # there: a refusal of it is not a missing file
    return {"read": {**cluster_files(platform, "bob"), "bob's jobs adaptors": str(handed / "jobs.adaptors.json"),
                     "/proc of bob's worker": f"/proc/{bobs_job['pid']}/environ"},
            "list": {"bob's cluster folder": str(handed / "dask" / "cpu")},
            "signal": {"bob's worker": bobs_job["pid"]}}


@pytest.mark.platform
@pytest.mark.timeout(600)
def test_alices_jobs_of_each_kind_run_as_her_account_and_reach_nothing_else(platform, alice, bob, bob_file,
                                                                           bobs_job):
    site = user_site(platform, "alice")
    write_as(platform, "alice", site / "skerry_probe.py", probe_code(platform, bob_extras(platform, bobs_job)) + JOBS)
    home = platform.data_dir / "users" / "alice"
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CELLS[0], metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(NOTEBOOK_CELLS[1])]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    write_as(platform, "alice", home / "probe.ipynb", nbformat.writes(nb))
    python = os.path.realpath(__import__("sys").executable)
    kinds = {"callable": {"callable": "skerry_probe:job"},
             "command": {"command": [python, "-m", "skerry_probe", "{output}"]},
             "notebook": {"notebook": "skerry://home/probe.ipynb"}}
    workers = set()
    for kind, spec in kinds.items():
        [found] = run_module(platform, "alice", alice, f"probe-{kind}", spec, kind)
        check_refused(found, platform)
        assert found["read bob's jobs adaptors"] in ("EACCES", "ENOENT")
        if kind == "callable":
            workers.add(found["pid"])
    # no worker process that ran bob's job runs one of alice's: her worker is her account's, not his
    assert bobs_job["pid"] not in workers
    assert bobs_job["pid"] not in processes_of(platform.account("alice").pw_uid)
    assert (platform.data_dir / "users" / "bob" / "private.txt").read_bytes() == b"bob only"


# what alice's own client does on her cluster, and tries on bob's
CLIENT = r'''
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin
from skerry.workload.clusters import security

mine = skerry.client
out = {"submit": mine.submit(probe, pure=False).result(),
       "run": list(mine.run(probe).values()),
       "run_on_scheduler": mine.run_on_scheduler(probe)}

class Probe(WorkerPlugin):
    def setup(self, worker):
        worker.skerry_probe = probe()

mine.register_plugin(Probe(), name="probe")
out["register_plugin"] = list(mine.run(lambda dask_worker: dask_worker.skerry_probe).values())
tls = skerry.api.cluster("cpu")["tls"]
for label, address, kwargs in [("her files", BOB, {"security": security(tls)}),
                               ("no TLS", BOB.replace("tls://", "tcp://"), {})]:
    try:
        Client(address, timeout=5, set_as_default=False, **kwargs).close()
        out["connect " + label] = "connected"
    except Exception as e:
        out["connect " + label] = type(e).__name__
print(json.dumps(out))
'''


@pytest.mark.platform
@pytest.mark.timeout(600)
def test_alices_dask_client_runs_as_her_on_her_cluster_and_cannot_use_bobs(platform, alice, bob, bob_file,
                                                                           bobs_job):
    bob_address = json.loads((platform.data_dir / "run" / "users" / "bob" / "dask" / "cpu" / "connect.json")
                             .read_text())["address"]
    code = probe_code(platform, bob_extras(platform, bobs_job)) + CLIENT.replace("BOB", repr(bob_address))
    with RemoteKernel(f"{platform.url}/user/alice/", alice, "skerry") as kernel:
        result = kernel.execute(code, timeout=300)
        assert result.error is None, "\n".join(result.error["traceback"])
    out = json.loads(result.stdout)
    for where in ("submit", "run", "run_on_scheduler", "register_plugin"):
        for found in out[where] if isinstance(out[where], list) else [out[where]]:
            check_refused(found, platform)
            assert found["pid"] != bobs_job["pid"]
    assert out["connect her files"] != "connected" and out["connect no TLS"] != "connected", out
    assert out["run_on_scheduler"]["read bob's cluster user-key.pem"] == "EACCES"
    # bob's cluster ran on: his next job still runs (nothing of alice's touched it)
    [again] = run_module(platform, "bob", bob, "bob-probe-2", {"callable": "skerry_probe:job"}, "bob2")
    assert again["uid"] == platform.account("bob").pw_uid


# ---- her dashboard: through her server only ----

DASHBOARD = ATTEMPT + r'''
client = skerry.client
client.submit(sum, [1, 2], pure=False).result()  # something in her task stream
print(json.dumps({"link": client.dashboard_link, "http port": client.scheduler_info()["services"]["dashboard"],
                  "bob's dashboard folder": attempt(lambda: os.close(os.open(BOB_WORK, os.O_PATH)))}))
'''


@pytest.mark.platform
@pytest.mark.timeout(600)
def test_alices_dashboard_is_served_by_her_server_to_her_only(platform, alice, bob, bob_file, bobs_job):
    bob_work = platform.data_dir / "run" / "users" / "bob" / "dask" / "cpu" / "work"
    assert (bob_work / "dashboard.sock").exists()  # bob's runs: a refusal below is not a missing file
    with RemoteKernel(f"{platform.url}/user/alice/", alice, "skerry") as kernel:
        result = kernel.execute(DASHBOARD.replace("BOB_WORK", repr(str(bob_work))), timeout=300)
        assert result.error is None, "\n".join(result.error["traceback"])
    out = json.loads(result.stdout)
    base = f"{platform.url}/user/alice/skerry/dask/cpu/"
    assert out["link"] == "/user/alice/skerry/dask/cpu/status"  # the link skerry.client shows works:
    listed = {i["name"]: i for i in platform.api("GET", API + "/infrastructure", token=alice).json()["infrastructures"]}
    assert listed[""]["endpoints"]["dask"]["dashboard"] == {"cpu": platform.url + out["link"]}  # the API says so too
    as_alice = {"Authorization": f"token {alice}"}
    status = httpx.get(platform.url + out["link"], headers=as_alice, timeout=60)
    assert status.status_code == 200 and "bokeh" in status.text.lower(), status.text[:300]
    plots = httpx.get(base + "individual-plots.json", headers=as_alice, timeout=60)
    assert plots.status_code == 200, plots.text
    assert any("Task Stream" in name for name in plots.json()), plots.json()
    stream = httpx.get(base + "individual-task-stream", headers=as_alice, timeout=60)
    assert stream.status_code == 200 and "bokeh" in stream.text.lower()
    # nobody else: bob's token, no login (the hub's login page), her kernel's neighbour bob at the socket
    assert httpx.get(base + "individual-plots.json", headers={"Authorization": f"token {bob}"},
                     timeout=60).status_code == 403
    assert httpx.get(base + "individual-plots.json", timeout=60).status_code == 302
    assert out["bob's dashboard folder"] == "EACCES"
    # and never on TCP: the scheduler's own HTTP port serves no dashboard page
    for path in ("status", "individual-plots.json"):
        assert httpx.get(f"http://127.0.0.1:{out['http port']}/{path}", timeout=10).status_code == 404
    # a pool with no running cluster: a sentence, not a proxy error
    idle = httpx.get(f"{platform.url}/user/alice/skerry/dask/gpu/status", headers=as_alice, timeout=60)
    assert idle.status_code == 503 and "starts on the first use of skerry.client" in idle.text, idle.text[:300]


def test_a_new_home_starts_with_the_tutorials_as_its_owners_files(platform, alice):
    from skerry.tutorials import FOLDER, notebooks

    folder = platform.data_dir / "users" / "alice" / FOLDER
    shipped = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in notebooks()] == shipped
    account = platform.account("alice")
    for path in [folder, *folder.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (account.pw_uid, account.pw_gid), path
    assert (folder / shipped[1]).read_bytes() == (REPO / "notebooks" / shipped[1]).read_bytes()
