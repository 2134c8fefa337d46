"""``skerry up``: run the whole platform on one machine, in the foreground.

The platform is one JupyterHub process (with its proxy and the skerry hub service
as its children) configured by ``skerry.hub.plugins.jupyterhub_config``. This module owns
only the process: it prepares the data dir, starts the hub, says where it is, and
on Ctrl-C/SIGTERM stops the hub, which stops every user server, the service and
the proxy. The hub dies with this process even on ``kill -9`` (PDEATHSIG). Rules: the
proxy runs in a session of its own and outlives a hub that fails or is killed, so once
the hub has exited for any reason, ``up`` stops the proxy the hub recorded in
``run/proxy.pid``; nothing is left on the public port. A failed hub's exit is reported
with its last error lines from ``run/hub.log``. With ``--ssl-cert`` and ``--ssl-key`` the
proxy serves HTTPS only (``skerry.tls``) and the URL printed is ``https://``.
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import config
from .accounts import AccountPolicy
from .datadir import DataDir
from .errors import ConfigError, SetupError
from .haproxy import MIN_VERSION, find_haproxy
from .identity import decide
from .logtail import error_lines
from .nodeproxy import find_proxy
from .process import die_with_parent, is_running, start_time
from .tls import check_pair, probe_context
from .workload.pools import load_pools
from .workload.schedulerconfig import SchedulerConfig

STOP_TIMEOUT = 30  # seconds the hub gets to stop user servers before it is killed
READY_TIMEOUT = 120


@dataclass
class Options:
    """What ``skerry up`` was asked for."""

    data_dir: str = "./skerry-data"
    ip: str = "127.0.0.1"
    port: int = 8000
    dev: bool = False
    account_template: str = AccountPolicy.template
    ssl_cert: str | None = None
    ssl_key: str | None = None
    proxy: str | None = None  # haproxy, traefik or chp; None: $SKERRY_PROXY, else haproxy where installed

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        self.proxy = config.PROXY.parse(self.proxy) if self.proxy else config.PROXY.get()
        if self.proxy in (None, "haproxy") and not find_haproxy():
            if self.proxy:
                raise SetupError(f"the haproxy proxy needs HAProxy {'.'.join(map(str, MIN_VERSION))} or newer "
                                 "(apt-get install haproxy), or --proxy traefik")
            print("skerry: the proxy is Traefik: HAProxy, which carries large transfers about twice as "
                  "fast, is not installed (apt-get install haproxy)", file=sys.stderr, flush=True)
            self.proxy = "traefik"
        self.proxy = self.proxy or "haproxy"


def hub_config_file() -> str:
    spec = importlib.util.find_spec("skerry.hub.plugins")
    return str(Path(spec.submodule_search_locations[0]) / "jupyterhub_config.py")


def public_url(opts: Options) -> str:
    host = f"[{opts.ip}]" if ":" in opts.ip else opts.ip
    return f"{'https' if opts.ssl_cert else 'http'}://{host}:{opts.port}/"


def _check_port_free(ip: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            raise SetupError(f"cannot listen on {ip}:{port}: {e.strerror} (choose another --port or --ip)") from e


def _previous_hub(data: DataDir) -> int | None:
    try:
        pid, started = (int(x) for x in (data.run / "hub.pid").read_text().split())
    except (OSError, ValueError):
        return None
    return pid if is_running(pid, started) else None


def _own_proxy(data: DataDir) -> int | None:
    """The pid of the proxy a hub on this data dir started, if it still runs."""
    try:
        pid = int((data.run / "proxy.pid").read_text().strip())
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except (OSError, ValueError):
        return None
    ours = any(name in cmdline for name in (b"configurable-http-proxy", b"traefik", b"haproxy"))
    return pid if ours and is_running(pid) else None


def _stop_own_proxy(data: DataDir) -> None:
    """Stop the proxy left by this data dir's hub (SIGTERM, then SIGKILL after 5 s)."""
    pid = _own_proxy(data)
    if pid is None:
        return
    started = start_time(pid)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_running(pid, started):
                (data.run / "proxy.pid").unlink(missing_ok=True)
                return
            time.sleep(0.1)


READY_LINE = b"JupyterHub is now running"  # the hub's last line of its start


def _wait_ready(url: str, hub: subprocess.Popen, log: Path, log_start: int) -> bool:
    """Whether the hub started: it logged ``READY_LINE`` after ``log_start`` (its routes are all
    in the proxy by then; its API answers before) and answers at ``url`` through the proxy."""
    deadline = time.monotonic() + READY_TIMEOUT
    context = probe_context() if url.startswith("https:") else None
    started = False
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            return False
        if not started:
            with open(log, "rb") as f:
                f.seek(log_start)
                started = READY_LINE in f.read()
        try:
            with urllib.request.urlopen(url + "hub/api/", timeout=2, context=context) as r:
                if started and r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def up(opts: Options) -> int:
    """Run the platform until Ctrl-C/SIGTERM; returns the exit status. The umask is 077 while
    it runs, and this process's own again once it returns or refuses."""
    previous = os.umask(0o077)  # the platform's files (secrets, databases, logs) are its own; the hub inherits it
    try:
        return _up(opts)
    finally:
        os.umask(previous)


def _up(opts: Options) -> int:
    opts.validate()
    tls = check_pair(opts.ssl_cert, opts.ssl_key)  # before anything is written: a sentence naming the file
    data = DataDir(opts.data_dir)
    other = _previous_hub(data)
    if other:
        raise SetupError(f"a skerry hub (pid {other}) already runs on data dir {data.path}")
    if not _own_proxy(data):  # our old proxy holds the port: stopped below, before the hub starts
        _check_port_free(opts.ip, opts.port)  # before anything is written
    load_pools(data.path / "pools.json")  # a bad pools.json stops us here, with a sentence
    SchedulerConfig.for_data_dir(data.path)  # and so does a bad scheduler.json
    data.ensure()
    identity = decide(data.users, opts.account_template)  # before anything starts: a SetupError names the folder
    if identity.reason:
        print(f"skerry: single-user mode: {identity.reason}", file=sys.stderr, flush=True)
    data.admin_api_token  # noqa: B018 (the property creates it once, 0600, and reuses it on restart)
    data.secret("admin-password", 12)
    env = config.environment({
        config.DATA_DIR.name: str(data.path),
        config.IP.name: opts.ip,
        config.PORT.name: str(opts.port),
        config.PUBLIC_URL.name: public_url(opts),
        config.PROXY.name: opts.proxy,
        **({config.PROXY_COMMAND.name: find_proxy()} if opts.proxy == "chp" else {}),
        config.DEV.name: "1" if opts.dev else "",
        **({config.SSL_CERT.name: str(tls[0]), config.SSL_KEY.name: str(tls[1])} if tls else {}),
        **identity.environment(),
    })
    if opts.dev:
        print(
            "skerry: WARNING --dev: ANY user name and password logs in. "
            "Never use --dev on a machine others can reach.",
            file=sys.stderr,
            flush=True,
        )
    _stop_own_proxy(data)  # one a killed platform left (its hub is gone: checked above)
    log = open(data.run / "hub.log", "ab")
    log_start = log.seek(0, os.SEEK_END)  # this run's lines start here
    hub = subprocess.Popen(
        [sys.executable, "-m", "skerry.quickstart", "jupyterhub", "-f", hub_config_file()],
        cwd=data.path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )

    (data.run / "hub.pid").write_text(f"{hub.pid} {start_time(hub.pid)}\n")

    stopping = []

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            hub.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    url = public_url(opts)
    if _wait_ready(url, hub, data.run / "hub.log", log_start):
        print(f"skerry is running at {url}", flush=True)
        if opts.dev:
            print("  --dev: any user name and password logs in", flush=True)
        else:
            print(f"  log in as 'admin' with the password in {data.secrets / 'admin-password'}", flush=True)
        print(f"  admin API token: {data.secrets / 'admin-api-token'}", flush=True)
        print(f"  hub log: {data.run / 'hub.log'}", flush=True)
    elif hub.poll() is None and not stopping:
        print(f"skerry: the hub did not answer within {READY_TIMEOUT}s; see {data.run / 'hub.log'}",
              file=sys.stderr, flush=True)
    deadline = None
    try:
        while (code := hub.poll()) is None:
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT
            if deadline is not None and time.monotonic() > deadline:
                hub.kill()  # it had STOP_TIMEOUT seconds to stop the user servers
            time.sleep(0.2)
    finally:
        (data.run / "hub.pid").unlink(missing_ok=True)
        _stop_own_proxy(data)  # a hub that failed or was killed leaves its proxy on the port
    if stopping:
        print("skerry stopped.", flush=True)
        return 0
    print(f"skerry: the hub exited with status {code}; see {data.run / 'hub.log'}",
          file=sys.stderr, flush=True)
    for line in error_lines(data.run / "hub.log", log_start):
        print(f"  {line}", file=sys.stderr, flush=True)
    return 1
