"""One identity per user: alice's code runs as her own OS account and reaches nothing of
bob's or of the platform's (issue "One identity per user", must-shows 1 and 2, from her
kernel and her terminal).

Nothing is mocked: a real ``skerry up`` as root, real accounts made at the first spawn,
alice's real Jupyter server, a "skerry" kernel and a JupyterLab terminal driven through the
hub's proxy as JupyterLab drives them. Every refusal asserted here is the kernel's
(EACCES, ENOENT, EPERM), not an HTTP one.
"""

import json
import os
import stat
import time
import uuid

import httpx
import pytest
import websocket

from helpers import open_for_accounts
from skerry.errors import SetupError
from skerry.identity import decide
from skerry.kernels.remote import RemoteKernel
from skerry.process import group_members, processes_of


POOLS = {"cpu": None, "gpu": None}  # no Dask here: jobs and clients have tests of their own

# what alice's code tries, as (label, python expression of a zero-argument call)
PROBE = r'''
import errno, json, os, signal
def attempt(call):
    try:
        call()
        return "allowed"
    except OSError as e:
        return errno.errorcode[e.errno]
targets = json.loads(TARGETS)
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "umask": os.umask(0o077),
       "home": os.environ.get("HOME"), "env_has_admin_token": ADMIN in "".join(os.environ.values())}
for label, path in targets["read"].items():
    out["read " + label] = attempt(lambda: open(path, "rb").read(1))
for label, path in targets["list"].items():
    out["list " + label] = attempt(lambda: os.listdir(path))
for label, path in targets["write"].items():
    out["write " + label] = attempt(lambda: open(path, "wb").write(b"alice was here"))
for label, pid in targets["signal"].items():
    out["signal " + label] = attempt(lambda: os.kill(pid, signal.SIGTERM))
print(json.dumps(out))
'''


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
    assert found["home"] == str(platform.data_dir / "users" / "alice")
    assert found["env_has_admin_token"] is False
    refusals = {k: v for k, v in found.items() if k.split(" ")[0] in ("read", "list", "write", "signal")}
    allowed = {k: v for k, v in refusals.items() if v not in ("EACCES", "ENOENT", "EPERM")}
    assert not allowed, allowed
    assert len(refusals) >= 20, refusals


@pytest.mark.platform
def test_alices_kernel_runs_as_her_account_and_reaches_nothing_else(platform, alice, bob, bob_file):
    code = PROBE.replace("TARGETS", repr(json.dumps(targets(platform)))).replace("ADMIN", repr(platform.admin_token))
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
