"""The data path: skerry's WebDAV against the servers a user would run instead, on one folder.

    python bench/webdav.py [--size-mib 1024] [--runs 3] [--files 10000] [--small 2000]

Starts a real platform (``skerry up``, its default proxy: HAProxy) with alice's server and, on
alice's home folder, ``rclone serve webdav`` and nginx (its DAV modules; ``apt-get
install nginx-light libnginx-mod-http-dav-ext libnginx-mod-http-lua``). curl is the one client. Each workload
runs ``--runs`` times, the servers interleaved in each run, each workload started with
nothing of the last one left to write to disk (``sync``); figures are medians:

- GET and PUT of one ``--size-mib`` file;
- PROPFIND Depth 1 of a ``--files``-file folder: first one that server has never listed
  (made before the servers started, one for each server and run: nothing of it is in any
  cache); then another just after one of its files was rewritten behind the servers'
  backs (as a job would), with a check that the answer shows the new size (``rclone
  serve`` keeps a folder's listing 5 minutes by default, and answers the old one); then
  the same PROPFIND again ``AGAIN_AFTER`` seconds later, nothing changed;
- ``--small`` 10 KB files over 8 connections: all PUT, then all GET (files/s);
- server-side COPY of 100 x 1 MB files, one after another;

on six servers: skerry through the hub URL (the proxy, then the endpoint's front where nginx
with its Lua module is installed, and the endpoint; ``SKERRY_DAV_FRONT=off`` in the bench's
environment measures the endpoint alone), skerry on its own port, rclone and nginx on
theirs, and rclone and nginx each behind an HAProxy configured as the platform's. Beside the
small files: each server's CPU per request, from ``/proc`` (behind a proxy: the server's and
the proxy's; skerry's: its endpoint's, its front's and alice's Jupyter server's, which reads
the endpoint's feed of writes for its find index), each one's PUTs
alone, and the disk alone in the folder those PUTs filled: the bench itself creating the
same files there with 8 threads (no server, no network), the ceiling of that server's PUTs.

Then the proxy's own figures: the same 1 GiB GET and 10 KB GETs to nginx through an
HAProxy configured as the platform configures its own (its configuration, a route to
nginx), through Traefik (as ``--proxy traefik`` sets its entrypoint) and through
configurable-http-proxy, against nginx alone.

Ratios are skerry through the hub over rclone on its own port (what a user would run
instead), the issue's targets printed beside them; then skerry through the hub over
rclone behind the same kind of proxy, and DESIGN.md's WebDAV targets (against nginx behind
the same proxy, and on the server's own port). Prints figures, asserts
nothing. Secrets go to curl by stdin (``-K -``), never on its command line.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import xml.etree.ElementTree as ET

from skerry.haproxy import find_haproxy
from skerry.nodeproxy import find_proxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Platform, descendants, free_port, kill_leftovers, pids_of, wait_for  # noqa: E402

NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_http_dav_ext_module.so;
user root;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;
    client_body_temp_path {home}/.nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            root {home};
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
        }}
    }}
}}
"""

SMALL = 10 * 1000
BEHIND = "rclone behind HAProxy"
NGINX_BEHIND = "nginx behind HAProxy"
CONNECTIONS = 8
COPIES, COPY_SIZE = 100, 1000 * 1000
SERVERS = 6  # skerry through the hub and on its port, rclone, nginx, each of those two behind HAProxy
AGAIN_AFTER = 3.0  # seconds before a folder is listed again: past skerry's 2 s listing cache


class Server:
    """A process serving ``url`` (the folder's root); ``pids()`` are its processes."""

    def __init__(self, name: str, url: str, auth: str | None = None):
        self.name, self.url, self.auth = name, url, auth
        self.proc = None

    def pids(self) -> set[int]:
        return {self.proc.pid} | descendants(self.proc.pid) if self.proc else set()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def jupyter_server(platform: Platform) -> set[int]:
    """The pids of alice's Jupyter server (the processes of her account that run ``jupyterhub.singleuser``)."""
    uid, found = platform.account("alice").pw_uid, set()
    for pid in pids_of("jupyterhub.singleuser"):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                found.add(pid)
        except OSError:  # ended meanwhile
            continue
    return found


def cpu_seconds(pids) -> float:
    """User + system CPU seconds the processes have used (``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def start(server: Server, argv: list[str], **kwargs) -> Server:
    server.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    wait_for(lambda: answers(server.url), 15, what=server.name)
    return server


def answers(url) -> bool:
    try:
        httpx.request("OPTIONS", url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def nginx(home: Path, workdir: Path) -> Server:
    if not shutil.which("nginx"):
        raise SystemExit("nginx is not installed (apt-get install nginx-light libnginx-mod-http-dav-ext)")
    port = free_port()
    (home / ".nginx-tmp").mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, home=home, port=port))
    return start(Server("nginx", f"http://127.0.0.1:{port}"), ["nginx", "-c", str(conf), "-g", "daemon off;"])


def rclone(home: Path) -> Server:
    if not shutil.which("rclone"):
        raise SystemExit("rclone is not installed (apt-get install rclone)")
    port = free_port()
    return start(Server("rclone", f"http://127.0.0.1:{port}"),
                 ["rclone", "serve", "webdav", "--addr", f"127.0.0.1:{port}", str(home)])


def haproxy_like_the_platform(platform: Platform, target: str, workdir: Path, name: str = "haproxy") -> Server:
    """An HAProxy with the platform's own configuration, on a port of its own, with one
    route: everything to ``target``."""
    run = platform.data_dir / "run"
    port = free_port()
    workdir = workdir / name.replace(" ", "-")  # its own files: its own map and socket
    workdir.mkdir()
    routes = workdir / "routes.map"
    routes.write_text(f"/ {target.removeprefix('http://')}\n")
    lines = []
    for line in (run / "haproxy.cfg").read_text().splitlines():
        if line.strip().startswith("bind "):
            line = f"    bind 127.0.0.1:{port}"
        elif line.strip().startswith("stats socket "):
            line = f"    stats socket {workdir / 'haproxy.sock'} mode 600 level admin"
        lines.append(line.replace(str(run / "haproxy-routes.map"), str(routes)))
    conf = workdir / "haproxy.cfg"
    conf.write_text("\n".join(lines) + "\n")
    return start(Server(name, f"http://127.0.0.1:{port}"), [find_haproxy(), "-db", "-f", str(conf)])


def traefik(target: str, workdir: Path) -> Server:
    """Traefik with one route, everything to ``target``, configured as ``skerry up --proxy
    traefik`` configures its entrypoint (paths passed as sent)."""
    port = free_port()
    workdir = workdir / "traefik"
    workdir.mkdir()
    routes = workdir / "traefik-routes.yaml"
    routes.write_text(json.dumps({"http": {
        "routers": {"all": {"rule": "PathPrefix(`/`)", "service": "target", "entryPoints": ["public"]}},
        "services": {"target": {"loadBalancer": {"servers": [{"url": target}]}}}}}))  # JSON is YAML
    conf = workdir / "traefik.yaml"
    conf.write_text(json.dumps({"entryPoints": {"public": {"address": f"127.0.0.1:{port}",
                                                           "http": {"sanitizePath": False}}},
                                "providers": {"file": {"filename": str(routes)}}, "log": {"level": "ERROR"}}))
    return start(Server("traefik", f"http://127.0.0.1:{port}"), ["traefik", "--configfile", str(conf)])


def chp(target: str) -> Server:
    port, api = free_port(), free_port()
    env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": os.urandom(16).hex()}
    program = find_proxy(log=lambda line: print(line, file=sys.stderr))
    return start(Server("chp", f"http://127.0.0.1:{port}"),
                 [program, "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                  "--api-port", str(api), "--default-target", target, "--log-level", "error"], env=env)


def curl(config: str, auth: str | None = None, parallel: int = 0) -> float:
    """Run curl on a config (``-K -``); every transfer must answer 2xx. Returns the wall
    seconds, from curl's start to its end."""
    args = ["curl", "-sS", "-K", "-", "-w", "%{http_code}\n"]
    if parallel:
        args += ["--parallel", "--parallel-max", str(parallel)]
    config = (f'user = "{auth}"\n' if auth else "") + config
    t0 = time.perf_counter()
    done = subprocess.run(args, input=config, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - t0
    codes = done.stdout.split()
    bad = [c for c in codes if not c.startswith("2")]
    if done.returncode or bad or not codes:
        raise RuntimeError(f"curl: exit {done.returncode}, answers {sorted(set(bad))} {done.stderr[-300:]}")
    return took


def get_big(server: Server, name: str) -> float:
    return curl(f'url = "{server.url}/{name}"\noutput = "/dev/null"\n', server.auth)


def put_big(server: Server, source: Path, tag: str) -> float:
    return curl(f'upload-file = "{source}"\nurl = "{server.url}/put-{tag}.bin"\noutput = "/dev/null"\n',
                server.auth)


def propfind(server: Server, folder: str, name: str, size: int) -> tuple[float, bool]:
    """The seconds of a PROPFIND Depth 1 of ``folder``, and whether its answer lists the file
    ``name`` at ``size`` bytes (the listing is current)."""
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        took = curl(f'request = "PROPFIND"\nheader = "Depth: 1"\nurl = "{server.url}/{folder}/"\n'
                    f'output = "{out.name}"\n', server.auth)
        listed = {r.findtext("{DAV:}href").rstrip("/").rpartition("/")[2]: r.findtext(".//{DAV:}getcontentlength")
                  for r in ET.parse(out.name).getroot().iter("{DAV:}response")}
    return took, listed.get(name) == str(size)


def change_behind(folder: Path, name: str, size: int) -> None:
    """Rewrite the file ``name`` in ``folder`` at ``size`` bytes, as a job or a user's kernel
    would: behind every server's back."""
    with open(folder / name, "r+b") as f:  # the file keeps its owner
        f.truncate(0)
        f.write(b"y" * size)


def small_files(server: Server, sources: list[Path], tag: str, put: bool = True) -> tuple[float, float]:
    """PUT every source to ``small-<tag>/`` (8 connections), then GET them all back: the
    seconds of each (the PUTs' 0 with ``put=False``)."""
    folder = f"{server.url}/small-{tag}"
    took = 0.0
    if put:
        mkcol(server, f"small-{tag}")
        took = curl("".join(f'upload-file = "{s}"\nurl = "{folder}/{s.name}"\noutput = "/dev/null"\n'
                            for s in sources), server.auth, CONNECTIONS)
    return took, curl("".join(f'url = "{folder}/{s.name}"\noutput = "/dev/null"\n' for s in sources),
                      server.auth, CONNECTIONS)


def disk_alone(folder: Path, sources: list[Path]) -> float:
    """Files/s at which ``CONNECTIONS`` threads of this process create the sources again in
    ``folder`` (as ``disk-<name>``: open, write, close, what a server's PUT cannot do
    without), with no server and no network: the file system's own ceiling there. Creating a
    file costs this machine's ext4 from 0.07 to 1 ms of CPU, by folder and by moment (its
    inode allocator steps over recently deleted inodes), so it is measured in the folder a
    server's PUTs have just filled."""
    datas = [(folder / f"disk-{s.name}", s.read_bytes()) for s in sources]

    def create(item):
        path, data = item
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        list(pool.map(create, datas))
    return len(sources) / (time.perf_counter() - t0)


def mkcol(server: Server, folder: str):
    """A new folder (WebDAV's PUT makes no parent folders)."""
    curl(f'request = "MKCOL"\nurl = "{server.url}/{folder}/"\noutput = "/dev/null"\n', server.auth)


def copies(server: Server, tag: str) -> float:
    mkcol(server, f"copy-{tag}")
    blocks = []
    for i in range(COPIES):
        blocks.append(f'request = "COPY"\nheader = "Destination: {server.url}/copy-{tag}/c{i:03d}.bin"\n'
                      f'url = "{server.url}/copysrc/c{i:03d}.bin"\noutput = "/dev/null"\n'
                      + (f'user = "{server.auth}"\n' if server.auth else ""))
    return curl("next\n".join(blocks))


def verdict(met: bool) -> str:
    """How a target stands, as the report prints it."""
    return "ok" if met else "MISSED"


def median(values) -> float:
    return statistics.median(values)


def prepare(home: Path, args, first_folders: list[str]) -> tuple[Path, list[Path]]:
    source = home / f"bench-{args.size_mib}m.bin"
    block = os.urandom(64 * 1024 * 1024)
    with open(source, "wb") as f:
        for _ in range(max(1, args.size_mib // 64)):
            f.write(block[: args.size_mib * 1024 * 1024] if args.size_mib < 64 else block)
    folders = [home / "many", *(home / name for name in first_folders)]
    for folder in folders:
        folder.mkdir()
        for i in range(args.files):
            (folder / f"f{i:05d}.txt").write_bytes(b"x")
    (home / "copysrc").mkdir()
    for i in range(COPIES):
        (home / "copysrc" / f"c{i:03d}.bin").write_bytes(block[i * 100:i * 100 + COPY_SIZE])
    uid, gid = owner_of(home)  # the endpoint runs as alice: what it serves is hers
    for folder in (*folders, home / "copysrc"):
        for path in (folder, *folder.iterdir()):
            os.chown(path, uid, gid)
    os.chown(source, uid, gid)
    smalls = Path(tempfile.mkdtemp(prefix="bench-small-"))
    sources = []
    for i in range(args.small):
        (smalls / f"s{i:05d}.bin").write_bytes(os.urandom(SMALL))
        sources.append(smalls / f"s{i:05d}.bin")
    return source, sources


def owner_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def never_listed(run: int, server: int) -> str:
    """The folder that server ``server`` lists first in run ``run``."""
    return f"first-{run}-{server}"


def measure(servers: list[Server], cpu_of: dict, source: Path, sources: list[Path], args) -> tuple[dict, dict, dict]:
    """{workload: {server: [figures]}}, CPU ms per small request per server, and per server
    whether each listing after a change showed it."""
    figures = {w: {s.name: [] for s in servers}
               for w in ("get", "put", "propfind_first", "propfind", "propfind_again", "small", "small_put", "disk",
                         "copy")}
    current = {s.name: [] for s in servers}  # whether each listing after a change showed it
    cpu = {s.name: [] for s in servers}
    size = source.stat().st_size
    for run in range(args.runs):
        for server in servers:
            tag = f"{server.name}-{run}".replace(" ", "-")
            os.sync()  # each workload starts with no write of the last one still going to disk
            figures["get"][server.name].append(size / get_big(server, source.name))
            figures["put"][server.name].append(size / put_big(server, source, tag))
            os.sync()  # the GiB just written: flushed before the listing is timed, not during it
            took, shown = propfind(server, never_listed(run, servers.index(server)), "f00000.txt", 1)
            figures["propfind_first"][server.name].append(took)
            if not shown:
                raise SystemExit(f"{server.name}: a folder never listed answered without its files")
            # a file of the folder rewritten behind the servers' backs, then listed; then listed
            # again a while later, nothing changed (a desktop client coming back to the folder)
            written = 2 + len(current[server.name]) + 10 * servers.index(server)  # a size no listing had
            change_behind(source.parent / "many", "f00000.txt", written)
            took, shown = propfind(server, "many", "f00000.txt", written)
            figures["propfind"][server.name].append(took)
            current[server.name].append(shown)
            time.sleep(AGAIN_AFTER)
            figures["propfind_again"][server.name].append(propfind(server, "many", "f00000.txt", written)[0])
            before = cpu_seconds(cpu_of[server.name]())
            puts, gets = small_files(server, sources, tag)
            cpu[server.name].append((cpu_seconds(cpu_of[server.name]()) - before) / (2 * len(sources)) * 1000)
            figures["small"][server.name].append(len(sources) / (puts + gets))
            figures["small_put"][server.name].append(len(sources) / puts)
            figures["disk"][server.name].append(disk_alone(source.parent / f"small-{tag}", sources))
            os.sync()
            figures["copy"][server.name].append(COPIES * COPY_SIZE / copies(server, tag))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    return figures, cpu, current


def report(servers, figures, cpu, current, args):
    hub, rc = servers[0].name, "rclone"
    rows = [("get", f"GET {args.size_mib} MiB", lambda v: f"{v / 1e9:.2f} GB/s", True),
            ("put", f"PUT {args.size_mib} MiB", lambda v: f"{v / 1e9:.2f} GB/s", True),
            ("propfind_first", f"PROPFIND Depth 1, {args.files:,} files, a folder never listed",
             lambda v: f"{v:.3f} s", False),
            ("propfind", f"PROPFIND Depth 1, {args.files:,} files, one just changed", lambda v: f"{v:.3f} s", False),
            ("propfind_again", f"the same PROPFIND {AGAIN_AFTER:.0f} s later, nothing changed",
             lambda v: f"{v:.3f} s", False),
            ("small", f"10 KB files, {CONNECTIONS} connections, PUT+GET", lambda v: f"{v:,.0f} files/s", True),
            ("copy", f"server-side COPY, {COPIES} x 1 MB", lambda v: f"{v / 1e9:.2f} GB/s", True)]
    names = [s.name for s in servers]
    print(f"\nmedians of {args.runs} interleaved runs; client: curl; ratio: {hub} / rclone (higher is better)\n")
    print("| workload | " + " | ".join(names) + " | ratio |")
    print("|---" * (len(names) + 2) + "|")
    for key, label, fmt, higher in rows:
        m = {n: median(figures[key][n]) for n in names}
        ratio = m[hub] / m[rc] if higher else m[rc] / m[hub]
        print(f"| {label} | " + " | ".join(fmt(m[n]) for n in names) + f" | {ratio:.2f}x |")
    print("| CPU per small request | " + " | ".join(f"{median(cpu[n]):.2f} ms" for n in names) + " | |")
    print("| listing after a change shows it | " + " | ".join(
        f"{sum(current[n])}/{len(current[n])}" for n in names) + " | |")
    print(f"\nthe 10 KB files' PUTs alone, then the disk alone in the same folder ({CONNECTIONS} threads of the bench "
          "creating the same files there, no server):")
    for n in names:
        puts, disk = median(figures["small_put"][n]), median(figures["disk"][n])
        print(f"  {n}: {puts:,.0f} PUTs/s, the disk {disk:,.0f} files/s")
    m = {k: {n: median(figures[k][n]) for n in names}
         for k in ("get", "propfind_first", "propfind", "propfind_again", "small")}
    print("\ntargets (issue 17), through the hub:")
    for key, label in (("get", "GET"), ("put", "PUT"), ("propfind_first", "PROPFIND never listed"),
                       ("propfind", "PROPFIND after a change"),
                       ("propfind_again", "PROPFIND again"), ("small", "10 KB files")):
        a, b = median(figures[key][hub]), median(figures[key][rc])
        ratio = b / a if key.startswith("propfind") else a / b
        print(f"  {label} >= 1.0x rclone: {ratio:.2f}x {verdict(ratio >= 1.0)}")
    print(f"  GET >= 1.0 GB/s: {m['get'][hub] / 1e9:.2f} GB/s {verdict(m['get'][hub] >= 1e9)}")
    for key, label in (("propfind_first", "of a folder never listed"), ("propfind", "after a change"),
                       ("propfind_again", "again, nothing changed")):
        print(f"  PROPFIND {label} <= 0.15 s: {m[key][hub]:.3f} s {verdict(m[key][hub] <= 0.15)}")
    if BEHIND in names:  # the same comparison with rclone behind the same kind of proxy
        print(f"\n{hub} / {BEHIND}:")
        for key, label in (("get", "GET"), ("put", "PUT"), ("propfind_first", "PROPFIND never listed"),
                           ("propfind", "PROPFIND after a change"), ("propfind_again", "PROPFIND again"),
                           ("small", "10 KB files"), ("copy", "COPY")):
            a, b = median(figures[key][hub]), median(figures[key][BEHIND])
            print(f"  {label}: {(b / a if key.startswith('propfind') else a / b):.2f}x")
    if NGINX_BEHIND in names:  # the targets DESIGN.md sets, against nginx
        port = servers[1].name
        print("\nDESIGN.md's WebDAV targets:")
        for key, label in (("get", "GET"), ("put", "PUT")):
            through = median(figures[key][hub]) / median(figures[key][NGINX_BEHIND])
            direct = median(figures[key][port]) / median(figures[key]["nginx"])
            print(f"  {label} through the hub >= 0.8x {NGINX_BEHIND}: {through:.2f}x {verdict(through >= 0.8)}")
            print(f"  {label} on its port >= 0.5x nginx on its own: {direct:.2f}x {verdict(direct >= 0.5)}")
        first = median(figures["propfind_first"][hub])
        print(f"  PROPFIND of a folder never listed < 0.5 s: {first:.3f} s {verdict(first < 0.5)}")
        small = median(figures["small"][hub]) / median(figures["small"][NGINX_BEHIND])
        print(f"  (no target) 10 KB files through the hub / {NGINX_BEHIND}: {small:.2f}x")


def proxy_figures(platform, nginx_server: Server, source: Path, sources: list[Path], workdir: Path, args):
    """1 GiB GET and 10 KB GETs to nginx: through HAProxy as the platform runs it, through
    Traefik and configurable-http-proxy, and direct."""
    names = {"haproxy": "HAProxy (the platform's)", "traefik": "Traefik", "chp": "configurable-http-proxy",
             "nginx": "nginx alone"}
    proxies = []  # each stopped below, even when a later one fails to start
    try:
        proxies.append(haproxy_like_the_platform(platform, nginx_server.url, workdir))
        proxies.append(traefik(nginx_server.url, workdir))
        proxies.append(chp(nginx_server.url))
        ways = [*proxies, nginx_server]
        size = source.stat().st_size
        gets = {w.name: [] for w in ways}
        smalls = {w.name: [] for w in ways}
        cpu = {w.name: [] for w in ways}
        for _ in range(args.runs):
            for way in ways:
                gets[way.name].append(size / get_big(way, source.name))
                before = cpu_seconds(way.pids())
                took = small_files(way, sources, "nginx-0", put=False)[1]  # the files nginx's run PUT
                cpu[way.name].append((cpu_seconds(way.pids()) - before) / len(sources) * 1000)
                smalls[way.name].append(len(sources) / took)
        print(f"\nthe proxy alone, in front of nginx ({args.runs} runs, medians):\n")
        print(f"| proxy | GET {args.size_mib} MiB | 10 KB GETs, {CONNECTIONS} connections | "
              "CPU per GET (the proxy's; nginx's alone) |")
        print("|---|---|---|---|")
        for way in ways:
            print(f"| {names[way.name]} | {median(gets[way.name]) / 1e9:.2f} GB/s | "
                  f"{median(smalls[way.name]):,.0f} requests/s | {median(cpu[way.name]):.3f} ms |")
    finally:
        for proxy in proxies:
            proxy.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2000, help="how many 10 KB files")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-webdav-"))
    if not find_haproxy():
        raise SystemExit("HAProxy is not installed (apt-get install haproxy): the bench measures the platform on it")
    platform = Platform(base / "data", command=[sys.executable, "-m", "skerry", "up", "--proxy", "haproxy"]).start()
    others = []
    try:
        platform.create_user("alice")
        platform.start_server("alice")
        token = platform.user_token("alice")
        state = platform.api("GET", "/hub/api/users/alice?include_stopped_servers").json()
        dav_port = state["servers"][""]["state"]["dav_port"]
        home = platform.data_dir / "users" / "alice"
        source, sources = prepare(home, args, [never_listed(run, server) for run in range(args.runs)
                                               for server in range(SERVERS)])

        others.append(rclone(home))  # each stopped below, even when the next fails to start
        others.append(nginx(home, base))
        # rclone behind an HAProxy configured as the platform's: what the hub's proxy costs rclone
        others.append(haproxy_like_the_platform(platform, others[0].url, base, BEHIND))
        # nginx behind the same: what DESIGN.md's WebDAV targets compare the hub's data path with
        others.append(haproxy_like_the_platform(platform, others[1].url, base, NGINX_BEHIND))
        # skerry's side of a request: the endpoint, and the Jupyter server that learns its writes (writefeed)
        endpoint = lambda: pids_of(f"SKERRY_DAV_PORT={dav_port}", environ=True) | jupyter_server(platform)  # noqa: E731
        proxy = lambda: {int((platform.data_dir / "run" / "proxy.pid").read_text())}  # noqa: E731
        servers = [Server("skerry through the hub", f"{platform.url}/dav/alice/home", f"alice:{token}"),
                   Server("skerry on its port", f"http://127.0.0.1:{dav_port}/dav/alice/home", f"alice:{token}"),
                   *others]
        assert len(servers) == SERVERS
        cpu_of = {servers[0].name: lambda: endpoint() | proxy(), servers[1].name: endpoint,
                  "rclone": others[0].pids, "nginx": others[1].pids,
                  BEHIND: lambda: others[2].pids() | others[0].pids(),
                  NGINX_BEHIND: lambda: others[3].pids() | others[1].pids()}
        figures, cpu, current = measure(servers, cpu_of, source, sources, args)
        report(servers, figures, cpu, current, args)
        proxy_figures(platform, others[1], source, sources, base, args)
        shutil.rmtree(sources[0].parent, ignore_errors=True)
    finally:
        for server in others:
            server.stop()
        platform.stop()
        kill_leftovers(platform.data_dir)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
