"""Staging throughput: SFTP -> S3 through skerry's staging engine versus ``rclone copy``.

    python bench/staging.py [--size-mib 1024] [--runs 2]

One real OpenSSH sshd (tests/servers.py ``Sshd``) and one moto S3-API server on
127.0.0.1. moto runs as its own process (``moto_server``), not in this one, so that
skerry's copy does not share an interpreter (and its GIL) with the server it writes to.
A ``--size-mib`` file on the SFTP side is copied to S3:

- skerry: ``Stager(fs).submit([{"from": "skerry://hpc/...", "to": "skerry://s3/..."}])``
  on a ``SkerryFileSystem`` with an sftp and an s3 adaptor, timed until ``done``
  (which includes its size + ETag verification);
- rclone: ``rclone copy`` between on-the-fly remotes on the same sshd (same key) and the
  same moto; the S3 keys go to rclone by environment, never on its command line.

Runs are interleaved; prints each run, the medians and the ratio (target >= 0.8).
Asserts nothing.
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

from skerry.adaptors.config import build_federation  # noqa: E402
from skerry.adaptors.federation import SkerryFileSystem  # noqa: E402
from skerry.adaptors.staging import Stager  # noqa: E402

BUCKET = "bench-staging"
KEYS = {"key": "testing", "secret": "testing"}


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


def skerry_copy(fs, name: str, target: str) -> float:
    stager = Stager(fs, workers=1)
    t0 = time.perf_counter()
    [copy_id] = stager.submit([{"from": f"skerry://hpc/{name}", "to": f"skerry://s3/{target}"}])
    status = wait_for(lambda: stager.status(copy_id)["state"] in ("done", "failed") and stager.status(copy_id),
                      3600, interval=0.05, what="the staging copy")
    seconds = time.perf_counter() - t0
    stager.shutdown()
    if status["state"] != "done":
        raise RuntimeError(f"staging copy failed: {status['error']}")
    return seconds


def rclone_copy(sshd: Sshd, root: Path, name: str, moto: MotoProcess, target_dir: str) -> float:
    env = dict(os.environ, RCLONE_S3_ACCESS_KEY_ID=KEYS["key"], RCLONE_S3_SECRET_ACCESS_KEY=KEYS["secret"])
    env.pop("AWS_CA_BUNDLE", None)  # rclone's S3 client refuses a CA bundle with its own transport
    key_file = sshd.base / "user_key"
    source = f":sftp,host=127.0.0.1,port={sshd.port},user={sshd.username},key_file={key_file}:{root}/{name}"
    target = f":s3,provider=Other,endpoint='{moto.url}':{BUCKET}/{target_dir}/"  # quoted: the URL holds colons
    t0 = time.perf_counter()
    done = subprocess.run(["rclone", "--config", "/dev/null", "copy", source, target],
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

        fs = SkerryFileSystem(*build_federation({
            "adaptors": [
                {"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": sshd.port,
                 "username": sshd.username, "path": str(root), "credentials": "hpc"},
                {"name": "s3", "type": "s3", "bucket": BUCKET, "endpoint_url": moto.url, "credentials": "s3"},
            ],
            "credentials": {"hpc": {"private_key": sshd.key}, "s3": KEYS},
        }))
        raw = s3fs.S3FileSystem(key=KEYS["key"], secret=KEYS["secret"], client_kwargs={"endpoint_url": moto.url},
                                skip_instance_cache=True)
        raw.mkdir(BUCKET)

        times = {"skerry": [], "rclone": []}
        print(f"SFTP -> S3, {args.size_mib} MiB, {args.runs} interleaved runs")
        for run in range(args.runs):
            t = skerry_copy(fs, name, f"skerry-{run}/{name}")
            assert raw.info(f"{BUCKET}/skerry-{run}/{name}")["size"] == size
            raw.rm(f"{BUCKET}/skerry-{run}", recursive=True)
            times["skerry"].append(t)
            t = rclone_copy(sshd, root, name, moto, f"rclone-{run}")
            assert raw.info(f"{BUCKET}/rclone-{run}/{name}")["size"] == size
            raw.rm(f"{BUCKET}/rclone-{run}", recursive=True)
            times["rclone"].append(t)
            print(f"run {run + 1}: skerry {size / times['skerry'][-1] / 1e6:.0f} MB/s, "
                  f"rclone {size / times['rclone'][-1] / 1e6:.0f} MB/s", flush=True)
        skerry, rclone = (statistics.median(times[k]) for k in ("skerry", "rclone"))
        ratio = rclone / skerry
        flag = "ok" if ratio >= 0.8 else "MISSED"
        print(f"median: skerry {skerry:.1f} s ({size / skerry / 1e6:.0f} MB/s), rclone {rclone:.1f} s "
              f"({size / rclone / 1e6:.0f} MB/s); skerry/rclone speed {ratio:.2f} (target >= 0.8: {flag})")
    finally:
        moto.stop()
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
