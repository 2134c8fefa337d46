"""The ``skerry`` session of a kernel: the user's adaptors, a Dask client to a pool, the workload API.

In a skerry kernel the namespace holds the ``skerry`` package, whose session attributes
are the kernel's ``Session`` (``skerry.session``)::

    skerry.fs          # the skerry:// federation (the one fsspec.open("skerry://home/a.csv") uses)
    skerry.client      # distributed.Client to the user's cluster of the kernel's pool ("cpu" or "gpu");
                       # its dashboard_link: /user/<name>/skerry/dask/<pool>/status, in the user's server
    skerry.api         # skerry.workload.client.Client: the workload API as the user
    skerry.ready()     # waits for all three: {part: seconds after the kernel's start, or why not}

Anywhere else in the kernel's process, ``skerry.kernels.session.current()`` is the same session.

Rules:
- ``start`` makes the adaptors and the api in their own daemon threads and returns at
  once (the launcher then waits for them, a little, before loading ipykernel); a part used
  before it is made waits for it (at most ``WAIT_S``). The pool is made on the first use
  of ``skerry.client``: it asks the platform for the user's own Dask cluster of the pool
  (``POST /clusters/{pool}``, which starts it if none runs; ``CLUSTER_S``), so a kernel
  that never uses Dask starts no cluster, and connects with that cluster's TLS files;
- a part that cannot be made raises ``SessionError`` with the reason when used (no such
  pool, no adaptors, the API refusing the token), never at start: the kernel runs on and
  the first cell run after the failure prints the reason once. A failed part is tried
  again the next time it is used (a pool started later is found then);
- everything comes from the environment the spawner sets: ``$SKERRY_ADAPTORS``,
  ``$SKERRY_URL`` (the platform) and ``$JUPYTERHUB_API_TOKEN`` (the server's token: the
  user's hub identity; ``$SKERRY_TOKEN`` outside a micro-infrastructure);
- the token is never shown: not in ``repr``, not in a message.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from skerry import config
from skerry.errors import SkerryError, Unavailable

__all__ = ["Session", "SessionError", "current", "start", "PARTS"]

PARTS = ("adaptors", "pool", "api")
WAIT_S = 30.0  # how long a part that is used waits for its connection
CLUSTER_S = 180.0  # how long the first use of skerry.client waits for the user's cluster to start
ON_FIRST_USE = "made on the first use of skerry.client"
CONNECT_S = 10  # Dask's connection timeout to a pool's scheduler

_current: Session | None = None


class SessionError(Unavailable):
    """A part of the kernel's skerry session (skerry://, skerry.client) is not ready; the sentence says why."""

    code = "session_unavailable"


class _Part:
    """One part of the session, made in a background thread (again, in the caller's, after a
    failure): ``prepare()`` (imports and configuration: CPU) then ``connect(prepared)`` (the
    network), whose result is the part."""

    def __init__(self, name: str, prepare, connect, lazy: bool = False):
        self.name = name
        self.lazy = lazy  # made on first use only
        self.prepare = prepare
        self.connect = connect
        self.done = threading.Event()
        self.value = None
        self.problem: str | None = None
        self.at: float | None = None  # time.time() when it was made or failed
        self.reported = False
        self.started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = True
        threading.Thread(target=self._run, name=f"skerry-{self.name}", daemon=True).start()

    def _run(self) -> None:
        self.started = True
        try:
            self.value, self.problem = self.connect(self.prepare()), None
        except SessionError as e:
            self.problem = e.message
        except Exception as e:  # noqa: BLE001 - any failure is the part's problem, shown when used
            self.problem = f"the {self.name} could not be set up ({type(e).__name__}: {e})"
        self.at = time.time()
        self.done.set()

    def get(self, timeout: float):
        if self.lazy and not self.started:
            with self._lock:  # the first user makes it; the others wait for its outcome
                if not self.started:
                    self._run()
                    self.reported = True  # its caller sees the outcome now
                    if self.problem is not None:
                        raise SessionError(self.problem)
                    return self.value
        if not self.done.wait(timeout):
            raise SessionError(f"the session's {self.name} is not ready after {timeout:g} s")
        if self.problem is not None:
            with self._lock:  # one retry at a time; the others wait for its outcome
                if self.problem is not None:
                    self.reported = True  # the caller sees this problem now
                    self._run()
        if self.problem is not None:
            raise SessionError(self.problem)
        return self.value


def _process_start() -> float:
    """When this process started (seconds since the epoch): the kernel's start.

    From its age since boot in ``/proc`` (10 ms ticks; psutil's figure can be a second off,
    the boot time being whole seconds); now, where there is no ``/proc``."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class Session:
    """The user's adaptors, a Dask client to ``pool`` and the workload API (module docstring)."""

    def __init__(self, pool: str = "cpu", *, url: str | None = None, token: str | None = None,
                 started: float | None = None):
        self.pool = pool
        self.user = config.HUB_USER.get() or config.USER.get() or ""
        self.url = (url if url is not None else config.URL.get() or "").rstrip("/")
        self._token = token if token is not None else config.HUB_API_TOKEN.get() or config.TOKEN.get() or ""
        self.started = started if started is not None else _process_start()
        self._parts = {"adaptors": _Part("adaptors", self._make_fs, self._list_adaptors),
                       "pool": _Part("pool", self._ask_cluster, self._connect_pool, lazy=True),
                       "api": _Part("api", self._api_client, self._check_api)}

    def start(self) -> Session:
        """Begin making every part, each in its own thread; returns at once."""
        for part in self._parts.values():
            if not part.lazy:
                part.start()
        return self

    # ---- the parts -----------------------------------------------------------

    @property
    def fs(self):
        """The ``skerry://`` filesystem of the user's adaptors."""
        return self._parts["adaptors"].get(WAIT_S)

    @property
    def client(self):
        """A ``distributed.Client`` connected to the user's cluster of the kernel's pool
        (Dask's default client), asked for on first use."""
        return self._parts["pool"].get(WAIT_S)

    @property
    def api(self):
        """The workload API (``skerry.workload.client.Client``) as the user."""
        return self._parts["api"].get(WAIT_S)

    def _make_fs(self):
        import fsspec

        try:
            return fsspec.filesystem("skerry")  # fsspec's cached instance: skerry:// URLs use it too
        except SkerryError as e:
            raise SessionError(f"skerry:// is unavailable: {e.message}") from None

    @staticmethod
    def _list_adaptors(fs):
        fs.ls("", detail=False)
        return fs

    def _ask_cluster(self) -> dict:
        from skerry.workload.client import ApiRefused, ClientError

        api = self._api_client()
        try:
            answer = api.request("POST", f"/clusters/{self.pool}", timeout=CLUSTER_S)
        except ApiRefused as e:
            other = "" if self.pool == "cpu" or e.code != "no_pool" else (
                ' Use the "Python 3 (skerry)" kernel for the cpu pool, or ask the admin for a '
                f"{self.pool} pool (DIR/pools.json).")
            raise SessionError(f"skerry.client is unavailable in this kernel: {e.message}; skerry.fs and "
                               f"skerry.api work.{other}") from None
        except ClientError as e:
            raise SessionError(f"skerry.client is unavailable: {e.message}; skerry.client tries again "
                               f"when used") from None
        finally:
            api.close()
        import distributed  # noqa: F401 - the costly import, before the connection

        return answer

    def _connect_pool(self, answer: dict):
        from distributed import Client

        from skerry.workload.clusters import security

        address, tls = answer["address"], answer.get("tls")
        if config.HUB_USER.get():  # in the user's server, which proxies the cluster's dashboard
            import dask

            from skerry.workload.dashboard import link

            dask.config.set({"distributed.dashboard.link": link(config.HUB_SERVICE_PREFIX.get(), self.pool)})
        try:
            return Client(address, timeout=CONNECT_S, set_as_default=True,
                          **({"security": security(tls)} if tls else {}))
        except OSError as e:
            raise SessionError(f"your {self.pool!r} cluster at {address} does not answer ({e}); "
                               "skerry.client tries again when used") from None

    def _api_client(self):
        if not self.url:
            raise SessionError("the workload API is unavailable: $SKERRY_URL (the platform's URL) is not set")
        if not self._token:
            raise SessionError("the workload API is unavailable: no hub token ($JUPYTERHUB_API_TOKEN) "
                               "in this kernel's environment")
        from skerry.workload.client import Client

        return Client(self.url, self._token)

    def _check_api(self, api):
        from skerry.workload.client import ClientError

        try:
            api.request("GET", "/infrastructure")  # the platform knows the token: it names the user
        except ClientError as e:
            api.close()
            raise SessionError(f"the workload API at {self.url} cannot be used: {e.message}") from None
        return api

    # ---- state -----------------------------------------------------------------

    def ready(self, timeout: float = WAIT_S) -> dict[str, float | str]:
        """Wait (at most ``timeout`` s in all) for every part; for each, the seconds from the
        kernel's start until it was ready, or why it is not (failed parts are not retried)."""
        deadline = time.monotonic() + timeout
        for part in self._parts.values():
            if not part.lazy or part.started:
                part.done.wait(max(0.0, deadline - time.monotonic()))
        return self.status()

    def status(self) -> dict[str, float | str]:
        """Without waiting: each part's seconds from the kernel's start, its problem, or "connecting"."""
        out: dict[str, float | str] = {}
        for name, part in self._parts.items():
            if part.lazy and not part.started:
                out[name] = ON_FIRST_USE
            elif not part.done.is_set():
                out[name] = "connecting"
            else:
                out[name] = part.problem if part.problem is not None else round(part.at - self.started, 3)
        return out

    def report_problems(self, out=None) -> None:
        """Print each problem not yet reported (once), for the user to see in their cell's output."""
        for part in self._parts.values():
            if part.done.is_set() and part.problem is not None and not part.reported:
                part.reported = True
                print(f"skerry: {part.problem}", file=out or sys.stderr)

    def close(self) -> None:
        for name in ("pool", "api"):
            part = self._parts[name]
            if part.done.is_set() and part.value is not None:
                part.value.close()

    def __repr__(self) -> str:
        lines = [f"skerry session of {self.user or 'this user'}, pool {self.pool!r}"]
        for name, part in self._parts.items():
            if part.lazy and not part.started:
                state = ON_FIRST_USE
            elif not part.done.is_set():
                state = "connecting"
            elif part.problem is not None:
                state = part.problem
            elif name == "adaptors":
                state = "skerry:// " + ", ".join(sorted(part.value.adaptors))
            elif name == "pool":
                state = f"{part.value.scheduler.address}" if part.value.scheduler else "closed"
            else:
                state = f"{self.url} as {self.user or 'the token owner'}"
            lines.append(f"  {'fs' if name == 'adaptors' else 'client' if name == 'pool' else name}: {state}")
        return "\n".join(lines)


def start(pool: str) -> Session:
    """Start this process's session (the kernel's), connecting to ``pool``."""
    global _current
    _current = Session(pool).start()
    return _current


def current() -> Session:
    """The kernel's session; ``SessionError`` outside a skerry kernel."""
    if _current is None:
        raise SessionError("no skerry session in this process: it is not a skerry kernel "
                           '(choose "Python 3 (skerry)" or "Python 3 (skerry, GPU)")')
    return _current


def load_ipython_extension(ip) -> None:
    """IPython extension (the launcher loads it): the ``skerry`` package in the namespace
    (``skerry.fs``, ``skerry.client``, ``skerry.api`` are this session's), and each part's
    problem printed (once) as the first cell run after it is known."""
    import skerry

    session = current()
    ip.push({"skerry": skerry})

    def report(*_):
        session.report_problems()
        if all(part.done.is_set() for part in session._parts.values() if not part.lazy):
            ip.events.unregister("pre_run_cell", report)

    ip.events.register("pre_run_cell", report)
