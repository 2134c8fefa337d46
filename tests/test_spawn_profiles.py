"""Profiles applied at spawn, on a running platform: the admin writes profiles through REST,
users spawn through the hub's REST API (and its spawn page), and the servers' processes carry
the limits (as /proc and their cgroups show them, by the mechanism their state names: the one
this machine offers), the profile's adaptors and the profile in their state.

- an admin's change applies to the next spawn with no hub restart; a running server keeps
  what it started with (state and /proc);
- a group-scoped profile, a forbidden choice and a free value not matching its pattern are
  refused with 403 and the reason, through REST and the spawn page; nothing is left running;
- two processes burning CPU in alice's server (through a Jupyter kernel) use at most about
  the profile's one core; a process the kernel starts that allocates past her memory limit
  fails (killed, or MemoryError under rlimits) while the kernel and the Jupyter server run on;
- a quota of one server: alice's second (named) server is refused (403) with the quota's sentence.
"""

import html
import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from helpers import descendants, open_for_accounts, pids_of, wait_for
from skerry.hub.plugins import spawn_form
from skerry.limits import CPU_PERIOD_US, offered
from skerry.hub.plugins.selection import BadOptions, Refused, select
from skerry.kernels.remote import KernelDied, KernelError, RemoteKernel

platform_test = pytest.mark.platform

API = "/services/skerry/api/v1"
POOLS = {"cpu": None, "gpu": None}  # no Dask: the profiles' limits are the subject
GIB = 1024**3
KERNEL = "python3"  # a plain kernel in alice's server: no pool needed

LAB = {  # for everyone, with an option and a free value
    "slug": "lab", "display_name": "Lab", "description": "everyone's",
    "resources": {"cpu_limit": 1, "mem_limit": "6Gi", "gpus": 0},
    "dask": {"max_workers": 1, "worker_memory": "1Gi"},
    "access": {"everyone": True},
    "options": {"size": {"display_name": "Size",
                         "choices": {"one": {"display_name": "1 core", "default": True},
                                     "two": {"display_name": "2 cores", "overrides": {"resources": {"cpu_limit": 2}}}},
                         "free_value": {"enabled": True, "display_name": "Idle timeout (s)",
                                        "pattern": "^[0-9]{2,5}$", "sets": "idle_timeout_s"}}},
}


def physics(scratch: Path, mem: str = "6Gi") -> dict:
    """Only for group physics: one core, ``mem``, a scratch folder per user."""
    return {"slug": "physics", "display_name": "Physics", "description": "physics group",
            "resources": {"cpu_limit": 1, "mem_limit": mem, "gpus": 0},
            "adaptors": [{"name": "scratch", "type": "local", "path": str(scratch / "{username}")}],
            "dask": {"max_workers": 1, "worker_memory": "1Gi"},
            "access": {"groups": ["physics"]}}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("scratch")
    (root / "alice").mkdir()
    (root / "alice" / "from-profile.txt").write_text("alice's scratch\n")
    return root


@pytest.fixture(scope="module")
def users(platform, scratch):
    """alice (group physics) and bob (not), their tokens; the profiles LAB and physics."""
    platform.api("POST", "/hub/api/groups/physics")
    tokens = {name: (platform.create_user(name), platform.user_token(name))[1] for name in ("alice", "bob")}
    r = platform.api("POST", "/hub/api/groups/physics/users", json={"users": ["alice"]})
    assert r.status_code == 200, r.text
    for spec in (LAB, physics(scratch)):
        r = platform.api("POST", API + "/profiles", json=spec)
        assert r.status_code == 201, r.text
    return tokens


def spawn(platform, user, token, options=None, server=""):
    """POST a spawn; ``options`` None: no body (the hub reuses the server's last user_options)."""
    path = f"/hub/api/users/{user}/server" + (f"s/{server}" if server else "")
    return platform.api("POST", path, token=token, **({} if options is None else {"json": {"user_options": options}}))


def server_model(platform, user, server="") -> dict | None:
    return platform.api("GET", f"/hub/api/users/{user}?include_stopped_servers").json()["servers"].get(server)


def wait_ready(platform, user, server=""):
    wait_for(lambda: (server_model(platform, user, server) or {}).get("ready"), 120, what=f"{user}'s server")
    return server_model(platform, user, server)["state"]


def stop(platform, user, token, server=""):
    path = f"/hub/api/users/{user}/server" + (f"s/{server}" if server else "")
    r = platform.api("DELETE", path, token=token)
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: not (server_model(platform, user, server) or {}).get("ready")
             and not (server_model(platform, user, server) or {}).get("pending"), 60, what=f"{user}'s server to stop")


def in_cgroups(pid: int, limits: dict) -> bool:
    """Whether ``pid`` is in each of the server's cgroups (``limits``: the server's state's)."""
    joined = {}  # controller ("cpu+memory": cgroup v2) -> the process's cgroup, from /proc
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        joined.update((name, path) for name in (names.split(",") if names else ["cpu+memory"]))
    return all(c in joined and p.endswith(joined[c]) for c, p in limits["cgroups"].items())


def proc_limits(pid: int, limits: dict) -> tuple[str, int]:
    """What the kernel holds a process to, by the mechanism of the server's state (``limits``):
    (CPU: Cpus_allowed_list, or its cgroup's "quota/period" in µs; memory in bytes: soft
    RLIMIT_AS, or its cgroup's limit), read from /proc and the cgroup files."""
    if limits["mechanism"] == "rlimits":
        status = Path(f"/proc/{pid}/status").read_text()
        cpus = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)
        lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
        return cpus, int(next(li for li in lines if li.startswith("Max address space")).split()[3])
    assert in_cgroups(pid, limits), (pid, limits)
    if limits["mechanism"] == "cgroup2":
        cgroup = Path(limits["cgroups"]["cpu+memory"])
        quota, period = (cgroup / "cpu.max").read_text().split()
        return f"{quota}/{period}", int((cgroup / "memory.max").read_text())
    cpu, memory = Path(limits["cgroups"]["cpu"]), Path(limits["cgroups"]["memory"])
    quota, period = ((cpu / f"cpu.cfs_{f}_us").read_text().strip() for f in ("quota", "period"))
    return f"{quota}/{period}", int((memory / "memory.limit_in_bytes").read_text())


def one_core(limits: dict) -> str:
    """What :func:`proc_limits` shows for a 1-core limit under the server's mechanism."""
    return str(limits["cores"][0]) if limits["mechanism"] == "rlimits" else f"{CPU_PERIOD_US}/{CPU_PERIOD_US}"


def jupyter_pid(leader: int) -> int:
    """The Jupyter server of a micro-infrastructure: the leader's child running jupyterhub.singleuser."""
    def find():
        for pid in descendants(leader):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            launcher = b"skerry.hub.userserver.launcher" in argv
            if b"jupyterhub.singleuser" in argv and not launcher:
                return pid
        return None

    return wait_for(find, 30, what="the jupyter server")


def refused(r, status=403) -> str:
    assert r.status_code == status, r.text
    return r.json()["message"]


def ours(platform, pattern: str) -> set[int]:
    """Live processes of this platform (others may run beside it) whose environment has ``pattern``."""
    return pids_of(pattern, environ=True) & pids_of(str(platform.data_dir), environ=True)


def nothing_running(platform, user, server=""):
    model = server_model(platform, user, server) or {}
    assert not model.get("ready") and not model.get("pending"), model
    assert not ours(platform, f"SKERRY_USER={user} "), f"processes of {user} left running"


@platform_test
def test_profile_limits_adaptors_and_state_and_an_admins_change_applies_at_the_next_spawn(
        platform, users, scratch):
    r = spawn(platform, "alice", users["alice"], {"profile": "physics"})
    assert r.status_code in (201, 202), r.text
    state = wait_ready(platform, "alice")
    profile = state["profile"]
    assert (profile["slug"], profile["version"], profile["resources"]["mem_limit"]) == ("physics", 1, 6 * GIB)
    assert profile["adaptors"] == [{"name": "scratch", "type": "local", "path": str(scratch / "alice")}]
    limits = state["limits"]
    assert limits["mechanism"] == offered() and not limits.get("fallback"), limits
    assert len(limits["cores"]) == (1 if limits["mechanism"] == "rlimits" else 0), limits

    # the leader and the Jupyter server (its child) carry the limits
    for pid in (state["pid"], jupyter_pid(state["pid"])):
        assert proc_limits(pid, limits) == (one_core(limits), 6 * GIB)
    assert b"SKERRY_PROFILE=physics\0" in Path(f"/proc/{state['pid']}/environ").read_bytes()

    # the profile's adaptor, rendered for alice, is in her federation; her server runs as her
    # account, so her scratch folder is hers, as an admin would hand it over (her account exists now)
    open_for_accounts(scratch / "alice")
    for path in (scratch / "alice", scratch / "alice" / "from-profile.txt"):
        os.chown(path, platform.account("alice").pw_uid, platform.account("alice").pw_gid)
    base = f"{platform.url}/user/alice/skerry/api/v1/"
    auth = {"Authorization": f"token {users['alice']}"}
    names = [a["name"] for a in httpx.get(base + "adaptors", headers=auth, timeout=60).json()["adaptors"]]
    assert names[0] == "home" and "scratch" in names
    listed = httpx.get(base + "list", params={"adaptor": "scratch"}, headers=auth, timeout=60).json()
    assert [e["name"] for e in listed["entries"]] == ["from-profile.txt"]

    # the admin changes the profile: the running server keeps what it started with
    r = platform.api("PUT", API + "/profiles/physics", json=physics(scratch, mem="5Gi"))
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    kept = server_model(platform, "alice")["state"]
    assert kept["profile"] == profile and proc_limits(kept["pid"], kept["limits"])[1] == 6 * GIB

    # the next spawn gets the new values, with no hub restart
    hub_pid = platform.proc.pid
    stop(platform, "alice", users["alice"])
    assert spawn(platform, "alice", users["alice"]).status_code in (201, 202)  # the same options, from the hub
    state = wait_ready(platform, "alice")
    assert (state["profile"]["version"], state["profile"]["resources"]["mem_limit"]) == (2, 5 * GIB)
    limits = state["limits"]
    assert proc_limits(state["pid"], limits)[1] == proc_limits(jupyter_pid(state["pid"]), limits)[1] == 5 * GIB
    assert platform.proc.pid == hub_pid and platform.proc.poll() is None


BURN = """
import json, multiprocessing, os, time

def burn(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

before, start = os.times(), time.monotonic()
workers = [multiprocessing.Process(target=burn, args=(3,)) for _ in range(2)]
for w in workers:
    w.start()
for w in workers:
    w.join()
after, wall = os.times(), time.monotonic() - start
cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
print(json.dumps({"cpu": cpu, "wall": wall, "affinity": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}))
"""

ALLOCATE = """
import subprocess, sys
past = subprocess.run([sys.executable, "-c", "big = b'x' * %d"], capture_output=True, text=True)
print(past.returncode, "MemoryError" in past.stderr)
"""


@pytest.fixture
def alice_on_physics(platform, users) -> dict:
    """alice's default server running the physics profile (1 core, either version), started here
    if no test before has left it running: her server's state."""
    model = server_model(platform, "alice") or {}
    if not model.get("ready"):
        r = spawn(platform, "alice", users["alice"], {"profile": "physics"})
        assert r.status_code in (201, 202), r.text
        return wait_ready(platform, "alice")
    assert model["state"]["profile"]["slug"] == "physics", model["state"]["profile"]
    return model["state"]


@platform_test
def test_two_burning_processes_in_alices_server_use_at_most_her_one_core(platform, users, alice_on_physics):
    state = alice_on_physics  # running the physics profile: 1 core
    assert state["profile"]["resources"]["cpu_limit"] == 1
    with RemoteKernel(f"{platform.url}/user/alice/", users["alice"], KERNEL, timeout=120) as kernel:
        result = kernel.execute(BURN, timeout=120)
        assert result.error is None, result.error
        used = json.loads(result.stdout)
        inside = in_cgroups(used["pid"], state["limits"]) if state["limits"].get("cgroups") else None
    cores = used["cpu"] / used["wall"]
    print(f"2 burning processes in a 1-core server: {cores:.2f} cores")
    if state["limits"]["mechanism"] == "rlimits":
        assert used["affinity"] == state["limits"]["cores"]
    else:
        assert inside  # the kernel is in her server's cgroups
        # named after her OS account: another platform's alice on this machine has cgroups of her own
        account = platform.account("alice").pw_name
        assert {Path(p).name for p in state["limits"]["cgroups"].values()} == {f"{account}--default"}
    assert cores <= 1.15, used


@platform_test
def test_past_alices_memory_limit_a_process_fails_and_her_kernel_and_server_run_on(platform, users,
                                                                                   alice_on_physics):
    state = alice_on_physics
    jupyter = jupyter_pid(state["pid"])
    with RemoteKernel(f"{platform.url}/user/alice/", users["alice"], KERNEL, timeout=120) as kernel:
        result = kernel.execute(ALLOCATE % (state["limits"]["memory"] + GIB), timeout=120)
        assert result.error is None, result.error
        # killed by the OOM killer (cgroups: the sum of her processes), or MemoryError (rlimits: its own)
        expected = "1 True" if state["limits"]["mechanism"] == "rlimits" else "-9 False"
        assert result.stdout.strip() == expected, result.stdout
        assert kernel.execute("print(6 * 7)").stdout.strip() == "42"  # the kernel runs on
    assert server_model(platform, "alice").get("ready") and jupyter_pid(state["pid"]) == jupyter


@platform_test
def test_past_alices_memory_limit_her_kernel_itself_is_stopped_and_her_server_runs_on(platform, users,
                                                                                       alice_on_physics):
    state = alice_on_physics
    jupyter = jupyter_pid(state["pid"])
    with RemoteKernel(f"{platform.url}/user/alice/", users["alice"], KERNEL, timeout=120) as kernel:
        code = f"big = b'x' * {state['limits']['memory'] + GIB}"
        print(f"the kernel allocates 1 GiB past {state['limits']['memory']} bytes ({state['limits']['mechanism']})")
        if state["limits"]["mechanism"] == "rlimits":  # its own address space: MemoryError, the kernel lives
            assert kernel.execute(code, timeout=120).error["ename"] == "MemoryError"
        else:  # the sum of her processes: the OOM killer kills the biggest, the kernel; her server restarts it
            with pytest.raises(KernelDied):
                kernel.execute(code, timeout=120)
        deadline = time.monotonic() + 120
        while True:  # the restarted kernel (same id) answers once it is up
            try:
                # the first answers after a restart may come without their output (it went out on
                # the kernel's new channels before the server relayed them: seen once under load)
                if kernel.execute("print(6 * 7)", timeout=10).stdout.strip() == "42":
                    break
            except KernelError:
                pass
            assert time.monotonic() < deadline, "the kernel did not come back"
    assert server_model(platform, "alice").get("ready") and jupyter_pid(state["pid"]) == jupyter


@platform_test
def test_outside_the_group_forbidden_choices_and_bad_free_values_are_403_with_the_reason(platform, users):
    bob = users["bob"]
    message = refused(spawn(platform, "bob", bob, {"profile": "physics"}))
    assert "'physics' is not open to bob" in message
    nothing_running(platform, "bob")

    message = refused(spawn(platform, "bob", bob, {"profile": "lab", "options": {"size": "huge"}}))
    assert "no choice 'huge'" in message and "one, two" in message
    nothing_running(platform, "bob")

    message = refused(spawn(platform, "bob", bob, {"profile": "lab", "free": {"size": "1; rm -rf"}}))
    assert "does not match" in message and "^[0-9]{2,5}$" in message
    nothing_running(platform, "bob")

    message = refused(spawn(platform, "bob", bob, {"profile": "nope"}))
    assert "no profile named 'nope'" in message
    refused(spawn(platform, "bob", bob, {"colour": "red"}), 400)
    nothing_running(platform, "bob")



@pytest.fixture(scope="module")
def admin_browser(platform):
    """An HTTP client logged in at the hub's login page as the admin, who may open others' spawn pages."""
    client = httpx.Client(base_url=platform.url, timeout=120)
    password = (platform.data_dir / "secrets" / "admin-password").read_text().strip()
    r = client.post("/hub/login", data={"username": "admin", "password": password, "_xsrf": xsrf(client, "/hub/login")})
    assert r.status_code == 302, r.text
    yield client
    client.close()


def xsrf(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)


def form_action(page: str) -> str:
    """The spawn form's URL (it carries the page's XSRF token)."""
    return html.unescape(re.search(r'id="spawn_form"\s+action="([^"]+)"', page).group(1))


@platform_test
def test_the_spawn_page_lists_what_bob_may_use_and_shows_a_refusal(platform, users, admin_browser):
    page = admin_browser.get("/hub/spawn/bob")
    assert page.status_code == 200, page.text
    assert 'value="lab"' in page.text and 'value="physics"' not in page.text
    assert "Lab" in page.text and "everyone&#x27;s" in page.text and "1 core, 6 GiB, no GPU" in page.text
    assert 'name="lab--option--size"' in page.text and 'pattern="^[0-9]{2,5}$"' in page.text
    r = admin_browser.post(form_action(page.text), data={"profile": "lab", "lab--option--size": "huge"})
    assert r.status_code == 403 and "no choice" in r.text, r.text
    nothing_running(platform, "bob")


@platform_test
def test_the_spawn_form_starts_the_chosen_profile_with_its_option_and_free_value(platform, users, admin_browser):
    action = form_action(admin_browser.get("/hub/spawn/bob").text)
    r = admin_browser.post(action, data={"profile": "lab", "lab--option--size": "two", "lab--free--size": "600"})
    assert r.status_code in (302, 303), r.text
    state = wait_ready(platform, "bob")
    assert state["profile"]["slug"] == "lab" and state["profile"]["resources"]["cpu_limit"] == 2
    assert state["profile"]["idle_timeout_s"] == 600
    stop(platform, "bob", users["bob"])
    nothing_running(platform, "bob")


@platform_test
def test_a_quota_of_one_server_refuses_alices_second_server(platform, users, alice_on_physics):
    assert (server_model(platform, "alice") or {}).get("ready")  # her default server runs
    r = platform.api("PUT", API + "/quotas/users/alice", json={"servers": 1})
    assert r.status_code == 200, r.text
    try:
        message = refused(spawn(platform, "alice", users["alice"], {"profile": "physics"}, server="second"))
    finally:
        assert platform.api("DELETE", API + "/quotas/users/alice").status_code == 204
    assert "at most 1 server" in message and "1 is running" in message, message
    model = server_model(platform, "alice", "second") or {}
    assert not model.get("ready") and not model.get("pending"), model
    assert not ours(platform, "/dav/alice/second/")
    # without the quota, the same request starts it
    assert spawn(platform, "alice", users["alice"], {"profile": "physics"}, server="second").status_code in (201, 202)
    wait_ready(platform, "alice", "second")
    stop(platform, "alice", users["alice"], "second")
    assert not ours(platform, "/dav/alice/second/")


@platform_test
def test_a_profile_adaptor_named_like_one_of_the_users_is_refused_and_its_admission_released(platform, users,
                                                                                             alice_on_physics):
    clash = {"slug": "clash", "display_name": "Clash", "resources": {"cpu_limit": 1, "mem_limit": "6Gi", "gpus": 0},
             "adaptors": [{"name": "home", "type": "memory"}], "dask": {"max_workers": 1, "worker_memory": "1Gi"},
             "access": {"users": ["alice"]}}
    assert platform.api("POST", API + "/profiles", json=clash).status_code == 201
    message = refused(spawn(platform, "alice", users["alice"], {"profile": "clash"}, server="clash"), 409)
    assert "adds an adaptor named 'home'" in message, message
    model = server_model(platform, "alice", "clash") or {}
    assert not model.get("ready") and not model.get("pending"), model
    assert not ours(platform, "/dav/alice/clash/")
    from skerry.hub.stores.quotas import QuotaStore

    store = QuotaStore.for_data_dir(platform.data_dir)
    try:  # admitted before the adaptors were written, released when the start failed
        assert [(s["user"], s["server"]) for s in store.open_sessions()] == [("alice", "")]
    finally:
        store.dispose()

def _stored(spec: dict, version=1, disabled=False) -> dict:
    from skerry.hub.stores.profiles import validate

    return {**validate(spec).model_dump(mode="json"), "version": version, "disabled": disabled}


def test_selection_rules_without_a_platform(tmp_path):
    lab, phys = _stored(LAB), _stored(physics(tmp_path), version=3)
    # no enabled profile at all: platform defaults, whatever was asked
    assert select([], "bob", [], {"profile": "x"}) is None
    assert select([{**lab, "disabled": True}], "bob", [], {}) is None
    # none given: the first the user may use, by slug; its default choice applies
    assert select([lab, phys], "alice", ["physics"], {})["slug"] == "lab"
    assert select([lab, phys], "alice", ["physics"], None)["resources"]["cpu_limit"] == 1
    got = select([lab, phys], "alice", ["physics"], {"profile": "physics"})
    assert got["version"] == 3 and got["adaptors"][0]["path"] == str(tmp_path / "alice")
    assert set(got) == {"slug", "version", "display_name", "resources", "adaptors", "dask", "idle_timeout_s", "image"}
    # free value wins over the choice; a choice's overrides apply
    got = select([lab], "bob", [], {"profile": "lab", "options": {"size": "two"}, "free": {"size": "120"}})
    assert (got["resources"]["cpu_limit"], got["idle_timeout_s"]) == (2, 120)
    with pytest.raises(Refused, match="No server profile is open to bob"):
        select([phys], "bob", ["chemistry"], {})
    with pytest.raises(Refused, match="'physics' is disabled"):
        select([lab, {**phys, "disabled": True}], "alice", ["physics"], {"profile": "physics"})
    with pytest.raises(Refused, match="this profile has no such option"):
        select([lab], "bob", [], {"profile": "lab", "options": {"colour": "red"}})
    for bad in ("lab", {"profile": 3}, {"options": ["one"]}, {"free": {"size": 5}}, {"image": "x"}):
        with pytest.raises(BadOptions) as e:
            select([lab], "bob", [], bad)
        assert e.value.status == 400 and e.value.message.startswith("user_options")


def test_the_form_is_empty_without_profiles_and_reads_back_as_user_options(tmp_path):
    assert spawn_form.render([], any_enabled=False) == ""
    assert "No server profile is open to you" in spawn_form.render([], any_enabled=True)
    form = spawn_form.render([_stored(LAB), _stored(physics(tmp_path))], any_enabled=True)
    assert form.count('type="radio"') == 2 and 'value="lab" checked' in form
    assert '<option value="one" selected>1 core</option>' in form
    assert spawn_form.read({}) == {}
    assert spawn_form.read({"profile": ["lab"], "lab--option--size": ["two"], "lab--free--size": [""],
                            "physics--option--x": ["y"]}) == {"profile": "lab", "options": {"size": "two"}, "free": {}}
    assert spawn_form.read({"profile": ["lab"], "lab--free--size": [" 60 "]})["free"] == {"size": "60"}
