"""WebDAV throughput and listing speed, against nginx on the same machine.

    python bench/webdav.py [--size-mib 1024] [--runs 3] [--files 10000]

Starts a real platform (``skerry up --proxy chp`` in a temp data dir) with alice's server, and an
nginx (its own config in a temp dir, ``dav_methods PUT``) serving alice's home folder.
nginx is routed behind the same configurable-http-proxy at ``/bench-nginx/`` through
the proxy's REST API. Then, with curl as the one client for everything:

- GET and PUT of one ``--size-mib`` file through the hub URL (proxy -> WebDAV) versus
  nginx behind the same proxy (target >= 0.8 each);
- the same on the WebDAV server's own port versus nginx direct (target >= 0.5);
- PROPFIND Depth 1 on a ``--files``-file folder through the hub URL, cold (the listing
  cache expired) and warm (target < 0.5 s).

Each figure is the median of ``--runs`` interleaved runs. Prints figures, asserts
nothing. Secrets go to curl by stdin (``-K -``), never on its command line.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Platform, free_port, kill_leftovers, wait_for  # noqa: E402

NGINX_CONF = """
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;
    client_body_temp_path {home};
    server {{
        listen 127.0.0.1:{port};
        location /bench-nginx/ {{
            alias {home}/;
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""

ROUTE = "/bench-nginx"


class Nginx:
    def __init__(self, home: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.dir / "nginx.conf"
        # the body temp folder is the served folder: PUT ends in a rename, as ours does
        self.conf.write_text(NGINX_CONF.format(dir=self.dir, home=home, port=self.port))
        self.proc = None

    def start(self):
        if not shutil.which("nginx"):
            raise SystemExit("nginx is not installed (apt-get install nginx-light)")
        self.proc = subprocess.Popen(["nginx", "-c", str(self.conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers(self.url), 15, what="nginx")
        return self

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers(url) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def add_proxy_route(platform: Platform, target: str):
    """Route ``/bench-nginx`` to nginx through the proxy's REST API (like the hub does)."""
    api_port = json.loads((platform.data_dir / "run" / "ports.json").read_text())["proxy_api"]
    token = (platform.data_dir / "secrets" / "proxy-auth-token").read_text().strip()
    r = httpx.post(f"http://127.0.0.1:{api_port}/api/routes{ROUTE}", json={"target": target},
                   headers={"Authorization": f"token {token}"})
    r.raise_for_status()


def curl(args: list[str], auth: str | None = None) -> dict:
    """Run one curl transfer; returns its speed (bytes/s), status and time."""
    config = f'user = "{auth}"\n' if auth else ""
    done = subprocess.run(["curl", "-sS", "-K", "-", "-o", "/dev/null", "-w",
                           "%{http_code} %{speed_download} %{speed_upload} %{time_total}", *args],
                          input=config, capture_output=True, text=True, timeout=600)
    code, down, up, total = done.stdout.split()
    if not code.startswith("2"):
        raise RuntimeError(f"curl {args[-1]}: HTTP {code} {done.stderr}")
    return {"speed": max(float(down), float(up)), "time": float(total)}


def gbps(speeds) -> str:
    return f"{statistics.median(speeds) / 1e9:.2f} GB/s"


def transfer_figures(name, webdav_url, nginx_url, auth, source: Path, runs: int, target: float):
    """Median GET and PUT speeds of WebDAV and nginx, interleaved, and their ratio."""
    results = {}
    for method in ("GET", "PUT"):
        speeds = {"webdav": [], "nginx": []}
        for _ in range(runs):
            for who, base, who_auth in (("webdav", webdav_url, auth), ("nginx", nginx_url, None)):
                if method == "GET":
                    speeds[who].append(curl([f"{base}/{source.name}"], who_auth)["speed"])
                else:
                    speeds[who].append(curl(["-T", str(source), f"{base}/put-{who}.bin"], who_auth)["speed"])
        ratio = statistics.median(speeds["webdav"]) / statistics.median(speeds["nginx"])
        flag = "ok" if ratio >= target else "MISSED"
        print(f"{name:<14} {method}: webdav {gbps(speeds['webdav'])}  nginx {gbps(speeds['nginx'])}  "
              f"ratio {ratio:.2f} (target >= {target}: {flag})", flush=True)
        results[method] = ratio
    return results


def propfind_figures(url: str, auth: tuple, runs: int):
    """Median seconds of PROPFIND Depth 1, cold (cache expired) and warm."""
    from skerry.adaptors.davprovider import LISTING_TTL

    cold, warm, count = [], [], 0
    with httpx.Client(auth=auth, timeout=120) as client:
        for _ in range(runs):
            time.sleep(LISTING_TTL + 0.1)  # the provider's listing cache has expired
            for bucket in (cold, warm):
                t0 = time.perf_counter()
                r = client.request("PROPFIND", url, headers={"Depth": "1"})
                bucket.append(time.perf_counter() - t0)
                assert r.status_code == 207, r.status_code
                count = len(re.findall(r"<(?:\w+:)?response>", r.text))
    return statistics.median(cold), statistics.median(warm), count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-webdav-"))
    # nginx is routed through configurable-http-proxy's REST API: the platform runs that proxy
    platform = Platform(base / "data", command=[sys.executable, "-m", "skerry", "up", "--proxy", "chp"]).start()
    nginx = None
    try:
        platform.create_user("alice")
        platform.start_server("alice")
        token = platform.user_token("alice")
        state = platform.api("GET", "/hub/api/users/alice?include_stopped_servers").json()
        dav_port = state["servers"][""]["state"]["dav_port"]
        home = platform.data_dir / "users" / "alice"

        source = home / f"bench-{args.size_mib}m.bin"
        block = os.urandom(64 * 1024 * 1024)
        with open(source, "wb") as f:
            for _ in range(args.size_mib // 64):
                f.write(block)
        many = home / "many"
        many.mkdir()
        for i in range(args.files):
            (many / f"f{i:05d}.txt").write_bytes(b"x")

        nginx = Nginx(home).start()
        add_proxy_route(platform, nginx.url)
        auth = f"alice:{token}"
        print(f"{args.size_mib} MiB file, {args.runs} runs each, medians; client: curl")
        hub = transfer_figures("through proxy", f"{platform.url}/dav/alice/home", f"{platform.url}{ROUTE}",
                               auth, source, args.runs, 0.8)
        add_proxy_route(platform, nginx.url)  # in case the hub's route check ran meanwhile
        direct = transfer_figures("direct", f"http://127.0.0.1:{dav_port}/dav/alice/home",
                                  f"{nginx.url}{ROUTE}", auth, source, args.runs, 0.5)
        cold, warm, count = propfind_figures(f"{platform.url}/dav/alice/home/many/", ("alice", token), args.runs)
        flag = "ok" if cold < 0.5 else "MISSED"
        print(f"PROPFIND Depth 1, {args.files} files ({count} responses) through proxy: "
              f"cold {cold:.3f} s, warm {warm:.3f} s (target < 0.5 s: {flag})")
        return hub, direct, cold
    finally:
        if nginx:
            nginx.stop()
        platform.stop()
        kill_leftovers(platform.data_dir)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
