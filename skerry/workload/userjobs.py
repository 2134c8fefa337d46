"""A user's jobs on her own cluster: a runner process of her account, spoken to in JSON lines.

The platform's scheduler is never a Dask client of a user's cluster (``clusters``: what a
cluster sends may be a pickle its user made). Each running user cluster gets a runner of
its own instead, run as the account: it is the ``runner.Runner``, the only Dask client the
platform asks for, of that cluster; :class:`UserJobs` is its platform side. On one machine
the runner is a child process (``python -m skerry.workload.clusters jobs ...``, with the
platform's certificate), spoken to on its stdin and stdout; on Kubernetes it is a
container of the user's scheduler pod (``python -m skerry.workload.userjobs listen HOST
PORT ...``), spoken to over TLS: it accepts only the platform's certificate
(``PLATFORM_CN``, signed by the cluster's CA), a connection (and a Dask client) per pool::

    jobs = UserJobs.start(cluster, report=events.put)   # events: Started, Beat, Finished
    jobs = UserJobs.connect(cluster, events.put, (ip, port), platform_files, where_log, needs)
    jobs.submit([[spec, ...], ...], avoid=None)        # batches of JobSpecs, as Runner.submit_batches
    jobs.cancel([(job, attempt), ...])
    jobs.running, jobs.pending, jobs.stop()

Rules:
- platform to runner: one JSON object per line on its stdin, ``{"op": "submit", "modules":
  [module spec], "batches": [[spec fields, its module an index into modules]], "avoid":
  worker}`` or ``{"op": "cancel", "attempts": [[job, attempt]]}``;
- runner to platform: one JSON object per line on its stdout, a ``start``, ``beat`` or
  ``end`` of an attempt (an end carries its ``Finished``, the result as a plain dict).
  The platform reads them with ``json`` only and keeps a report only when it is about an
  attempt handed to this runner and not ended yet, has the fields and types expected, and
  names outputs inside that attempt's output folder; a line that breaks these rules ends
  the runner (its code is the user's: it is not trusted any further);
- the runner ends when its stdin closes (the platform stopped it or died), cancelling its
  futures; a listening runner cancels them when its connection closes and waits for the
  next. Once it ended, every attempt handed to it and not ended is reported lost
  (``Finished.lost``, the error naming the runner and the end of its log);
- nothing but these lines crosses: no pickle, no Dask message reaches the platform.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ..process import settle_heap
from .clusters import CLUSTER_CN, PLATFORM_CN, WORK, _tail
from .runner import Beat, Finished, JobSpec, Started

__all__ = ["UserJobs", "serve", "listen"]

log = logging.getLogger("skerry.scheduler")
LINE_MAX = 16 * 1024 * 1024  # bytes one report may hold (an end carries at most 64 KiB of log)
STOP_S = 5.0  # seconds a runner has to end after its stdin closed


class UserJobs:
    """The platform's side of one cluster's runner (module docstring)."""

    def __init__(self, cluster, channel, report: Callable[[Any], None]):
        self.cluster = cluster
        self.channel = channel
        self.report = report
        self.pending: dict[tuple[int, int], str] = {}  # attempt -> its output folder
        self._lock = threading.Lock()
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"skerry-jobs-{cluster.account.name}-{cluster.pool}")
        self._reader.start()

    @classmethod
    def start(cls, cluster, report: Callable[[Any], None], needs: dict | None = None) -> UserJobs:
        """Start the runner of ``cluster`` (a running ``UserCluster``) as its account;
        ``report`` gets every Started, Beat and Finished, from a thread of this object."""
        from .clusters import _launch

        files = cluster.platform_files()
        args = [cluster.address, files["tls_ca_file"], files["tls_client_cert"], files["tls_client_key"],
                cluster.pool, json.dumps(needs or {})]
        log_path = cluster.folder / "jobs.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        with os.fdopen(fd, "ab") as log_file:
            process = _launch("jobs", args, cluster.account, _environment(cluster), cluster.folder / WORK,
                              log_file, stdout=subprocess.PIPE, stdin=subprocess.PIPE, limits=cluster.enforcement)
        return cls(cluster, _Process(process, log_path), report)

    @classmethod
    def connect(cls, cluster, report: Callable[[Any], None], address: tuple[str, int], files: dict[str, str],
                where_log: str, needs: dict | None = None, timeout: float = 10.0) -> UserJobs:
        """Connect to a listening runner at ``address`` with the platform's ``files``
        (``tls_ca_file``, ``tls_client_cert``, ``tls_client_key``), for ``cluster.pool``;
        ``where_log`` says where its log is. An ``OSError`` if it cannot be reached or is not
        the cluster's."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files["tls_ca_file"])
        context.load_cert_chain(files["tls_client_cert"], files["tls_client_key"])
        raw = socket.create_connection(address, timeout=timeout)
        try:
            sock = context.wrap_socket(raw, server_hostname=CLUSTER_CN)
        except OSError:
            raw.close()
            raise
        sock.settimeout(None)
        sock.sendall((json.dumps({"op": "pool", "pool": cluster.pool, "needs": needs or {}}) + "\n").encode())
        return cls(cluster, _Connection(sock, where_log), report)

    @property
    def running(self) -> bool:
        return not self._ended and self.channel.alive()

    def submit(self, batches: list[list[JobSpec]], avoid: str | None = None) -> None:
        """Hand batches of attempts to the runner (lost at once if it ended)."""
        with self._lock:
            ended = self._ended
            for batch in batches if not ended else ():
                for spec in batch:
                    self.pending[(spec.job, spec.attempt)] = spec.output.rstrip("/") + "/"
        if ended:
            for spec in (s for b in batches for s in b):
                self.report(Finished(spec.job, spec.attempt, lost=True,
                                     error=f"the runner of {self.cluster.account.hub_name}'s "
                                           f"{self.cluster.pool} jobs had stopped"))
            return
        modules, index = [], {}  # each module spec once a message (a task's jobs share their task's)
        for spec in (s for b in batches for s in b):
            if id(spec.module) not in index:
                index[id(spec.module)] = len(modules)
                modules.append(spec.module)
        self._send({"op": "submit", "modules": modules, "avoid": avoid,
                    "batches": [[{**_fields(s), "module": index[id(s.module)]} for s in b] for b in batches]})

    def cancel(self, attempts) -> None:
        """Forget the attempts here and ask the runner to cancel them."""
        with self._lock:
            attempts = [list(a) for a in attempts if self.pending.pop(tuple(a), None) is not None]
        if attempts:
            self._send({"op": "cancel", "attempts": attempts})

    def stop(self) -> None:
        """Tell the runner no more is coming; end it if it is not done within ``STOP_S``."""
        self.channel.close()
        self._reader.join(STOP_S)

    def _send(self, msg: dict) -> None:
        line = (json.dumps(msg) + "\n").encode()
        try:
            with self._lock:
                self.channel.writer.write(line)
                self.channel.writer.flush()
        except (OSError, ValueError):  # it ended: the reader reports its attempts lost
            self.channel.kill()

    def _read(self) -> None:
        stream = self.channel.reader
        why = None
        while why is None:
            try:
                line = stream.readline(LINE_MAX)
            except (OSError, ValueError):
                line = b""
            if not line:
                why = "it ended"
                break
            try:
                event = self._check(json.loads(line))
            except (ValueError, TypeError, KeyError) as e:  # the user's code may have written it
                why = f"it sent a report that breaks the rules ({str(e)[:200]})"
                break
            if event is not None:
                self.report(event)
        self.channel.kill()
        with self._lock:
            self._ended = True
            lost, self.pending = list(self.pending), {}
        if lost:
            error = (f"the runner of {self.cluster.account.hub_name}'s {self.cluster.pool} jobs stopped: {why}; "
                     f"{self.channel.log_end()}")
            log.warning("%s (%d attempts lost)", error.splitlines()[0], len(lost))
            for job, attempt in lost:
                self.report(Finished(job, attempt, lost=True, error=error))

    def _check(self, msg: dict):
        """The event of a report, or None for one about an attempt not (or no longer) ours."""
        kind = msg["e"]
        job, attempt = _int(msg["job"]), _int(msg["attempt"])
        key = (job, attempt)
        with self._lock:
            folder = self.pending.get(key)
            if folder is None:
                return None  # cancelled meanwhile, or never ours
            if kind == "start":
                return Started(job, attempt, _str(msg["worker"]), _number(msg["at"]))
            if kind == "beat":
                return Beat(job, attempt)
            if kind != "end":
                raise ValueError(f"unknown report kind {kind!r}")
            result = _result(msg["result"], folder)
            finished = Finished(job, attempt, result, _str(msg["worker"], none=True), lost=msg["lost"] is True,
                                error=_str(msg["error"], none=True), took=_number(msg["took"], none=True))
            del self.pending[key]
            return finished


class _Process:
    """A runner that is a child process: its stdin and stdout."""

    def __init__(self, process: subprocess.Popen, log_path: Path):
        self.process, self.log_path = process, log_path
        self.reader, self.writer = process.stdout, process.stdin

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass
        try:
            self.process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.reader.close()

    def log_end(self) -> str:
        return f"its log ({self.log_path}) ends:\n{_tail(self.log_path, 10)}"


class _Connection:
    """A runner that listens (in the user's pod): one TLS connection to it."""

    def __init__(self, sock, where_log: str):
        self.sock, self.where_log = sock, where_log
        self.reader, self.writer = sock.makefile("rb"), sock.makefile("wb")
        self._closed = False

    def alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        try:
            self.writer.close()
            self.sock.shutdown(socket.SHUT_WR)  # the runner reads its end and cancels what it runs
        except OSError:
            self.kill()

    def kill(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def log_end(self) -> str:
        return f"its log: {self.where_log}"


_SPEC_FIELDS = tuple(f.name for f in fields(JobSpec))


def _fields(spec: JobSpec) -> dict:
    """A JobSpec as JSON-able fields (not ``asdict``: it deep-copies every module spec)."""
    return {name: getattr(spec, name) for name in _SPEC_FIELDS}


def _environment(cluster) -> dict[str, str]:
    from .clusters import _dask_environment

    return _dask_environment(cluster.account, cluster.paths, cluster.folder / WORK)


def _int(value) -> int:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not a whole number")
    return value


def _number(value, none: bool = False):
    if (none and value is None) or type(value) in (int, float):
        return value
    raise TypeError(f"{value!r} is not a number")


def _str(value, none: bool = False):
    if (none and value is None) or type(value) is str:
        return value
    raise TypeError(f"{value!r} is not a string")


def _result(data, folder: str):
    """The JobResult of an end's dict, every output inside ``folder`` (None: no result)."""
    from .runner import _result_of

    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("a result must be an object")
    result = _result_of(data)
    for out in result.outputs:
        if not isinstance(out.url, str) or not out.url.startswith(folder) or "/../" in out.url:
            raise ValueError(f"output {out.url!r} is outside the job's output folder {folder}")
        _int(out.size), _str(out.checksum), _str(out.name), _str(out.pin)
    _str(result.job_id), _int(result.exit_code), _str(result.log), _str(result.error, none=True)
    _str(result.error_class, none=True), _str(result.log_location, none=True)
    return result


# ---- the runner, as the account ----------------------------------------------------------


def serve(address: str, ca: str, cert: str, key: str, pool: str, needs: str) -> None:
    """The runner of one user cluster (``python -m skerry.workload.clusters jobs ...``):
    commands on stdin, reports on stdout, until stdin closes."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    client = _client(address, ca, cert, key)
    settle_heap()
    try:
        _relay(client, pool, json.loads(needs), sys.stdin, sys.stdout)
    finally:
        client.close()


def listen(host: str, port: str, address: str, ca: str, cert: str, key: str) -> None:
    """The runner of one user cluster on Kubernetes (``python -m skerry.workload.userjobs
    listen HOST PORT ADDRESS CA CERT KEY``): TLS with the cluster's ``cert``, connections of
    the platform's certificate only, one per pool: each starts with ``{"op": "pool", "pool":
    name, "needs": {...}}`` and gets a Dask client of its own. Runs for ever."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def one(raw, peer):
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                if _common_name(conn.getpeercert()) != PLATFORM_CN:
                    log.warning("refused %s: not the platform's certificate", peer[0])
                    return
                commands, reports = conn.makefile("r", encoding="utf-8"), conn.makefile("w", encoding="utf-8")
                hello = json.loads(commands.readline(LINE_MAX))
                if hello.get("op") != "pool":
                    raise ValueError(f"a connection starts with its pool, not {hello!r}")
                client = _client(address, ca, cert, key)
                try:
                    _relay(client, hello["pool"], hello["needs"], commands, reports)
                finally:
                    client.close()
        except (OSError, ValueError, KeyError) as e:  # that connection ends; the next may come
            log.warning("the connection of %s ended: %s", peer[0], e)
        finally:
            raw.close()

    with socket.create_server((host, int(port))) as server:
        while True:
            raw, peer = server.accept()
            threading.Thread(target=one, args=(raw, peer), daemon=True, name=f"skerry-jobs-{peer[0]}").start()


def _client(address: str, ca: str, cert: str, key: str):
    from distributed import Client

    from .clusters import security

    return Client(address, security=security({"tls_ca_file": ca, "tls_client_cert": cert, "tls_client_key": key}),
                  timeout=30, set_as_default=False)


def _common_name(cert: dict | None) -> str | None:
    for part in (cert or {}).get("subject", ()):
        for name, value in part:
            if name == "commonName":
                return value
    return None


def _relay(client, pool: str, needs: dict, commands_in, reports_out) -> None:
    """Run the commands read from ``commands_in`` on ``client`` until it ends; the reports to
    ``reports_out``. Whatever is still in flight then is cancelled."""
    from .runner import Pool, Runner, _result_dict

    runner = Runner({pool: Pool(client, needs)})
    done = threading.Event()

    def commands():
        try:
            for line in commands_in:
                msg = json.loads(line)
                if msg["op"] == "submit":
                    modules = msg["modules"]  # one object per module: pickled once a batch for Dask
                    batches = [[JobSpec(**{**s, "module": modules[s["module"]]}) for s in b] for b in msg["batches"]]
                    runner.submit_batches(pool, batches, avoid=msg.get("avoid"))
                elif msg["op"] == "cancel":
                    runner.cancel_many([tuple(a) for a in msg["attempts"]])
        except (OSError, ValueError) as e:
            log.warning("the platform's commands ended: %s", e)
        finally:
            done.set()

    threading.Thread(target=commands, daemon=True, name="skerry-commands").start()
    try:
        while not done.is_set():
            for event in runner.events(timeout=0.1):
                if isinstance(event, Started):
                    msg = {"e": "start", "job": event.job, "attempt": event.attempt, "worker": event.worker,
                           "at": event.at}
                elif isinstance(event, Beat):
                    msg = {"e": "beat", "job": event.job, "attempt": event.attempt}
                else:
                    msg = {"e": "end", "job": event.job, "attempt": event.attempt, "worker": event.worker,
                           "lost": event.lost, "error": event.error, "took": event.took,
                           "result": None if event.result is None else _result_dict(event.result)}
                reports_out.write(json.dumps(msg) + "\n")
            reports_out.flush()
    finally:
        runner.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["listen"] or len(sys.argv) != 8:
        sys.exit("usage: python -m skerry.workload.userjobs listen HOST PORT ADDRESS CA CERT KEY")
    if os.geteuid() == 0:
        sys.exit("a user cluster's runner never runs as root")
    listen(*sys.argv[2:])
