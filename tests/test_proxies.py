"""``skerry up --proxy``: HAProxy, Traefik and configurable-http-proxy each carry the hub's
routes and the WebDAV routes (a big listing, which the endpoint sends in pieces, whole),
keep them through the hub's routes check and a hub killed and started again (HAProxy
killed too), and leave nothing when the platform stops; a user's own code reaches
Traefik's and chp's API on loopback but can neither list nor change routes (nor read or
change its secret or its route file), and cannot open HAProxy's runtime API (a Unix
socket) or its files; a proxy skerry does not know is refused before anything is written.
(The rest of the suite runs on the default proxy: HAProxy, which ``.ci/run`` installs.)

Real platforms, real proxies, nothing mocked.
"""

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from helpers import free_port, proxies_of, wait_for
from skerry import platform as platform_module
from skerry.errors import SetupError
from skerry.haproxy import find_haproxy
from skerry.hub.plugins.haproxy import SkerryHAProxy
from skerry.platform import Options


def up_with(proxy: str) -> list[str]:
    return [sys.executable, "-m", "skerry", "up", "--proxy", proxy]


# what alice's own code tries against the proxy's API (on loopback, so her code reaches it)
# and its files: ``argv``: the API's address, her token, then the files (a file that exists:
# read it, or write to it; one that does not: make it; a socket: connect to it)
AS_ALICE = r"""
import json, os, socket, sys, urllib.request, urllib.error
api, token, *files = sys.argv[1:]
found = {}
def status(url, headers):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:  # nothing listens there (HAProxy has no HTTP API)
        return type(getattr(e, "reason", e)).__name__
for path in ("/api/routes", "/api/http/routers"):  # configurable-http-proxy's, Traefik's
    found[path] = [status(api + path, {}), status(api + path, {"Authorization": "token " + token})]
for path in files:
    if path.endswith(".sock"):
        tries = [lambda: socket.socket(socket.AF_UNIX).connect(path)]
    else:  # read or change a file that is there; make one that is not
        tries = [lambda mode=mode: open(path, mode).close() for mode in ("r", "a")[not os.path.exists(path):]]
    refusals = set()
    for attempt in tries:
        try:
            attempt()
            refusals = {"opened"}
            break
        except OSError as e:
            refusals.add(type(e).__name__)
    found[path] = " ".join(sorted(refusals))
print(json.dumps(found))
"""

# what alice's code may not open in run/, of each proxy: its routes, its configuration, its API,
# and a new file (run/ is not hers to write)
PRIVATE = {"haproxy": ["haproxy.sock", "haproxy-routes.map", "haproxy.cfg", "made-by-alice"],
           "traefik": ["traefik-routes.toml", "made-by-alice"], "chp": ["made-by-alice"]}


def status_of(url: str, auth) -> int | None:
    """The status a GET answers, or None where nothing answers (a proxy not listening yet)."""
    try:
        return httpx.get(url, auth=auth, timeout=30).status_code
    except httpx.TransportError:
        return None


def routes_work(p, token: str) -> None:
    """alice's Jupyter server and WebDAV endpoint and the hub answer her through the proxy,
    each request on one kept-alive connection reaching its own server (a proxy reusing its
    connections to servers must not send one server's request to another)."""
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            r = client.get(f"{p.url}/user/alice/api/status", headers={"Authorization": f"token {token}"})
            assert r.status_code == 200 and "kernels" in r.json(), r.text
            r = client.get(f"{p.url}/dav/alice/home/kept.txt", auth=("alice", token))
            assert r.status_code == 200 and r.content == b"kept", r.text
            r = client.get(f"{p.url}/hub/api/", headers={"Authorization": f"token {token}"})
            assert r.status_code == 200 and "version" in r.json(), r.text


def big_listing_works(p, token: str) -> None:
    """A listing of more entries than one piece of the endpoint's answer (sent chunked, as
    it is written) reaches her whole through the proxy."""
    from skerry.adaptors.propfind import PIECE

    folder = p.data_dir / "users" / "alice" / "big"
    folder.mkdir(exist_ok=True)
    names = [f"f{i:05d}.txt" for i in range(PIECE + 500)]
    for name in names:
        (folder / name).write_bytes(b"x")
    r = httpx.request("PROPFIND", f"{p.url}/dav/alice/home/big/", auth=("alice", token), headers={"Depth": "1"},
                      timeout=60)
    assert r.status_code == 207, r.text[:300]
    listed = re.findall(r"<D:href>/dav/alice/home/big/([^<]+)</D:href>", r.text)
    assert listed == names


@pytest.mark.platform
@pytest.mark.parametrize("proxy", ["haproxy", "traefik", "chp"])
def test_each_proxy_carries_the_routes_through_a_routes_check_and_a_hub_restart(make_platform, proxy):
    p = make_platform(command=up_with(proxy)).start()
    [pid] = proxies_of(p.data_dir)
    assert {"chp": b"configurable-http-proxy"}.get(proxy, proxy.encode()) in open(f"/proc/{pid}/cmdline", "rb").read()
    assert int((p.data_dir / "run" / "proxy.pid").read_text()) == pid
    p.create_user("alice")
    p.start_server("alice")
    token = p.user_token("alice")
    r = httpx.put(f"{p.url}/dav/alice/home/kept.txt", content=b"kept", auth=("alice", token), timeout=30)
    assert r.status_code == 201, r.text
    routes_work(p, token)
    big_listing_works(p, token)

    # her own code reaches the proxy's API on loopback, but neither reads nor changes routes
    api = f"http://127.0.0.1:{json.loads((p.data_dir / 'run' / 'ports.json').read_text())['proxy_api']}"
    private = [str(p.data_dir / "secrets" / "proxy-auth-token")] + [str(p.data_dir / "run" / f) for f in PRIVATE[proxy]]
    account = p.account("alice")
    done = subprocess.run([sys.executable, "-c", AS_ALICE, api, token, *private], capture_output=True, text=True,
                          timeout=60, user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                          env={"PATH": "/usr/bin:/bin"})
    found = json.loads(done.stdout or done.stderr)
    own = {"traefik": "/api/http/routers", "chp": "/api/routes"}.get(proxy)  # its routes, as its API lists them
    if own:
        assert set(found[own]) <= {401, 403}, found
    else:  # HAProxy's only API is its socket
        assert found["/api/routes"] == found["/api/http/routers"] == ["ConnectionRefusedError"] * 2, found
    assert all(found[path] == "PermissionError" for path in private), found

    # the hub's check deletes routes it does not know: the WebDAV routes stay
    assert p.api("POST", "/hub/api/proxy").status_code == 200
    assert "/dav/alice/" in p.api("GET", "/hub/api/proxy").json()
    routes_work(p, token)

    if proxy == "haproxy":  # killed, it is started again within seconds, with every route
        os.kill(pid, signal.SIGKILL)
        [pid] = wait_for(lambda: proxies_of(p.data_dir) - {pid}, timeout=30, what="HAProxy started again")
        wait_for(lambda: status_of(f"{p.url}/dav/alice/home/kept.txt", ("alice", token)) == 200, timeout=30,
                 what="alice's routes through the new HAProxy")
        routes_work(p, token)
        assert "/dav/" in p.api("GET", "/hub/api/proxy").json()  # the extra route too

    # a stopped server's WebDAV route goes; its prefix answers 503 with a sentence
    p.stop_server("alice")
    r = httpx.request("PROPFIND", f"{p.url}/dav/alice/", auth=("alice", token), headers={"Depth": "0"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "server_not_running"
    p.start_server("alice")
    routes_work(p, token)

    # the hub killed: skerry up stops its proxy; the next hub starts one with every route again
    hub_pid = int((p.data_dir / "run" / "hub.pid").read_text().split()[0])
    os.kill(hub_pid, signal.SIGKILL)
    assert p.proc.wait(30) == 1
    wait_for(lambda: not proxies_of(p.data_dir), timeout=15, what="the dead hub's proxy to stop")
    p.start()
    assert len(proxies_of(p.data_dir)) == 1
    routes_work(p, token)

    p.stop()
    assert not proxies_of(p.data_dir)


def test_an_unknown_proxy_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "data"
    done = subprocess.run(up_with("nginx") + ["--data-dir", str(data), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'nginx'" in done.stderr
    env = {**os.environ, "SKERRY_PROXY": "nginx"}
    done = subprocess.run([sys.executable, "-m", "skerry", "up", "--data-dir", str(data), "--port",
                           str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "$SKERRY_PROXY='nginx': it must be haproxy, traefik or chp" in done.stderr
    assert not data.exists()


def test_without_haproxy_up_says_so_and_runs_traefik_unless_haproxy_was_asked_for(monkeypatch, capsys):
    # the one stand-in: a machine without HAProxy (this one has it, in /usr/sbin, which
    # find_haproxy searches whatever PATH says)
    monkeypatch.setattr(platform_module, "find_haproxy", lambda: None)
    monkeypatch.delenv("SKERRY_PROXY", raising=False)
    opts = Options()
    opts.validate()
    assert opts.proxy == "traefik"
    assert "HAProxy" in (said := capsys.readouterr().err) and "apt-get install haproxy" in said, said
    asked = r"needs HAProxy 2\.4 or newer \(apt-get install haproxy\), or --proxy traefik"
    with pytest.raises(SetupError, match=asked):
        Options(proxy="haproxy").validate()
    monkeypatch.setenv("SKERRY_PROXY", "haproxy")
    with pytest.raises(SetupError, match="needs HAProxy"):
        Options().validate()


def test_with_haproxy_it_is_the_default(monkeypatch):
    if not find_haproxy():
        pytest.skip("HAProxy is not installed (apt-get install haproxy)")
    monkeypatch.delenv("SKERRY_PROXY", raising=False)
    opts = Options()
    opts.validate()
    assert opts.proxy == "haproxy"


def test_a_socket_path_too_long_for_unix_moves_to_a_folder_only_root_enters(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    proxy = SkerryHAProxy(socket_file=str(deep / "haproxy.sock"))
    assert proxy.api_socket == proxy.api_socket  # one folder, kept
    folder = os.path.dirname(proxy.api_socket)
    assert len(proxy.api_socket) <= 100 and os.stat(folder).st_mode & 0o777 == 0o700
    short = SkerryHAProxy(socket_file=str(tmp_path / "haproxy.sock"))
    assert short.api_socket == str(tmp_path / "haproxy.sock")
    os.rmdir(folder)
