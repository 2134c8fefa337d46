"""One OS account per hub user on one machine: who runs a user's code, and how to become them.

    policy = AccountPolicy()                                  # skerry-{username}, /bin/bash
    account = ensure_account("alice", data_dir.user_home("alice"), policy)
    subprocess.Popen(cmd, preexec_fn=become(account), cwd=account.home,
                     env=clean_environment(account, {"JUPYTERHUB_API_TOKEN": token}))
    lock_account("alice", policy)     # the hub user was deleted: nothing of hers runs any more
    remove_account("alice", policy)   # later, by an admin: the home stays, to archive

Rules:
- a hub name maps to one account name: '.' becomes '-', then the policy's template
  (``skerry-{username}``, as TLJH uses ``jupyter-<name>``); a name that is not a valid
  Linux user name (at most 32 characters, ``[a-z_][a-z0-9_-]*``) is refused, never
  truncated or hashed, so an admin reads the account of a user off its name;
- skerry's accounts carry a marker in their comment (GECOS): ``skerry user <hub name>``.
  An account of that name without it, or with another hub name (``a.b`` and ``a-b`` map
  to one account) or another home (a second platform using the same template), is
  refused: skerry never changes nor shares an account that is not that user's own;
- accounts are made by ``useradd`` with their own group, no home created by it (the home
  is the data dir's ``users/<name>/``, owned by the account, mode 0700; what the platform
  left there before becomes the account's, except hard links), ``/bin/bash``
  (JupyterLab terminals start the account's shell; no password is set, so nobody logs in
  with it), uids and gids from the policy's range, above the humans' (login.defs
  ``UID_MAX``) and above their subordinate ids (``SUB_UID_MAX``, rootless containers),
  below 2**31;
- creating is idempotent and safe against two starts at once: skerry's account changes
  take turns on ``/run/skerry-accounts.lock`` (useradd alone is not: two creations of one
  name both succeed and one account is lost), and a creator finding the account made
  uses it. Anything half-made (the account made, its home not yet its own) is finished
  by the next call;
- a locked account (``lock_account``: expired, its processes killed) is refused by
  ``ensure_account`` until an admin unlocks or removes it: a new hub user of the same name
  never silently takes over an old one's account;
- a process becomes an account by ``setgroups([])`` (no supplementary groups: group
  memberships added in /etc/group are outside skerry's control, and a pod has none
  either), then gid, then uid (all of real, effective and saved), then the umask, and runs
  in ``clean_environment``: nothing of the platform's environment, only what the caller
  passes on purpose. Secrets travel in that environment (readable by that account and
  root only), never in arguments.
"""

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from collections.abc import Callable

from .errors import ConfigError, Conflict, SkerryError
from .process import processes_of

HUB_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
LINUX_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
LINUX_NAME_MAX = 32  # utmp's ut_user: longer names break who, last and ps
MARKER = "skerry user"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
IDENTITY_VARS = ("HOME", "USER", "LOGNAME", "SHELL")
# useradd, usermod, userdel live in /usr/sbin, often missing from a service's PATH
_TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CAP_SETGID, _CAP_SETUID = 6, 7
# useradd checks a name is free before it locks /etc/passwd, then replaces any entry of that
# name: two at once both "succeed" and one account is lost. skerry's own calls take turns here
# (/run: only root writes there, so no user can hold or plant this file)
LOCK_FILE = "/run/skerry-accounts.lock"


class AccountError(SkerryError):
    """An account could not be made, checked, locked or removed; the sentence says which and why."""

    code = "account_error"


class AccountClash(Conflict, AccountError):
    """An account of the mapped name exists and is not this hub user's skerry account."""

    code = "account_clash"


class AccountLocked(Conflict, AccountError):
    """The account was locked (its hub user deleted): an admin unlocks or removes it first."""

    code = "account_locked"


@dataclass(frozen=True)
class AccountPolicy:
    """How hub users map to accounts on this machine.

    ``template`` has one ``{username}`` field; ``uid_min``..``uid_max`` is where useradd
    picks uids and gids (the default: above humans and their subordinate ids, below 2**31).
    """

    template: str = "skerry-{username}"
    shell: str = "/bin/bash"
    uid_min: int = 700_000_000
    uid_max: int = 700_999_999

    def __post_init__(self):
        fields = [f for _, f, _, _ in Formatter().parse(self.template) if f is not None]
        if fields != ["username"]:
            raise ConfigError(f"account name template {self.template!r} must hold {{username}} "
                              f"exactly once and no other field")
        if not os.path.isabs(self.shell):
            raise ConfigError(f"account shell {self.shell!r} must be an absolute path")
        if not 1000 <= self.uid_min <= self.uid_max < 2**31 - 1:
            raise ConfigError(f"account uid range {self.uid_min}..{self.uid_max} must lie "
                              f"within 1000..{2**31 - 2}")


@dataclass(frozen=True)
class Account:
    """A hub user's OS account."""

    hub_name: str
    name: str
    uid: int
    gid: int
    home: Path
    shell: str


def account_name(hub_name: str, policy: AccountPolicy) -> str:
    """The account name of hub user ``hub_name``; ConfigError with a sentence if it has none."""
    if not isinstance(hub_name, str) or not HUB_NAME.match(hub_name):
        raise ConfigError(f"hub user name {hub_name!r} cannot map to an account: "
                          f"hub names are lower-case letters, digits, '.', '_' and '-'")
    name = policy.template.format(username=hub_name.replace(".", "-"))
    if not LINUX_NAME.match(name) or len(name) > LINUX_NAME_MAX:
        raise ConfigError(f"hub user {hub_name!r} cannot map to an account: {name!r} is not a "
                          f"valid Linux user name (at most {LINUX_NAME_MAX} characters of "
                          f"a-z, 0-9, '_' and '-', not starting with a digit or '-'); "
                          f"a shorter name template than {policy.template!r} may fit")
    return name


def _marker(hub_name: str) -> str:
    return f"{MARKER} {hub_name}"


def _run_tool(args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run useradd/usermod/userdel, retrying while another one holds the passwd lock."""
    if shutil.which(args[0], path=_TOOLS_PATH) is None:
        raise AccountError(f"cannot {what}: {args[0]} is not installed (package passwd/shadow)")
    env = {"PATH": _TOOLS_PATH, "LANG": "C", "LC_ALL": "C"}  # messages we can read
    deadline = time.monotonic() + 30
    while True:
        try:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise AccountError(f"cannot {what}: {args[0]} did not finish in 60 s") from None
        busy = "lock" in done.stderr and done.returncode in (1, 10)
        if not busy or time.monotonic() > deadline:
            return done
        time.sleep(0.05)  # another useradd/usermod holds /etc/passwd: wait our turn


@contextlib.contextmanager
def _serialized(what: str):
    """Hold the machine-wide lock of skerry's account changes (every process, every thread)."""
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise AccountError(f"cannot {what}: cannot open {LOCK_FILE}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _ours(entry: pwd.struct_passwd, hub_name: str, home: Path | None) -> Account:
    """The Account of ``entry`` if it is hub user ``hub_name``'s skerry account; else AccountClash."""
    name = entry.pw_name
    if not entry.pw_gecos.startswith(MARKER + " "):
        raise AccountClash(f"an account named {name} exists (uid {entry.pw_uid}) and was not "
                           f"made by skerry: hub user {hub_name!r} cannot use it; rename that "
                           f"account or choose another account name template")
    if entry.pw_gecos != _marker(hub_name):
        other = entry.pw_gecos[len(MARKER) + 1:]
        raise AccountClash(f"account {name} belongs to hub user {other!r}, so hub user "
                           f"{hub_name!r} (which maps to the same name) cannot have it; "
                           f"rename one of the two hub users")
    if home is not None and Path(entry.pw_dir) != home:
        raise AccountClash(f"account {name} of hub user {hub_name!r} has its home at "
                           f"{entry.pw_dir}, not {home}: another skerry platform on this "
                           f"machine uses the same account name template; give each its own")
    return Account(hub_name, name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), entry.pw_shell)


def find_account(hub_name: str, policy: AccountPolicy) -> Account | None:
    """Hub user ``hub_name``'s account, or None if it has none; AccountClash if the name is taken."""
    entry = _lookup(account_name(hub_name, policy))
    return None if entry is None else _ours(entry, hub_name, None)


def _create(name: str, hub_name: str, home: Path, policy: AccountPolicy) -> None:
    rng = [f"UID_MIN={policy.uid_min}", f"UID_MAX={policy.uid_max}",
           f"GID_MIN={policy.uid_min}", f"GID_MAX={policy.uid_max}",
           "SUB_UID_COUNT=0", "SUB_GID_COUNT=0"]  # no subordinate ids: nobody nests containers
    args = ["useradd", "--comment", _marker(hub_name), "--home-dir", str(home),
            "--no-create-home", "--shell", policy.shell, "--user-group",
            "--no-log-init"]  # no lastlog/faillog entry: at uid 7e8 they would be sparse GBs
    for k in rng:
        args += ["--key", k]
    done = _run_tool(args + [name], f"create account {name} for hub user {hub_name!r}")
    if done.returncode == 9 and _lookup(name) is not None:
        return  # made meanwhile by someone else (an admin?): the caller checks the marker
    if done.returncode != 0:
        raise AccountError(f"cannot create account {name} for hub user {hub_name!r}: "
                           f"useradd said {done.stderr.strip() or f'exit {done.returncode}'}")


def is_locked(name: str) -> bool:
    """True if account ``name``'s expiry date (/etc/shadow) has passed, as ``lock_account`` sets.

    (Its password field says nothing: skerry's accounts never have a password.)
    """
    try:
        with open("/etc/shadow") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name and len(fields) > 7 and fields[7]:
                    return int(fields[7]) <= time.time() // 86400
    except (OSError, ValueError):
        return False  # unreadable (not root): only useradd's refusal will tell
    return False


def _give_home(account: Account) -> None:
    """Make ``account.home`` a folder of the account, mode 0700; its contents too the first time."""
    try:
        os.mkdir(account.home, 0o700)
    except FileExistsError:
        pass
    # O_NOFOLLOW: the home itself is never a link pointing elsewhere
    fd = os.open(account.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (account.uid, account.gid):
            _give_contents(account)  # first time (or a repair): what the platform wrote is theirs now
            os.fchown(fd, account.uid, account.gid)  # last: a failure above is redone next call
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _give_contents(account: Account) -> None:
    """Give the account what the platform left in its home (files of other uids stay theirs)."""
    me = os.geteuid()
    for top, dirs, files in os.walk(account.home):  # os.walk never follows links to folders
        for entry in dirs + files:
            path = os.path.join(top, entry)
            st = os.lstat(path)
            # a hard link may be a platform file planted here: never hand those over
            hardlink = not os.path.isdir(path) and st.st_nlink > 1
            if st.st_uid == me and not hardlink:
                os.lchown(path, account.uid, account.gid)


def ensure_account(hub_name: str, home: str | os.PathLike, policy: AccountPolicy) -> Account:
    """Hub user ``hub_name``'s account, made on first use with ``home`` its own (mode 0700).

    ``home`` is an absolute path whose parent exists (the data dir's ``users/``).
    AccountClash: the name is taken by another account; AccountLocked: its hub user was
    deleted; AccountError: useradd or the home failed (the next call finishes the job).
    """
    name = account_name(hub_name, policy)
    home = Path(home)
    if not home.is_absolute():
        raise ConfigError(f"home of hub user {hub_name!r} must be an absolute path, not {home}")
    entry = _lookup(name)
    if entry is None:
        with _serialized(f"create account {name}"):
            entry = _lookup(name)  # a concurrent start may have made it while we waited
            if entry is None:
                _create(name, hub_name, home, policy)
                entry = _lookup(name)
        if entry is None:
            raise AccountError(f"useradd made account {name} but it cannot be looked up "
                               f"(name service cache?)")
    account = _ours(entry, hub_name, home)
    if is_locked(name):
        raise AccountLocked(f"account {name} of hub user {hub_name!r} is locked (the hub user "
                            f"was deleted): an admin unlocks it (unlock_account) or removes "
                            f"it (remove_account) before this user can start")
    try:
        _give_home(account)
    except OSError as e:
        raise AccountError(f"account {name} exists but its home {home} could not be made its "
                           f"own: {e.strerror or e}; the next start tries again") from e
    return account


def kill_processes(account: Account, rounds: int = 5) -> list[int]:
    """SIGKILL every process of the account; the pids still alive afterwards (none, normally).

    A child that has become the account sends kill(-1): the kernel delivers it to every
    process of that uid at once, so none escapes by forking in between.
    """
    for _ in range(rounds):
        if not processes_of(account.uid):
            return []
        pid = os.fork()
        if pid == 0:  # the child: only system calls, then out
            try:
                _switch(account, 0o077)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.05)  # let the killed ones be reaped by their parents
    return processes_of(account.uid)


def lock_account(hub_name: str, policy: AccountPolicy) -> Account | None:
    """The step for a deleted hub user: expire the account and kill its processes.

    The account and home stay (files, uid); ``ensure_account`` refuses it from now on.
    None if the hub user had no account.
    """
    account = find_account(hub_name, policy)
    if account is None:
        return None
    with _serialized(f"lock account {account.name}"):
        done = _run_tool(["usermod", "--lock", "--expiredate", "1", account.name],
                         f"lock account {account.name}")
    if done.returncode != 0:
        raise AccountError(f"cannot lock account {account.name}: usermod said {done.stderr.strip()}")
    left = kill_processes(account)
    if left:
        raise AccountError(f"account {account.name} is locked but processes {left} still run")
    return account


def unlock_account(hub_name: str, policy: AccountPolicy) -> Account | None:
    """Undo ``lock_account`` (an admin's decision): the account's next start works again."""
    account = find_account(hub_name, policy)
    if account is None:
        return None
    # no --unlock: the account has no password, and unlocking one would make it empty
    with _serialized(f"unlock account {account.name}"):
        done = _run_tool(["usermod", "--expiredate", "", account.name],
                         f"unlock account {account.name}")
    if done.returncode != 0:
        raise AccountError(f"cannot unlock account {account.name}: usermod said {done.stderr.strip()}")
    return account


def remove_account(hub_name: str, policy: AccountPolicy) -> Path | None:
    """Delete hub user ``hub_name``'s account (killing its processes first) and its group.

    The home is left where it is, still owned by the now unnamed uid, for the admin to
    archive or delete. Returns that home, or None if there was no account.
    """
    account = find_account(hub_name, policy)
    if account is None:
        return None
    left = kill_processes(account)
    if left:
        raise AccountError(f"cannot remove account {account.name}: processes {left} still run")
    with _serialized(f"remove account {account.name}"):
        done = _run_tool(["userdel", account.name], f"remove account {account.name}")
    if done.returncode != 0:
        raise AccountError(f"cannot remove account {account.name}: userdel said {done.stderr.strip()}")
    return account.home


def share_folder(folder: str | os.PathLike, account: Account) -> Path:
    """Make ``folder`` the platform's folder for ``account``'s processes: owned by this
    process's uid, group the account's own, mode 2750 (the account reads, never writes; files
    made in it later take that group), made if missing; what it holds gets that group too.

    A file in it is readable by the account once its mode gives the group read (0640); a
    file that holds the account's secrets is given to the account instead (``give``).
    """
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, os.geteuid(), account.gid)
        os.fchmod(fd, 0o2750)
    finally:
        os.close(fd)
    for entry in os.scandir(folder):
        if entry.stat(follow_symlinks=False).st_gid != account.gid:
            os.lchown(entry.path, -1, account.gid)
    return folder


def give(path: str | os.PathLike, account: Account) -> None:
    """Make the file at ``path`` the account's own (its mode stays as it is, e.g. 0600)."""
    os.lchown(path, account.uid, account.gid)


def _switch(account: Account, umask: int) -> None:
    os.setgroups([])  # before giving up root: after setuid it is not allowed
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)  # last: it drops the right to do the above
    os.umask(umask)


def become(account: Account, umask: int = 0o077,
           then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child the account: no supplementary groups, its gid
    and uid (real, effective, saved), ``umask``; then calls ``then`` if given.

    Pass ``die_with_parent`` as ``then``, never before: the kernel clears the parent-death
    signal when the uid changes. ``preexec_fn`` is unsafe in a parent with threads; there use
    ``switch_kwargs`` (the same switch done by subprocess itself).
    """
    def preexec():
        _switch(account, umask)
        if then is not None:
            then()
    return preexec


def switch_kwargs(account: Account, umask: int = 0o077) -> dict:
    """``subprocess.Popen`` keyword arguments doing what ``become`` does, without a preexec_fn."""
    return {"user": account.uid, "group": account.gid, "extra_groups": [], "umask": umask}


def clean_environment(account: Account, keep: dict[str, str] | None = None) -> dict[str, str]:
    """A fresh environment for the account's processes: HOME, USER, LOGNAME, SHELL, PATH,
    LANG, plus ``keep`` (the caller's choice: the user's own tokens, never the platform's).

    ``keep`` may set PATH and LANG, not the account's identity (HOME, USER, LOGNAME, SHELL).
    """
    env = {"HOME": str(account.home), "USER": account.name, "LOGNAME": account.name,
           "SHELL": account.shell, "PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    for key, value in (keep or {}).items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"environment variable name {key!r} is not valid")
        if key in IDENTITY_VARS:
            raise ConfigError(f"environment variable {key} is the account's own ({env[key]}) "
                              f"and cannot be set by the caller")
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"environment variable {key} must be a string without NUL bytes")
        env[key] = value
    return env


def _capabilities() -> int | None:
    """This process's effective capabilities (Linux), or None where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def _uid_mapped(lo: int, hi: int) -> bool:
    """True if uids lo..hi exist in this user namespace (/proc/self/uid_map covers them)."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return True  # no user namespaces: every uid exists
    return any(inside <= lo and hi < inside + count for inside, _, count in ranges)


def can_switch_users(policy: AccountPolicy | None = None) -> str | None:
    """None if this process may run processes as other accounts, else the sentence why not.

    That needs CAP_SETUID and CAP_SETGID (root has them); making accounts needs root too.
    With ``policy``, its uid range must also exist in this user namespace (containers).
    """
    me = pwd.getpwuid(os.geteuid()).pw_name if _has_pw(os.geteuid()) else str(os.geteuid())
    caps = _capabilities()
    if caps is None:
        allowed = os.geteuid() == 0
    else:
        allowed = bool(caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1)
    if not allowed:
        return (f"skerry runs as {me} without the privilege to switch users (root, or "
                f"CAP_SETUID and CAP_SETGID): every user's code would run as {me}, so only "
                f"{me} may log in (single-user mode); run skerry up as root to give each hub "
                f"user an account of their own")
    if policy is not None and not _uid_mapped(policy.uid_min, policy.uid_max):
        return (f"uids {policy.uid_min}..{policy.uid_max} do not exist in this user namespace "
                f"(see /proc/self/uid_map): choose an account uid range inside it; until then "
                f"only {me} may log in (single-user mode)")
    return None


def _has_pw(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _blocking(account: Account, paths: list[str]) -> str | None:
    """The first folder on the way to one of ``paths`` that the account cannot enter, or None.

    Asked of the kernel by a shell running as the account, so ACLs count too.
    """
    folders = []
    for p in paths:
        for parent in reversed(Path(p).parents):
            if str(parent) not in folders:
                folders.append(str(parent))
    script = 'for d do [ -x "$d" ] || { printf %s "$d"; exit 0; }; done'
    done = subprocess.run(["/bin/sh", "-c", script, "sh", *folders], capture_output=True,
                          text=True, env=clean_environment(account), cwd="/",
                          timeout=10, **switch_kwargs(account))
    return done.stdout or None


def _describe(folder: str) -> str:
    st = os.stat(folder)
    owner = pwd.getpwuid(st.st_uid).pw_name if _has_pw(st.st_uid) else str(st.st_uid)
    return f"{folder} (mode {st.st_mode & 0o7777:04o}, owner {owner})"


def interpreter_reachable(account: Account, command: list[str] | None = None,
                          paths: list[str] | None = None, timeout: float = 20.0) -> str | None:
    """None if the account can run ``command`` (exit 0), else a sentence naming what blocks it.

    The default command runs this Python (``sys.executable``) and imports skerry;
    ``paths`` are the files it needs (default: the program, as given and resolved, and, for
    the default command, skerry's package folder), whose folders are checked one by one
    when the command fails.
    """
    if command is None:
        command = [sys.executable, "-c", "import skerry"]  # as given: a venv's python, not its target
        if paths is None:
            paths = [sys.executable, str(Path(__file__).resolve().parent / "__init__.py")]
    paths = [command[0], os.path.realpath(command[0]), *(paths or [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd="/",
                              env=clean_environment(account), timeout=timeout,
                              **switch_kwargs(account))
        if done.returncode == 0:
            return None
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        why = f"it did not finish in {timeout:g} s"
    except OSError as e:
        why = e.strerror or str(e)
    folder = _blocking(account, paths)
    if folder is None:
        return f"account {account.name} cannot run {command[0]} ({why})"
    return (f"account {account.name} cannot run {command[0]}: folder {_describe(folder)} "
            f"is not open to it ({why}); install Python and skerry where every account can "
            f"reach them (e.g. a virtual environment under /opt), or let others through "
            f"that folder (chmod o+x {folder})")
