"""Staging through the data API (issue 3, must-show 5), all servers real:

a ``jupyter server`` with the skerry extension, an OpenSSH sshd (SFTP adaptor, key
credential), moto's S3 server, a second moto S3 server with authentication on (for bad
credentials), and an HTTP webhook receiver that is stopped and restarted on its port.
Digests of source and target are computed here too, independently of the copy's own.
"""

import hashlib
import os
import random
import subprocess
import sys
import time

import httpx
import pytest
import s3fs

from helpers import free_port, wait_for
from jupyterserver import JupyterServer, WebhookReceiver

MB = 1024 * 1024
BIG = 500 * MB
CHUNK = 8 * MB
BAD_KEY, BAD_SECRET = "AKIAEXAMPLEWRONGKEY1", "wrong-secret-do-not-leak-9d2e"


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory):
    """moto's S3 server with authentication on: unknown access keys are refused (403)."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(url, timeout=1) is not None
        except httpx.HTTPError:
            return False

    wait_for(up, 30, what="moto with authentication")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def receiver():
    r = WebhookReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def stage(tmp_path_factory, sshd, s3server, auth_s3):
    base = tmp_path_factory.mktemp("staging")
    home, remote = base / "home", base / "hpc"
    home.mkdir()
    remote.mkdir()
    s3server.make_bucket("staging")
    adaptors = [
        {"name": "home", "type": "local", "path": str(home)},
        {"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
         "path": str(remote), "credentials": "hpc-key"},
        {"name": "s3", "type": "s3", "bucket": "staging", "endpoint_url": s3server.url, "credentials": "s3"},
        {"name": "s3bad", "type": "s3", "bucket": "locked", "endpoint_url": auth_s3, "credentials": "bad"},
    ]
    credentials = {"hpc-key": {"private_key": sshd.key}, "s3": s3server.credentials(),
                   "bad": {"key": BAD_KEY, "secret": BAD_SECRET}}
    server = JupyterServer(base / "server", adaptors, credentials).start()
    s3 = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3server.url})
    yield server, home, remote, s3
    server.stop()


def write_random(f, size) -> str:
    """Write ``size`` random bytes in 8 MiB chunks; returns their MD5."""
    md5 = hashlib.md5()
    left = size
    while left:
        block = os.urandom(min(CHUNK, left))
        md5.update(block)
        f.write(block)
        left -= len(block)
    return md5.hexdigest()


def md5_of(f) -> str:
    md5 = hashlib.md5()
    while block := f.read(CHUNK):
        md5.update(block)
    return md5.hexdigest()


def one_webhook(server, receiver, copy_id) -> dict:
    """The one webhook body of ``copy_id``: the server says its delivery ended with a 2xx, after
    which it never sends again, and the receiver got exactly one."""
    wait_for(lambda: server.get(f"copy/{copy_id}").json()["webhook"] not in (None, "pending"), 60,
             what=f"the end of the webhook delivery of copy {copy_id}")
    assert server.get(f"copy/{copy_id}").json()["webhook"] == "delivered"
    bodies = receiver.bodies_for(copy_id)
    assert len(bodies) == 1, bodies
    return bodies[0]


def copy_and_wait(server, item, timeout=900):
    started = time.monotonic()
    [cid] = server.copy([item])
    state = server.wait_copy(cid, timeout)
    return cid, state, time.monotonic() - started


@pytest.mark.timeout(1200)
def test_500mb_file_sftp_to_s3_is_verified_and_reported_once(stage, receiver):
    server, home, remote, s3 = stage
    (remote / "big").mkdir()
    with open(remote / "big" / "data.bin", "wb") as f:
        source_md5 = write_random(f, BIG)
    try:
        cid, state, took = copy_and_wait(server, {"from": "skerry://hpc/big/data.bin",
                                                  "to": "skerry://s3/big/data.bin", "webhook": receiver.url})
        assert state["state"] == "done", state
        assert state["bytes"] == state["total"] == BIG
        assert state["md5"] == source_md5
        assert state["verified"] == "size+etag"  # multipart ETag recomputed from the parts
        with s3.open("staging/big/data.bin", "rb", block_size=CHUNK) as f:
            assert md5_of(f) == source_md5
        assert s3.info("staging/big/data.bin")["size"] == BIG
        assert one_webhook(server, receiver, cid) == {"id": cid, "state": "done", "bytes": BIG, "error": None}
        print(f"\nSFTP -> S3, 500 MiB: {took:.1f} s, {BIG / MB / took:.0f} MiB/s")
    finally:
        os.remove(remote / "big" / "data.bin")
        s3.rm("staging/big/data.bin")


@pytest.mark.timeout(1200)
def test_500mb_file_s3_to_local_is_verified_and_reported_once(stage, receiver):
    server, home, remote, s3 = stage
    with s3.open("staging/big2/data.bin", "wb", block_size=CHUNK) as f:
        source_md5 = write_random(f, BIG)
    try:
        cid, state, took = copy_and_wait(server, {"from": "s3/big2/data.bin", "to": "home/big2/data.bin",
                                                  "webhook": receiver.url})
        assert state["state"] == "done", state
        assert state["bytes"] == state["total"] == BIG
        assert state["md5"] == source_md5
        assert state["verified"] == "size"  # a local disk keeps no checksum to compare with
        with open(home / "big2" / "data.bin", "rb") as f:
            assert md5_of(f) == source_md5
        assert sorted(os.listdir(home / "big2")) == ["data.bin"]  # no temporary name left
        assert one_webhook(server, receiver, cid) == {"id": cid, "state": "done", "bytes": BIG, "error": None}
        print(f"\nS3 -> local, 500 MiB: {took:.1f} s, {BIG / MB / took:.0f} MiB/s")
    finally:
        s3.rm("staging/big2/data.bin")
        (home / "big2" / "data.bin").unlink(missing_ok=True)


def digests(root) -> dict:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.md5(f.read()).hexdigest()
    return out


@pytest.mark.timeout(900)
def test_folder_of_1000_files_sftp_to_s3_to_local(stage, receiver):
    server, home, remote, s3 = stage
    rng = random.Random(3)
    for i in range(1000):
        folder = remote / "many" / f"part{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i:04d}.dat").write_bytes(os.urandom(rng.randrange(0, 4096)))
    source = digests(remote / "many")
    total = sum(os.path.getsize(remote / "many" / p) for p in source)
    assert len(source) == 1000

    cid, state, took = copy_and_wait(server, {"from": "hpc/many", "to": "s3/many", "webhook": receiver.url})
    assert state["state"] == "done", state
    assert (state["files"], state["bytes"], state["total"]) == (1000, total, total)
    assert state["verified"] == "size+etag"
    in_s3 = {p[len("staging/many/"):]: s3.info(p)["ETag"].strip('"') for p in s3.find("staging/many")}
    assert in_s3 == source  # single-part objects: the ETag is the MD5
    assert one_webhook(server, receiver, cid)["state"] == "done"
    print(f"\n1,000 files SFTP -> S3: {took:.1f} s")

    cid, state, took = copy_and_wait(server, {"from": "s3/many", "to": "home/many", "webhook": receiver.url})
    assert state["state"] == "done", state
    assert (state["files"], state["bytes"]) == (1000, total)
    assert state["verified"] == "size"
    assert digests(home / "many") == source
    assert one_webhook(server, receiver, cid)["state"] == "done"
    print(f"1,000 files S3 -> local: {took:.1f} s")


def test_webhook_reaches_a_receiver_that_was_down_when_the_copy_ended(stage, receiver):
    server, home, remote, s3 = stage
    (home / "hook.txt").write_bytes(b"deliver me")
    receiver.stop()
    try:
        cid, state, _ = copy_and_wait(server, {"from": "home/hook.txt", "to": "s3/hook/hook.txt",
                                               "webhook": receiver.url})
        assert state["state"] == "done"
        # the first delivery has failed (the receiver is down) and a retry is pending
        wait_for(lambda: f"for copy {cid} failed" in server.log.read_text(), 30, what="a failed delivery")
        assert receiver.bodies_for(cid) == []
    finally:
        receiver.start()  # same port
    body = one_webhook(server, receiver, cid)
    assert body == {"id": cid, "state": "done", "bytes": 10, "error": None}


def test_bad_s3_credentials_fail_with_a_clear_error_in_the_state_and_the_webhook(stage, receiver):
    server, home, remote, s3 = stage
    (home / "secret-target.txt").write_bytes(b"payload")
    cid, state, _ = copy_and_wait(server, {"from": "home/secret-target.txt", "to": "s3bad/x/out.txt",
                                           "webhook": receiver.url}, timeout=120)
    assert state["state"] == "failed"
    error = state["error"]
    assert "access denied" in error and "credentials" in error
    assert "Access Key Id you provided does not exist" in error  # the storage's own reason
    for secret in (BAD_SECRET, BAD_KEY, "Traceback", 'File "'):
        assert secret not in error
    assert one_webhook(server, receiver, cid) == {"id": cid, "state": "failed", "bytes": state["bytes"], "error": error}
    # authentication failures are permanent: never retried
    assert f"copy {cid}: " in server.log.read_text()
    assert "retry" not in "".join(line for line in server.log.read_text().splitlines() if cid in line)
    assert BAD_SECRET not in server.log.read_text()


def test_transient_errors_are_retried_and_permanent_ones_not():
    """Which errors are worth a retry (a dropped connection cannot be provoked on demand
    without killing the shared sshd, so the classification is checked directly)."""
    import asyncssh

    from skerry.adaptors.staging import VerificationError, is_transient
    from skerry.errors import AdaptorUnavailable

    for e in (ConnectionResetError(), TimeoutError(), asyncssh.ConnectionLost("lost"),
              AdaptorUnavailable("adaptor 'hpc' cannot be reached: timeout")):
        assert is_transient(e), e
    for e in (PermissionError("denied"), FileNotFoundError("gone"), VerificationError("bad size"),
              asyncssh.PermissionDenied("no")):
        assert not is_transient(e), e
    try:
        try:
            raise asyncssh.PermissionDenied("login refused")
        except asyncssh.PermissionDenied:
            raise AdaptorUnavailable("adaptor 'hpc' cannot be reached: login refused") from None
    except AdaptorUnavailable as e:
        assert not is_transient(e)  # a refused login stays refused


def test_webhook_retries_5xx_until_a_2xx_and_drops_4xx(caplog):
    """Delivery rules on a real HTTP receiver, with short delays (the data API uses 1 s .. 30 s)."""
    from skerry.adaptors.webhooks import WebhookSender, check_url

    flaky = WebhookReceiver(answers=[503, 500, 502]).start()
    refusing = WebhookReceiver(answers=[400]).start()
    sender = WebhookSender(first_delay=0.05, max_delay=0.2, give_up_after=30)
    try:
        sender.send(flaky.url, {"id": "a", "state": "done", "bytes": 1, "error": None})
        sender.send(refusing.url, {"id": "b", "state": "done", "bytes": 1, "error": None})
        wait_for(lambda: len(flaky.received) == 4, 10, what="three 5xx answers, then a 2xx")
        wait_for(lambda: sender.pending == 0, 10, what="both deliveries to end")
        assert len(flaky.received) == 4  # the 2xx ended it
        assert refusing.received == [{"id": "b", "state": "done", "bytes": 1, "error": None}]  # 4xx: once
    finally:
        sender.stop()
        flaky.stop()
        refusing.stop()

    gone = WebhookReceiver()  # never started: connection refused every time
    sender = WebhookSender(first_delay=0.05, max_delay=0.1, give_up_after=0.5)
    try:
        sender.send(gone.url, {"id": "c"})
        wait_for(lambda: sender.pending == 0, 5, interval=0.05, what="the sender to give up")
    finally:
        sender.stop()
    assert "giving up" in caplog.text and "for copy c" in caplog.text
    assert check_url("http://127.0.0.1:1/x") is None
    for bad in ("ftp://h/x", "http://", "not a url", 3, "http://h:99999/"):
        assert check_url(bad)


def test_copies_into_sftp_replace_the_target_through_a_temporary_name(stage):
    server, home, remote, s3 = stage
    (home / "up.txt").write_bytes(b"first version")
    _, state, _ = copy_and_wait(server, {"from": "home/up.txt", "to": "hpc/in/deeper/up.txt"})
    assert state["state"] == "done" and state["verified"] == "size", state
    (home / "up.txt").write_bytes(b"second, longer version")
    _, state, _ = copy_and_wait(server, {"from": "home/up.txt", "to": "hpc/in/deeper/up.txt"})
    assert state["state"] == "done", state
    assert (remote / "in" / "deeper" / "up.txt").read_bytes() == b"second, longer version"
    assert os.listdir(remote / "in" / "deeper") == ["up.txt"]  # no temporary name left
    r = server.get("list", params={"adaptor": "hpc", "path": "in/deeper"})
    assert [(e["name"], e["size"]) for e in r.json()["entries"]] == [("up.txt", 22)]


@pytest.mark.timeout(600)
def test_stopping_the_server_mid_copy_leaves_no_object_and_no_open_upload(stage, tmp_path):
    server, home, remote, s3 = stage
    (remote / "stop").mkdir()
    with open(remote / "stop" / "data.bin", "wb") as f:
        write_random(f, 200 * MB)
    with open(home / "stop.bin", "wb") as f:
        write_random(f, 200 * MB)
    config = json_config(server)
    other = JupyterServer(tmp_path / "server", config["adaptors"], config["credentials"]).start()
    try:
        ids = other.copy([{"from": "hpc/stop/data.bin", "to": "s3/stop/data.bin"},
                          {"from": "home/stop.bin", "to": "home/stopped/stop.bin"}])
        wait_for(lambda: all(other.get(f"copy/{i}").json()["bytes"] > 0 for i in ids), 60, interval=0.05,
                 what="both copies to be under way")
    finally:
        other.stop()
    # the S3 copy (tens of MiB/s) was interrupted: its multipart upload was aborted
    assert "the server is stopping" in other.log.read_text()
    assert not s3.exists("staging/stop/data.bin")
    assert s3.call_s3("list_multipart_uploads", Bucket="staging").get("Uploads", []) == []
    # the local copy may have finished first; either way no partial file or temporary name
    left = os.listdir(home / "stopped") if (home / "stopped").exists() else []
    assert left in ([], ["stop.bin"]), left
    if left:
        assert os.path.getsize(home / "stopped" / "stop.bin") == 200 * MB
    os.remove(remote / "stop" / "data.bin")


def json_config(server) -> dict:
    import json

    return json.loads(server.config.read_text())


class Forwarder:
    """A TCP forwarder from a port of ours to a real server: while it is stopped, the
    port refuses connections (the storage looks down); started again, it is back."""

    def __init__(self, port, target_port):
        import socket

        self.socket_mod = socket
        self.port, self.target_port = port, target_port
        self.listener = None

    def start(self):
        import threading

        s = self.socket_mod.socket()
        s.setsockopt(self.socket_mod.SOL_SOCKET, self.socket_mod.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return self

    def _accept(self, listener):
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = self.socket_mod.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def stop(self):
        if self.listener:
            self.listener.close()
            self.listener = None


@pytest.mark.timeout(300)
def test_a_copy_to_storage_that_is_down_is_retried_until_it_is_back(stage, s3server, tmp_path):
    """A real transient fault: the S3 endpoint refuses connections when the copy starts."""
    server, home, remote, s3 = stage
    forwarder = Forwarder(free_port(), s3server.port)
    adaptors = [{"name": "home", "type": "local", "path": str(home)},
                {"name": "late", "type": "s3", "bucket": "staging", "prefix": "late",
                 "endpoint_url": f"http://127.0.0.1:{forwarder.port}", "credentials": "s3"}]
    (home / "late.bin").write_bytes(b"worth the wait" * 1000)
    other = JupyterServer(tmp_path / "server", adaptors, {"s3": s3server.credentials()},
                          options=["--SkerryDataAPI.copy_retries=6"]).start()
    try:
        [cid] = other.copy([{"from": "home/late.bin", "to": "late/here/late.bin"}])
        wait_for(lambda: f"copy {cid}: " in other.log.read_text() and "retry 1" in other.log.read_text(), 60,
                 what="a first retry")
        assert other.get(f"copy/{cid}").json()["state"] == "running"
        forwarder.start()
        state = other.wait_copy(cid, 120)
        assert state["state"] == "done", state
        assert state["verified"] == "size+etag"
        assert s3.cat("staging/late/here/late.bin") == b"worth the wait" * 1000
    finally:
        other.stop()
        forwarder.stop()


def test_only_the_newest_copy_states_are_kept(monkeypatch):
    """The states of finished copies are forgotten oldest first beyond KEEP_COPIES."""
    from skerry.adaptors import staging
    from skerry.adaptors.federation import SkerryFileSystem
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.implementations.dirfs import DirFileSystem

    monkeypatch.setattr(staging, "KEEP_COPIES", 3)
    fs = SkerryFileSystem({"mem": DirFileSystem(path="/keep-test", fs=MemoryFileSystem())})
    fs.pipe_file("mem/a.txt", b"a")
    stager = staging.Stager(fs, workers=1)
    try:
        ids = []
        for i in range(5):
            ids += stager.submit([{"from": "mem/a.txt", "to": f"mem/copy{i}.txt"}])
            wait_for(lambda last=ids[-1]: stager.status(last)["state"] == "done", 30, what="a copy")
        assert [stager.status(i) is not None for i in ids] == [False, False, True, True, True]
        assert fs.cat_file("mem/copy4.txt") == b"a"
    finally:
        stager.shutdown(wait=True)


def test_a_copy_that_breaks_while_the_server_stops_says_the_server_is_stopping(monkeypatch):
    """Once ``shutdown`` was called, whatever breaks a running copy (the process's executors
    and event loops closing: a RuntimeError in CI) is reported as the stop, not as itself."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    from skerry.adaptors import staging
    from skerry.adaptors.federation import SkerryFileSystem

    fs = SkerryFileSystem({"mem": DirFileSystem(path="/stop-test", fs=MemoryFileSystem())})
    fs.pipe_file("mem/a.txt", b"a" * 1000)
    stager = staging.Stager(fs, workers=1)

    def broken_by_the_stop(self, c, *args):
        self.shutdown()  # the server began to stop...
        raise RuntimeError("cannot schedule new futures after shutdown")  # ...and took an executor with it

    monkeypatch.setattr(staging.Stager, "_stream", broken_by_the_stop)
    try:
        [copy_id] = stager.submit([{"from": "mem/a.txt", "to": "mem/b.txt"}])
        done = wait_for(lambda: (s := stager.status(copy_id))["state"] == "failed" and s, 30, what="the copy to fail")
    finally:
        stager.shutdown(wait=True)
    assert done["error"].startswith("copying skerry://mem/a.txt to skerry://mem/b.txt failed: ")
    assert staging.STOPPING in done["error"] and "RuntimeError" not in done["error"]
    assert not fs.exists("mem/b.txt") and fs.ls("mem", detail=False) == ["mem/a.txt"]  # nothing left behind
