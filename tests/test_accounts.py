"""skerry.accounts on real OS accounts (the suite runs as root): made, refused, switched to, locked.

Every account here uses a test-only template (``skt<random>-{username}``) and is removed at
the end, even when a test fails.
"""

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from skerry.accounts import (
    AccountClash, AccountLocked, AccountPolicy, account_name, become, can_switch_users,
    clean_environment, ensure_account, find_account, interpreter_reachable, lock_account,
    remove_account, is_locked, switch_kwargs, unlock_account,
)
from skerry.errors import ConfigError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making OS accounts needs root")

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


@pytest.fixture
def policy():
    """A test-only template; every account it names is removed afterwards."""
    p = AccountPolicy(template=f"skt{secrets.token_hex(3)}-{{username}}")
    yield p
    prefix = p.template.split("{")[0]
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(prefix):
            subprocess.run(["pkill", "-KILL", "-u", str(entry.pw_uid)], env=ENV)
            time.sleep(0.1)
            subprocess.run(["userdel", entry.pw_name], env=ENV, capture_output=True)
    for entry in pwd.getpwall():
        assert not entry.pw_name.startswith(prefix), f"{entry.pw_name} was left behind"


@pytest.fixture
def users_dir():
    """A ``users/`` folder every account can reach (pytest's tmp_path is under a 0700 folder)."""
    base = Path(tempfile.mkdtemp(prefix="skerry-accounts-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def status(account, **popen):
    """What a child started as ``account`` sees: its /proc status lines and its environment."""
    done = subprocess.run(["/bin/sh", "-c", "cat /proc/self/status; echo ---; /usr/bin/env"],
                          env=clean_environment(account, {"SKERRY_TOKEN": "own"}), cwd="/",
                          capture_output=True, text=True, check=True, **popen)
    proc, env = done.stdout.split("---\n")
    fields = dict(line.split(":", 1) for line in proc.splitlines() if ":" in line)
    return {k: v.split() for k, v in fields.items()}, dict(
        line.split("=", 1) for line in env.splitlines())


def as_account(account, script, *args):
    """Run shell ``script`` as the account; (exit status, stderr)."""
    done = subprocess.run(["/bin/sh", "-c", script, "sh", *map(str, args)], cwd="/",
                          env=clean_environment(account), preexec_fn=become(account),
                          capture_output=True, text=True)
    return done.returncode, done.stderr


def test_names_map_or_are_refused_with_a_sentence():
    p = AccountPolicy()
    assert account_name("alice", p) == "skerry-alice"
    assert account_name("a.b", p) == "skerry-a-b"
    with pytest.raises(ConfigError, match="'Alice' cannot map"):
        account_name("Alice", p)
    with pytest.raises(ConfigError, match="'x{26}' cannot map .* 'skerry-x{26}' is not a valid"):
        account_name("x" * 26, p)
    with pytest.raises(ConfigError, match="'1st' cannot map .* '1st' is not a valid"):
        account_name("1st", AccountPolicy(template="{username}"))
    with pytest.raises(ConfigError, match="exactly once"):
        AccountPolicy(template="skerry-{user}")
    with pytest.raises(ConfigError, match="uid range"):
        AccountPolicy(uid_min=10, uid_max=20)


def test_account_made_once_home_its_own(policy, users_dir):
    home = users_dir / "alice"
    home.mkdir()
    (home / "notes.txt").write_text("written by the platform before accounts existed")
    t = time.monotonic()
    a = ensure_account("alice", home, policy)
    made = time.monotonic() - t
    t = time.monotonic()
    again = ensure_account("alice", home, policy)
    found = time.monotonic() - t
    print(f"ensure_account: made in {made * 1000:.0f} ms, found in {found * 1000:.1f} ms")
    assert again == a and a.name == account_name("alice", policy)
    assert policy.uid_min <= a.uid <= policy.uid_max and policy.uid_min <= a.gid <= policy.uid_max
    entry = pwd.getpwnam(a.name)
    assert entry.pw_gecos == "skerry user alice" and entry.pw_shell == "/bin/bash"
    assert entry.pw_dir == str(home)
    st = home.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (a.uid, a.gid, 0o700)
    assert (home / "notes.txt").stat().st_uid == a.uid  # what the platform left is hers now
    assert find_account("alice", policy) == a


def test_two_starts_at_once_make_one_account(policy, users_dir):
    got, errors = [], []

    def start(name):
        try:
            got.append(ensure_account(name, users_dir / name, policy))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,)) for n in ["bob"] * 4 + ["carol", "dan"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({a.uid for a in got if a.hub_name == "bob"}) == 1
    assert len({a.uid for a in got}) == 3


def test_half_made_account_is_finished_by_the_next_call(policy, users_dir):
    a = ensure_account("erin", users_dir / "erin", policy)
    os.chown(a.home, 0, 0)  # as if the process died between useradd and the chown
    os.chmod(a.home, 0o755)
    assert ensure_account("erin", users_dir / "erin", policy) == a
    st = a.home.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (a.uid, 0o700)


def test_an_account_not_made_by_skerry_is_refused(policy, users_dir):
    name = account_name("frank", policy)
    subprocess.run(["useradd", "--no-create-home", name], env=ENV, check=True)
    before = pwd.getpwnam(name)
    with pytest.raises(AccountClash, match=f"account named {name} exists .* not made by skerry"):
        ensure_account("frank", users_dir / "frank", policy)
    assert pwd.getpwnam(name) == before and not (users_dir / "frank").exists()


def test_two_hub_users_of_one_account_name_never_share_it(policy, users_dir):
    ensure_account("g.h", users_dir / "g.h", policy)
    with pytest.raises(AccountClash, match="belongs to hub user 'g.h', so hub user 'g-h'"):
        ensure_account("g-h", users_dir / "g-h", policy)
    with pytest.raises(AccountClash, match="another skerry platform"):
        ensure_account("g.h", users_dir / "elsewhere", policy)


@pytest.mark.parametrize("how", ["become", "switch_kwargs"])
def test_a_child_becomes_the_account(policy, users_dir, how):
    a = ensure_account("ivy", users_dir / "ivy", policy)
    popen = {"preexec_fn": become(a)} if how == "become" else switch_kwargs(a)
    fields, env = status(a, **popen)
    assert fields["Uid"] == [str(a.uid)] * 4 and fields["Gid"] == [str(a.gid)] * 4
    assert fields["Groups"] == []  # root's own groups are not inherited
    assert fields["Umask"] == ["0077"]
    assert env == {"HOME": str(a.home), "USER": a.name, "LOGNAME": a.name, "SHELL": "/bin/bash",
                   "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                   "SKERRY_TOKEN": "own", "PWD": "/"}  # PWD: set by sh itself


def test_clean_environment_refuses_identity_and_bad_values(policy, users_dir):
    a = ensure_account("jo", users_dir / "jo", policy)
    assert clean_environment(a, {"PATH": "/opt/x/bin"})["PATH"] == "/opt/x/bin"
    with pytest.raises(ConfigError, match="HOME is the account's own"):
        clean_environment(a, {"HOME": "/root"})
    with pytest.raises(ConfigError, match="name 'A=B' is not valid"):
        clean_environment(a, {"A=B": "x"})
    with pytest.raises(ConfigError, match="without NUL"):
        clean_environment(a, {"A": "x\0y"})


def test_the_account_reaches_nothing_of_others(policy, users_dir):
    alice = ensure_account("alice", users_dir / "alice", policy)
    bob = ensure_account("bob", users_dir / "bob", policy)
    (bob.home / "secret").write_text("bob's")
    secret = users_dir / "platform-secret"
    secret.write_text("admin token")
    os.chmod(secret, 0o600)
    rc, err = as_account(alice, 'cat "$1"', secret)
    assert rc != 0 and "Permission denied" in err  # EACCES
    rc, err = as_account(alice, 'ls "$1"', bob.home)
    assert rc != 0 and "Permission denied" in err
    rc, err = as_account(alice, 'cat "$1"/secret', bob.home)
    assert rc != 0 and "Permission denied" in err
    rc, err = as_account(alice, 'echo x > "$1"/mine', bob.home)
    assert rc != 0 and "Permission denied" in err
    rc, _ = as_account(alice, 'echo x > "$1"/mine && cat "$1"/mine', alice.home)
    assert rc == 0  # her own home is hers
    assert (alice.home / "mine").stat().st_mode & 0o777 == 0o600  # umask 077
    sleeper = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=become(bob), env=clean_environment(bob))
    try:
        rc, err = as_account(alice, 'kill -0 "$1"', sleeper.pid)
        assert rc != 0 and "not permitted" in err  # EPERM
        rc, err = as_account(alice, 'cat /proc/"$1"/environ', sleeper.pid)
        assert rc != 0 and "Permission denied" in err
        rc, _ = as_account(bob, 'kill -0 "$1"', sleeper.pid)
        assert rc == 0  # bob may signal his own
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_expires_the_account_and_kills_its_processes(policy, users_dir):
    a = ensure_account("kim", users_dir / "kim", policy)
    assert not is_locked(a.name)
    sleeper = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & sleep 30"], preexec_fn=become(a),
                               env=clean_environment(a), start_new_session=True)
    assert lock_account("kim", policy) == a
    assert sleeper.wait(timeout=5) == -9
    assert is_locked(a.name)
    assert subprocess.run(["passwd", "-S", a.name], env=ENV, capture_output=True,
                          text=True).stdout.split()[1] == "L"
    with pytest.raises(AccountLocked, match=f"account {a.name} of hub user 'kim' is locked"):
        ensure_account("kim", users_dir / "kim", policy)
    unlock_account("kim", policy)
    assert ensure_account("kim", users_dir / "kim", policy) == a
    assert remove_account("kim", policy) == a.home
    assert find_account("kim", policy) is None and a.home.is_dir()  # the home is left to archive
    assert remove_account("kim", policy) is None and lock_account("kim", policy) is None
    with pytest.raises(KeyError):
        pwd.getpwnam(a.name)  # nor its group's leftovers: a new account of the name can be made
    assert ensure_account("kim", users_dir / "kim", policy).name == a.name


def test_root_can_switch_users():
    assert can_switch_users() is None
    assert can_switch_users(AccountPolicy()) is None


def test_interpreter_reachable_names_the_folder_that_blocks_it(policy, users_dir):
    a = ensure_account("lee", users_dir / "lee", policy)
    closed = users_dir / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    (closed / "sh").symlink_to("/bin/sh")
    why = interpreter_reachable(a, [str(closed / "sh"), "-c", "true"])
    assert why is not None
    assert f"account {a.name} cannot run {closed}/sh: folder {closed} (mode 0700, owner root)" in why
    assert interpreter_reachable(a, ["/bin/sh", "-c", "true"]) is None
    why = interpreter_reachable(a, ["/bin/sh", "-c", "echo broken >&2; exit 3"])
    assert why is not None and "(broken)" in why
    if os.path.exists("/usr/bin/python3"):
        assert interpreter_reachable(a, ["/usr/bin/python3", "-c", "pass"]) is None
