"""Helpers for tests of the real platform: ``skerry up`` in a subprocess, real JupyterHub,
real configurable-http-proxy, real user servers and WebDAV processes. Nothing mocked."""

import contextlib
import hashlib
import json
import os
import pwd
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from skerry.hub.userserver.davfront import find_nginx
from skerry.process import descendants  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parent.parent


# the processes of one running micro-infrastructure: the launcher, the Jupyter server, the
# WebDAV endpoint's two (granian's main process and the worker it forks), and where nginx is
# installed with its Lua module, the endpoint's front (hub.userserver.davfront)
ENDPOINT_ALONE = 4
MICRO_PROCESSES = ENDPOINT_ALONE + (find_nginx() is not None)


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range (``skerry.ports.quiet_port``): one
    another test worker's sockets cannot be handed meanwhile."""
    from skerry.ports import quiet_port

    return quiet_port()


def pids_of(pattern: str, environ: bool = False) -> set[int]:
    """Live pids whose command line (or, with ``environ``, environment) contains ``pattern``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/cmdline").read_bytes()
                if environ:
                    text += Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if pattern.encode() in text.replace(b"\0", b" ") and state[state.rindex(b")") + 2:][:1] != b"Z":
                found.add(int(entry))
    return found


def proxies_of(data_dir: Path) -> set[int]:
    """The pids of the proxies (HAProxy, configurable-http-proxy or Traefik) a platform on ``data_dir`` runs."""
    return (pids_of("haproxy -db -f") | pids_of("configurable-http-proxy") | pids_of("traefik --configfile")) & \
        pids_of(str(data_dir), environ=True)


def open_for_accounts(path: Path) -> Path:
    """Let every account pass through the folders above ``path`` (o+x, never o+r), as a
    data dir or a venv outside the test's private temporary folders needs: pytest makes
    them 0700, and the users' accounts must reach their homes and this Python."""
    for folder in reversed(Path(path).resolve().parents):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            os.chmod(folder, (mode & 0o7777) | 0o001)
    return path


def run_planted_pytest(folder: Path, plugin: str, env: dict[str, str] | None = None,
                       **kwargs) -> subprocess.CompletedProcess:
    """pytest on ``folder/test_planted.py`` with ``plugin`` (a module of tests/) loaded, as
    a run of its own: none of this run's options (``PYTEST_ADDOPTS``: a developer's ``-n 4``
    would start workers there) and its temporary folders inside ``folder``. Why the last:
    a pytest run choosing its own sets the shared ``/tmp/pytest-of-<user>`` to mode 0700,
    and every platform's accounts pass through that folder to their homes."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = str(Path(__file__).parent)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", plugin, "-p", "no:cacheprovider", "-q", "-rA",
                           f"--basetemp={folder / 'pytest-tmp'}", "test_planted.py"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


TEMPLATES: set[str] = set()  # the account templates of the platforms this session started


def remove_accounts(template: str) -> None:
    """Remove the OS accounts a platform with account ``template`` made (and their processes)."""
    from skerry.accounts import MARKER, AccountPolicy, remove_account

    policy = AccountPolicy(template=template)
    prefix = template.split("{username}")[0]
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(prefix) and entry.pw_gecos.startswith(MARKER + " "):
            remove_account(entry.pw_gecos[len(MARKER) + 1:], policy)


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def progress_events(platform, name: str, timeout: float = 120) -> list[dict]:
    """The progress events of ``name``'s pending start (the spawn page's), read to the end
    (ready or failed)."""
    events = []
    with httpx.stream("GET", f"{platform.url}/hub/api/users/{name}/server/progress",
                      headers={"Authorization": f"token {platform.admin_token}"}, verify=platform.verify,
                      timeout=httpx.Timeout(10, read=timeout)) as r:
        assert r.status_code == 200, f"progress of {name}: {r.status_code}"
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                events.append(event)
                if event.get("ready") or event.get("failed"):
                    break
    return events



def ok(r, status=200):
    """The JSON of response ``r``, which must have ``status`` (else its text is the failure)."""
    assert r.status_code == status, r.text
    return r.json()

class Platform:
    """One ``skerry up`` process on a data dir, with REST helpers as the admin; those of
    this process started and not stopped are in ``Platform.running`` (``platformlogs``)."""

    running: list["Platform"] = []

    def __init__(self, data_dir: Path, port: int | None = None, command: list[str] | None = None,
                 cwd: Path | None = None, env: dict | None = None, tls: tuple[Path, Path] | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        # with tls (certificate, key): HTTPS, and the REST helpers trust that certificate
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify = ssl.create_default_context(cafile=str(tls[0])) if tls else True
        self.command = (command or [sys.executable, "-m", "skerry", "up"]) + \
            (["--ssl-cert", str(tls[0]), "--ssl-key", str(tls[1])] if tls else [])
        self.cwd = cwd
        self.env = env
        self.proc = None
        self.output = b""
        # accounts of this data dir only (every test platform has its own alice, with her own
        # home), the same for each platform started on it; removed when the session ends
        digest = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:6]
        self.account_template = f"t{digest}-{{username}}"
        TEMPLATES.add(self.account_template)

    def account(self, name: str) -> pwd.struct_passwd:
        """The OS account hub user ``name``'s servers run as."""
        from skerry.accounts import AccountPolicy, account_name

        return pwd.getpwnam(account_name(name, AccountPolicy(template=self.account_template)))

    def give(self, path, name: str) -> None:
        """Make ``path`` (a file or folder, and what it holds) hub user ``name``'s own, as the
        files a user makes are (their account is made if it is not there yet): what a test
        writes into a home as root is then what the user's jobs and servers can read."""
        from skerry.accounts import AccountPolicy, ensure_account

        account = ensure_account(name, self.data_dir / "users" / name, AccountPolicy(template=self.account_template))
        path = Path(path)
        for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
            os.lchown(item, account.uid, account.gid)

    def start(self, timeout=120):
        open_for_accounts(self.data_dir)
        argv = self.command + ["--data-dir", str(self.data_dir), "--port", str(self.port),
                               "--account-template", self.account_template]
        self.proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        Platform.running.append(self)
        lines = []
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), True)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if b"skerry is running at" in line:
                self.output = b"".join(lines)
                return self
        self.output = b"".join(lines)
        log = (self.data_dir / "run" / "hub.log")
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise AssertionError(f"skerry up did not start:\n{self.output.decode()}\n{tail}")

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "secrets" / "admin-api-token").read_text().strip()

    def api(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        headers.setdefault("Authorization", f"token {token or self.admin_token}")
        return httpx.request(method, self.url + path, headers=headers, timeout=60, verify=self.verify, **kwargs)

    def create_user(self, name):
        r = self.api("POST", f"/hub/api/users/{name}")
        assert r.status_code in (201, 409), r.text
        return name

    def user_token(self, name) -> str:
        r = self.api("POST", f"/hub/api/users/{name}/tokens", json={"note": "test"})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def server(self, name) -> dict | None:
        return self.api("GET", f"/hub/api/users/{name}").json()["servers"].get("")

    def start_server(self, name):
        r = self.api("POST", f"/hub/api/users/{name}/server")
        assert r.status_code in (201, 202, 400), r.text
        wait_for(lambda: (self.server(name) or {}).get("ready"), 60, what=f"{name}'s server")
        return self.server(name)

    def stop_server(self, name):
        r = self.api("DELETE", f"/hub/api/users/{name}/server")
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: self.server(name) is None, 60, what=f"{name}'s server to stop")

    def group_of(self, name) -> int:
        """Process group id (the micro-infrastructure process) of ``name``'s running server."""
        state = self.api("GET", f"/hub/api/users/{name}?include_stopped_servers",
                         ).json()["servers"][""].get("state") or {}
        return state["pid"]

    def stop(self, timeout=60):
        if self in Platform.running:
            Platform.running.remove(self)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc and self.proc.stdout and not self.proc.stdout.closed:
            self.output += self.proc.stdout.read() or b""
            self.proc.stdout.close()


@contextlib.contextmanager
def bench_platform(folder: Path, pools: dict | None = None):
    """``skerry up`` as root on ``folder/data`` (made here, the folders above opened to
    every account, ``pools.json`` from ``pools``), as the benches run it; stopped, and the
    accounts it made removed, when the block ends."""
    data = open_for_accounts(Path(folder)) / "data"
    data.mkdir()
    if pools is not None:
        (data / "pools.json").write_text(json.dumps(pools))
    platform = Platform(data).start()
    try:
        yield platform
    finally:
        platform.stop()
        remove_accounts(platform.account_template)


def refused(r, status: int, code: str | None = None) -> str:
    """The sentence of a skerry API refusal: ``status``, a body of exactly ``error`` (``code``,
    if given) and ``message`` (a sentence)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"].endswith((".", ")")), body
    if code:
        assert body["error"] == code, body
    return body["message"]


def files_holding(root: Path, *secrets: str) -> list[str]:
    """The regular files under ``root`` (logs included) that hold any of ``secrets``: what a
    test asserts is empty. Sockets, pipes and files removed while it reads are passed over."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    content = f.read()
            except FileNotFoundError:
                continue
            if any(secret.encode() in content for secret in secrets):
                found.append(path)
    return found


def kill_leftovers(data_dir: Path):
    """Last-resort cleanup so that one failing test cannot leave servers for the next."""
    for pid in pids_of(str(data_dir), environ=True) - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass




@contextlib.contextmanager
def local_home(root: Path):
    """``$SKERRY_ADAPTORS`` names a federation whose ``home`` is the folder ``root/home``
    (set before Dask workers start, they see the same adaptors); yields that folder."""
    from skerry.adaptors.config import write_config
    from skerry.adaptors.federation import SkerryFileSystem

    (root / "home").mkdir()
    write_config(str(root / "adaptors.json"), [{"name": "home", "type": "local", "path": str(root / "home")}])
    old = os.environ.get("SKERRY_ADAPTORS")
    os.environ["SKERRY_ADAPTORS"] = str(root / "adaptors.json")
    SkerryFileSystem.clear_instance_cache()
    try:
        yield root / "home"
    finally:
        SkerryFileSystem.clear_instance_cache()
        if old is None:
            os.environ.pop("SKERRY_ADAPTORS", None)
        else:
            os.environ["SKERRY_ADAPTORS"] = old


@contextlib.contextmanager
def dask_client(workers: int = 2):
    """A client of a real ``LocalCluster`` of ``workers`` single-threaded processes, set up
    as ``skerry up``'s pools are (``pools.DASK_CONFIG``, no dashboard port)."""
    import dask
    from distributed import Client, LocalCluster

    from skerry.workload.pools import DASK_CONFIG, NO_DASHBOARD

    with dask.config.set(DASK_CONFIG), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         scheduler_kwargs=NO_DASHBOARD) as cluster, Client(cluster) as client:
        yield client
