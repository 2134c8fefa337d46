"""Staging throughput: SFTP -> S3 through skerry's data API versus ``rclone copy``.

    python bench/staging.py [--size-mib 1024] [--runs 2]

One real OpenSSH sshd (tests/servers.py ``Sshd``) and one moto S3-API server on
127.0.0.1, moto as its own process (``moto_server``). A ``--size-mib`` file on the SFTP
side is copied to S3, every copy from cold (no SSH or S3 session open before its clock
starts):

- skerry: a fresh Jupyter server with the skerry extensions and an sftp and an s3 adaptor
  (tests/jupyterserver.py, started before the clock), then ``POST /skerry/api/v1/copy``
  timed until ``GET copy/<id>`` says ``done`` (polled every 50 ms; done includes its
  size + ETag verification): what a user's request costs;
- rclone: ``rclone copy`` between on-the-fly remotes on the same sshd (same key) and the
  same moto, with its defaults, and again with its own tuned flags (``TUNED``: bigger and
  more concurrent multipart uploads); the S3 keys go to rclone by environment, never on
  its command line;
- the sink: the same file from local disk to the same moto by rclone (its defaults, the
  faster of its two settings against moto here), with no SFTP at all: about what this S3
  end accepts, which bounds both copies when they come near it.

Runs are interleaved; prints each run, the medians and the ratios (target: skerry at
least 0.8 of rclone). Asserts nothing.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import s3fs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, wait_for  # noqa: E402
from servers import Sshd  # noqa: E402

from jupyterserver import JupyterServer  # noqa: E402

BUCKET = "bench-staging"
KEYS = {"key": "testing", "secret": "testing"}
TUNED = ["--s3-upload-concurrency", "8", "--s3-chunk-size", "32M", "--sftp-concurrency", "128"]


class MotoProcess:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, 30, what="moto_server")
        return self

    def _up(self):
        try:
            httpx.get(self.url, timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def skerry_copy(base: Path, adaptors: list[dict], credentials: dict, name: str, target: str) -> float:
    """Seconds of a copy through a fresh server's data API (module docstring)."""
    server = JupyterServer(base, adaptors, credentials).start()
    try:
        t0 = time.perf_counter()
        [copy_id] = server.copy([{"from": f"skerry://hpc/{name}", "to": f"skerry://s3/{target}"}])
        status = wait_for(lambda: (state := server.get(f"copy/{copy_id}").json())["state"] in ("done", "failed")
                          and state, 3600, interval=0.05, what="the staging copy")
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    if status["state"] != "done":
        raise RuntimeError(f"staging copy failed: {status['error']}")
    return seconds


def rclone_copy(source: str, moto: MotoProcess, target_dir: str, flags: list[str] = ()) -> float:
    env = dict(os.environ, RCLONE_S3_ACCESS_KEY_ID=KEYS["key"], RCLONE_S3_SECRET_ACCESS_KEY=KEYS["secret"])
    env.pop("AWS_CA_BUNDLE", None)  # rclone's S3 client refuses a CA bundle with its own transport
    target = f":s3,provider=Other,endpoint='{moto.url}':{BUCKET}/{target_dir}/"  # quoted: the URL holds colons
    t0 = time.perf_counter()
    done = subprocess.run(["rclone", "--config", "/dev/null", "copy", *flags, source, target],
                          env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"rclone copy failed: {done.stderr[-2000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone is not installed (apt-get install rclone)")

    base = Path(tempfile.mkdtemp(prefix="bench-staging-"))
    sshd = Sshd(base / "sshd").start()
    moto = MotoProcess().start()
    try:
        root = base / "hpc"
        root.mkdir()
        name = f"big-{args.size_mib}m.bin"
        block = os.urandom(64 * 1024 * 1024)
        with open(root / name, "wb") as f:
            for _ in range(args.size_mib // 64):
                f.write(block)
        size = (root / name).stat().st_size

        adaptors = [{"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": sshd.port,
                     "username": sshd.username, "path": str(root), "credentials": "hpc"},
                    {"name": "s3", "type": "s3", "bucket": BUCKET, "endpoint_url": moto.url, "credentials": "s3"}]
        credentials = {"hpc": {"private_key": sshd.key}, "s3": KEYS}
        raw = s3fs.S3FileSystem(key=KEYS["key"], secret=KEYS["secret"], client_kwargs={"endpoint_url": moto.url},
                                skip_instance_cache=True)
        raw.mkdir(BUCKET)
        sftp = (f":sftp,host=127.0.0.1,port={sshd.port},user={sshd.username},"
                f"key_file={sshd.base / 'user_key'}:{root}/{name}")
        copies = {"skerry": lambda run: skerry_copy(base / f"server-{run}", adaptors, credentials, name,
                                                    f"skerry-{run}/{name}"),
                  "rclone": lambda run: rclone_copy(sftp, moto, f"rclone-{run}"),
                  "rclone tuned": lambda run: rclone_copy(sftp, moto, f"rclone-tuned-{run}", TUNED),
                  "sink": lambda run: rclone_copy(str(root / name), moto, f"sink-{run}")}
        prefixes = {"skerry": "skerry", "rclone": "rclone", "rclone tuned": "rclone-tuned", "sink": "sink"}
        times = {k: [] for k in copies}
        print(f"SFTP -> S3, {args.size_mib} MiB, {args.runs} interleaved runs, each copy from cold")
        for run in range(args.runs):
            for label, copy in copies.items():
                times[label].append(copy(run))
                where = f"{BUCKET}/{prefixes[label]}-{run}"
                assert raw.info(f"{where}/{name}")["size"] == size
                raw.rm(where, recursive=True)
            print(f"run {run + 1}: " + ", ".join(f"{k} {size / v[-1] / 1e6:.0f} MB/s" for k, v in times.items()),
                  flush=True)
        speed = {k: size / statistics.median(v) / 1e6 for k, v in times.items()}
        ratio = speed["skerry"] / speed["rclone"]
        print("median: " + ", ".join(f"{k} {v:.0f} MB/s" for k, v in speed.items()))
        print(f"skerry/rclone {ratio:.2f} (target >= 0.8: {'ok' if ratio >= 0.8 else 'MISSED'}), "
              f"skerry/rclone tuned {speed['skerry'] / speed['rclone tuned']:.2f}; of the sink: "
              f"skerry {speed['skerry'] / speed['sink']:.2f}, rclone {speed['rclone'] / speed['sink']:.2f}, "
              f"rclone tuned {speed['rclone tuned'] / speed['sink']:.2f}")
    finally:
        moto.stop()
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
