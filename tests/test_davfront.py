"""Issue 17: the WebDAV front (hub.userserver.davfront). nginx, as the user's own account on
the endpoint's port, answers plain GET, HEAD and PUT of a local adaptor's file exactly as the
endpoint would, and hands everything else to the endpoint behind it; it lives and dies with
the user's server. Each answer of the front is compared with the endpoint's own answer to
the same request (on the endpoint's port behind nginx, read from nginx's configuration)."""

import os
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from helpers import pids_of, wait_for
from skerry.hub.userserver.davfront import find_nginx

pytestmark = [pytest.mark.platform,
              pytest.mark.skipif(find_nginx() is None, reason="nginx with its Lua module is not installed "
                                 "(apt-get install nginx-light libnginx-mod-http-lua)")]

USER = "fenna"  # her own server: the tests below stop it and kill parts of it


@pytest.fixture(scope="module")
def fenna(platform):
    platform.create_user(USER)
    platform.start_server(USER)
    token = platform.user_token(USER)
    yield token
    if platform.server(USER):
        platform.stop_server(USER)


def front_folder(platform) -> Path:
    found = list((platform.data_dir / "users" / USER / ".cache" / "skerry").glob("dav-front-*"))
    assert len(found) == 1, found
    return found[0]


def endpoint_url(platform) -> str:
    """The endpoint's own address behind nginx (its upstream in nginx's configuration)."""
    conf = (front_folder(platform) / "nginx.conf").read_text()
    return "http://" + re.search(r"upstream endpoint \{\s*server (127\.0\.0\.1:\d+);", conf).group(1)


@pytest.fixture()
def both(platform, fenna):
    """(the front, through the hub; the endpoint itself), both on fenna's home adaptor."""
    auth = (USER, fenna)
    with httpx.Client(base_url=f"{platform.url}/dav/{USER}/home/", auth=auth, timeout=60) as front, \
            httpx.Client(base_url=f"{endpoint_url(platform)}/dav/{USER}/home/", auth=auth, timeout=60) as endpoint:
        yield front, endpoint


def home(platform) -> Path:
    return platform.data_dir / "users" / USER


SAME = ("etag", "content-type", "content-length", "last-modified", "accept-ranges")


def test_nginx_runs_as_the_user_on_the_endpoints_port(platform, fenna):
    account = platform.account(USER)
    nginx = list(pids_of(f"nginx -q -p {front_folder(platform)}"))
    assert len(nginx) == 1, nginx
    status = Path(f"/proc/{nginx[0]}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert set(map(int, uids)) == {account.pw_uid}, "nginx runs as fenna's account alone (real, effective, saved)"
    # its folder is hers alone: configuration, uploads, the lock flag
    assert (front_folder(platform).stat().st_mode & 0o077) == 0


def test_plain_transfers_are_the_fronts_and_the_rest_the_endpoints(both, platform):
    front, _ = both
    r = front.put("plain.txt", content=b"plain")
    assert r.status_code == 201 and r.headers["server"] == "nginx"
    r = front.get("plain.txt")
    assert (r.status_code, r.content, r.headers["server"]) == (200, b"plain", "nginx")
    r = front.request("PROPFIND", "plain.txt", headers={"Depth": "0"})
    assert r.status_code == 207 and r.headers["server"] != "nginx"
    r = front.get("plain.txt", headers={"Range": "bytes=1-2"})
    assert (r.status_code, r.content, r.headers["server"]) == (206, b"la", "granian")


@pytest.mark.parametrize("name", ["a.txt", "b.py", "c.CSV", "d.Py", "e.ipynb", "noext", "f.tar", "g.json",
                                  "ünï cødé.md", "h.yaml", "i.x.parquet", "j.", "k.tar.gz", ".hidden-rc"])
def test_the_front_answers_a_get_and_head_as_the_endpoint_does(both, platform, name):
    """Every header a client reads, for names of every kind the MIME guess knows (the front
    answers some, the endpoint the others), and ETags on times that round either way."""
    front, endpoint = both
    assert front.put(name, content=b"x" * 1000).status_code in (201, 204)
    for ns in (1_700_000_000_123_456_500, 1_700_000_000_123_457_500, 1_700_000_000_999_999_999, 1_700_000_000_000):
        os.utime(home(platform) / name, ns=(ns, ns))
        for method in ("GET", "HEAD"):
            ours, theirs = front.request(method, name), endpoint.request(method, name)
            assert ours.status_code == theirs.status_code == 200
            assert {h: ours.headers.get(h) for h in SAME} == {h: theirs.headers.get(h) for h in SAME}, name
            assert ours.content == theirs.content


def test_a_put_is_whole_in_place_with_the_endpoints_etag_and_mode(both, platform):
    front, endpoint = both
    data = os.urandom(3 * 1024 * 1024)
    r = front.put("put-me.bin", content=data)
    assert r.status_code == 201 and r.headers["server"] == "nginx" and "location" not in r.headers
    assert (home(platform) / "put-me.bin").read_bytes() == data
    etag = r.headers["etag"]
    assert endpoint.head("put-me.bin").headers["etag"] == etag
    # PROPFIND's getetag (the endpoint's listing) is the same tag, unquoted
    listing = endpoint.request("PROPFIND", "put-me.bin", headers={"Depth": "0"}).text
    assert f"<ns0:getetag>{etag.strip(chr(34))}</ns0:getetag>" in listing
    r = front.put("put-me.bin", content=b"again")
    assert r.status_code == 204 and r.headers["etag"] != etag
    # the mode the endpoint gives a new file (its umask), and nothing left in nginx's temp folder
    r = endpoint.put("put-by-endpoint.bin", content=b"e")
    assert r.status_code == 201 and r.headers["server"] == "granian"
    mode = lambda n: (home(platform) / n).stat().st_mode & 0o777  # noqa: E731
    assert mode("put-me.bin") == mode("put-by-endpoint.bin")
    assert list((front_folder(platform) / "temp").iterdir()) == []


def test_a_clients_etag_from_the_front_passes_the_endpoints_if_match(both):
    front, _ = both
    first = front.put("cond.txt", content=b"one").headers["etag"]
    got = front.get("cond.txt").headers["etag"]
    assert got == first
    r = front.put("cond.txt", content=b"two", headers={"If-Match": got})
    assert r.status_code == 204 and r.headers["server"] == "granian"
    r = front.put("cond.txt", content=b"three", headers={"If-Match": got})
    assert r.status_code == 412


def test_a_lock_sends_every_write_to_the_endpoint_until_it_is_gone(both, platform):
    front, _ = both
    assert front.put("locked.txt", content=b"mine").status_code == 201
    lockinfo = (b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
                b'<locktype><write/></locktype><owner>fenna</owner></lockinfo>')
    r = front.request("LOCK", "locked.txt", content=lockinfo, headers={"Timeout": "Second-60"})
    assert r.status_code == 200
    token = r.headers["lock-token"]
    r = front.put("locked.txt", content=b"someone")
    assert r.status_code == 423
    r = front.put("unlocked-neighbour.txt", content=b"n")  # any lock: every write goes to the endpoint
    assert r.status_code == 201 and r.headers["server"] == "granian"
    r = front.put("locked.txt", content=b"holder", headers={"If": f"({token})"})
    assert r.status_code == 204
    assert front.request("UNLOCK", "locked.txt", headers={"Lock-Token": token}).status_code == 204
    r = front.put("locked.txt", content=b"free")
    assert r.status_code == 204 and r.headers["server"] == "nginx"


def test_tokens_are_checked_as_the_endpoint_checks_them(platform, fenna, bob):
    url = f"{platform.url}/dav/{USER}/home/"
    httpx.put(url + "tok.txt", content=b"t", auth=(USER, fenna), timeout=60)
    r = httpx.get(url + "tok.txt", timeout=60)
    assert r.status_code == 401 and "www-authenticate" in r.headers
    r = httpx.get(url + "tok.txt", auth=(USER, "not-a-token"), timeout=60)
    assert r.status_code == 401 and "not valid" in r.text
    r = httpx.get(url + "tok.txt", auth=("bob", bob), timeout=60)
    assert r.status_code == 403 and "belongs to fenna" in r.text
    r = httpx.put(url + "tok.txt", content=b"bob's", auth=("bob", bob), timeout=60)
    assert r.status_code == 403
    assert (home(platform) / "tok.txt").read_bytes() == b"t"
    # a revoked token stops working within the endpoint's cache time (5 s), at the front too
    token = platform.user_token(USER)
    assert httpx.get(url + "tok.txt", auth=(USER, token), timeout=60).status_code == 200
    me = platform.api("GET", f"/hub/api/users/{USER}/tokens").json()
    newest = max((t for t in me["api_tokens"] if t["note"] == "test"), key=lambda t: t["created"])
    assert platform.api("DELETE", f"/hub/api/users/{USER}/tokens/{newest['id']}").status_code == 204
    wait_for(lambda: httpx.get(url + "tok.txt", auth=(USER, token), timeout=60).status_code == 401, 15,
             what="the revoked token to be refused")


def test_paths_the_endpoint_refuses_are_refused(both, platform, fenna):
    front, _ = both
    assert front.put("refuse/inner.txt", content=b"x").status_code == 409  # no folder
    assert not (home(platform) / "refuse").exists()
    assert front.request("MKCOL", "refuse/").status_code == 201
    assert front.put("refuse", content=b"x").status_code == 405  # a folder there
    assert front.put(".x.0123456789ab.skerry-part", content=b"x").status_code == 404  # a temporary name
    # the endpoint's answers (400 for a dot segment; granian decodes %2F and %2E before it looks)
    for raw in ("refuse/../plain.txt", "refuse/%2e%2e/plain.txt", "refuse%2Fnone.txt", "refuse/./none.txt"):
        path = f"{front.base_url.path}{raw}"
        status = sent_as_is("GET", platform.url, path, fenna)
        assert status == sent_as_is("GET", endpoint_url(platform), path, fenna) and status in (400, 404), raw
    for raw in ("refuse/../dots.txt", "refuse/./dots.txt"):
        assert sent_as_is("PUT", platform.url, f"{front.base_url.path}{raw}", fenna) == 400, raw
    assert not (home(platform) / "dots.txt").exists() and not (home(platform) / "refuse" / "dots.txt").exists()
    (home(platform) / "to-outside").unlink(missing_ok=True)
    (home(platform) / "to-outside").symlink_to("/etc/hostname")
    assert front.get("to-outside").status_code == 403
    assert front.put("to-outside", content=b"mine").status_code == 403
    assert (home(platform) / "to-outside").is_symlink()


def sent_as_is(method: str, url: str, path: str, token: str) -> int:
    """The status of fenna's request to ``url`` for ``path`` exactly as written (httpx removes
    dot segments)."""
    import base64
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    credentials = base64.b64encode(f"{USER}:{token}".encode()).decode()
    connection.request(method, path, body=b"x" if method == "PUT" else None,
                       headers={"Authorization": f"Basic {credentials}"})
    try:
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_put_cut_short_leaves_nothing(platform, fenna):
    import base64

    auth = base64.b64encode(f"{USER}:{fenna}".encode()).decode()
    host, port = platform.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"PUT /dav/{USER}/home/cut.bin HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n"
                  f"Content-Length: 1000000\r\n\r\n".encode() + b"x" * 10_000)
        time.sleep(0.5)
    time.sleep(1)
    assert not (home(platform) / "cut.bin").exists()
    wait_for(lambda: list((front_folder(platform) / "temp").iterdir()) == [], 10, what="nginx's temp folder empty")


def test_a_put_through_the_front_is_in_the_find_index_at_once(both, platform, fenna):
    front, _ = both
    api = httpx.Client(base_url=f"{platform.url}/user/{USER}/skerry/api/v1/",
                       headers={"Authorization": f"token {fenna}"}, timeout=60)
    wait_for(lambda: api.get("find/x").json()["complete"], 60, what="the first scan")
    name = f"found-{os.getpid()}.txt"
    r = front.put(name, content=b"find me")
    assert r.status_code == 201 and r.headers["server"] == "nginx"
    wait_for(lambda: [loc["path"] for loc in api.get(f"find/{name}").json()["locations"]] == [f"home/{name}"],
             10, interval=0.05, what="the new file in find")


def test_the_endpoints_listings_show_the_fronts_writes_at_once(both, platform):
    """A folder with a link is listed again only after LISTING_TTL (no watch keeps it) or after
    a write the endpoint knows of: the front tells it each of its writes before it answers."""
    front, endpoint = both
    assert front.request("MKCOL", "listed/").status_code == 201
    (home(platform) / "listed" / "a-link").symlink_to("../plain.txt")
    for round_ in range(3):
        before = endpoint.request("PROPFIND", "listed/", headers={"Depth": "1"})
        assert before.status_code == 207
        name = f"new-{round_}.txt"
        r = front.put(f"listed/{name}", content=b"new")
        assert r.status_code == 201 and r.headers["server"] == "nginx"
        after = front.request("PROPFIND", "listed/", headers={"Depth": "1"})
        assert f"/dav/{USER}/home/listed/{name}" in after.text


def test_the_front_lives_and_dies_with_the_server(platform, fenna):
    folder = front_folder(platform)
    pid = int((folder / "nginx.pid").read_text())
    # nginx gone: the endpoint stops, and with it the whole server (the hub sees it dead)
    os.kill(pid, 9)
    wait_for(lambda: not platform.server(USER), 60, what="fenna's server to stop with its front")
    assert not pids_of(str(folder)), "no process of the front is left"
    platform.start_server(USER)
    new = front_folder(platform)
    assert pids_of(str(new))
    # a stop takes nginx with it, and its folder
    platform.stop_server(USER)
    wait_for(lambda: not pids_of(str(new)), 30, what="no nginx after the stop")
    assert not new.exists(), "the front's folder is removed at the stop"
