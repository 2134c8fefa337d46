"""Must show 2: every WebDAV method through the hub URL /dav/<name>/, Basic auth with a hub token."""

import os
import re

import httpx
import pytest

pytestmark = pytest.mark.platform

PROPFIND_ALL = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'
LOCKINFO = (b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
            b'<locktype><write/></locktype><owner>alice</owner></lockinfo>')


@pytest.fixture(scope="module")
def dav(platform, alice):
    with httpx.Client(base_url=f"{platform.url}/dav/alice/home/", auth=("alice", alice), timeout=60) as c:
        yield c


def hrefs(body: bytes) -> set[str]:
    return set(re.findall(r"<(?:\w+:)?href>([^<]*)</(?:\w+:)?href>", body.decode()))


def test_put_get_10mb_identical(dav, platform):
    data = os.urandom(10 * 1024 * 1024)
    r = dav.put("webdav-big.bin", content=data)
    assert r.status_code == 201
    r = dav.get("webdav-big.bin")
    assert r.status_code == 200
    assert r.content == data
    # the file is in the user's home adaptor, byte for byte
    assert (platform.data_dir / "users" / "alice" / "webdav-big.bin").read_bytes() == data
    r = dav.get("webdav-big.bin", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]


def test_links_in_the_home_are_read_through_and_replaced_by_a_put(dav, platform):
    """A link at a path's last segment is wsgidav's to answer (the fast path opens none):
    one to a file of the home is read through; a PUT replaces the link, never its target;
    one to a folder is a folder (405); one leading outside is refused either way."""
    home = platform.data_dir / "users" / "alice"
    assert dav.put("link-target.txt", content=b"target").status_code == 201
    assert dav.request("MKCOL", "link-folder/").status_code == 201
    (home / "to-file").symlink_to("link-target.txt")
    (home / "to-folder").symlink_to("link-folder", target_is_directory=True)
    (home / "to-outside").symlink_to("/etc/hostname")
    r = dav.get("to-file")
    assert (r.status_code, r.content) == (200, b"target")
    assert dav.get("to-outside").status_code == 403
    assert dav.put("to-outside", content=b"mine").status_code == 403
    assert (home / "to-outside").is_symlink()
    assert dav.put("to-folder", content=b"mine").status_code == 405
    assert dav.put("to-file", content=b"replaced").status_code == 204
    assert not (home / "to-file").is_symlink() and (home / "to-file").read_bytes() == b"replaced"
    assert (home / "link-target.txt").read_bytes() == b"target"


def test_bodies_wsgidav_reads_itself_arrive_whole(dav, platform):
    """A chunked PUT (no Content-Length) and a conditional one are wsgidav's to read, through
    granian's body stream: both arrive whole, and at once (a read of 1 MiB of a short body
    once waited a second for bytes that never came)."""
    import time

    home = platform.data_dir / "users" / "alice"
    data = os.urandom(300_000)
    started = time.monotonic()
    assert dav.put("webdav-chunked.bin", content=iter([data[:100_000], data[100_000:]])).status_code == 201
    assert (home / "webdav-chunked.bin").read_bytes() == data
    etag = dav.get("webdav-chunked.bin").headers["ETag"]
    r = dav.put("webdav-chunked.bin", content=b"small", headers={"If-Match": etag})
    assert r.status_code == 204 and (home / "webdav-chunked.bin").read_bytes() == b"small"
    assert time.monotonic() - started < 5


def test_refused_puts_with_bodies_get_their_refusal_through_the_proxy(dav):
    """PUTs refused before their body is read (a stale If-Match: 412), five at a time
    through the hub: each gets its 412, none the proxy's 502 for a connection dropped while
    it was still sending (a quarter did, before the endpoint read what it left)."""
    from concurrent.futures import ThreadPoolExecutor

    assert dav.put("webdav-refused.bin", content=b"v0").status_code in (201, 204)
    body = os.urandom(1 << 20)

    def put(_):
        return dav.put("webdav-refused.bin", content=body, headers={"If-Match": '"stale"'}).status_code

    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(put, range(40)))
    assert set(codes) == {412}, sorted(codes)
    assert dav.get("webdav-refused.bin").content == b"v0"


def test_mkcol_copy_move_delete(dav, platform):
    home = platform.data_dir / "users" / "alice"
    assert dav.request("MKCOL", "webdav-folder/").status_code == 201
    assert (home / "webdav-folder").is_dir()
    assert dav.request("MKCOL", "webdav-folder/").status_code == 405  # exists already
    assert dav.put("webdav-folder/a.txt", content=b"hello").status_code == 201

    dest = f"{platform.url}/dav/alice/home/webdav-folder/b.txt"
    assert dav.request("COPY", "webdav-folder/a.txt", headers={"Destination": dest}).status_code == 201
    assert (home / "webdav-folder" / "b.txt").read_bytes() == b"hello"
    assert (home / "webdav-folder" / "a.txt").exists()

    dest = f"{platform.url}/dav/alice/home/webdav-moved.txt"
    assert dav.request("MOVE", "webdav-folder/a.txt", headers={"Destination": dest}).status_code == 201
    assert not (home / "webdav-folder" / "a.txt").exists()
    assert dav.get("webdav-moved.txt").content == b"hello"

    assert dav.request("DELETE", "webdav-folder/").status_code == 204
    assert not (home / "webdav-folder").exists()
    assert dav.get("webdav-folder/b.txt").status_code == 404
    assert dav.request("DELETE", "webdav-moved.txt").status_code == 204


def test_propfind_depth_0_and_1(dav):
    dav.request("MKCOL", "webdav-listing/")
    for name in ("one.txt", "two.txt"):
        dav.put(f"webdav-listing/{name}", content=name.encode())
    r = dav.request("PROPFIND", "webdav-listing/", headers={"Depth": "0"}, content=PROPFIND_ALL)
    assert r.status_code == 207
    assert hrefs(r.content) == {"/dav/alice/home/webdav-listing/"}
    r = dav.request("PROPFIND", "webdav-listing/", headers={"Depth": "1"}, content=PROPFIND_ALL)
    assert r.status_code == 207
    assert hrefs(r.content) == {"/dav/alice/home/webdav-listing/", "/dav/alice/home/webdav-listing/one.txt",
                                "/dav/alice/home/webdav-listing/two.txt"}
    assert b"getcontentlength" in r.content


def test_lock_unlock(dav, platform, alice):
    dav.put("locked.txt", content=b"v1")
    r = dav.request("LOCK", "locked.txt", headers={"Timeout": "Second-60"}, content=LOCKINFO)
    assert r.status_code == 200
    token = r.headers["Lock-Token"]
    assert token.startswith("<opaquelocktoken:")
    # without the lock token, a write is refused: 423 Locked
    assert dav.put("locked.txt", content=b"v2").status_code == 423
    r = dav.put("locked.txt", content=b"v2", headers={"If": f"({token})"})
    assert r.status_code == 204
    assert dav.request("UNLOCK", "locked.txt", headers={"Lock-Token": token}).status_code == 204
    assert dav.put("locked.txt", content=b"v3").status_code == 204
    assert dav.get("locked.txt").content == b"v3"


def test_token_header_instead_of_basic(platform, alice):
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/", headers={
        "Authorization": f"token {alice}", "Depth": "0"})
    assert r.status_code == 207


def test_root_is_the_federation_with_one_folder_per_adaptor(platform, alice):
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/", auth=("alice", alice), headers={"Depth": "1"})
    assert r.status_code == 207
    assert hrefs(r.content) == {"/dav/alice/", "/dav/alice/home/"}
    r = httpx.put(f"{platform.url}/dav/alice/top.txt", content=b"x", auth=("alice", alice))
    assert r.status_code == 403  # files live inside an adaptor
    # the adaptor configuration (it may hold secrets) is private and outside what WebDAV serves
    config = platform.data_dir / "run" / "users" / "alice" / "default.adaptors.json"
    assert config.stat().st_mode & 0o077 == 0
    assert config.stat().st_uid == platform.account("alice").pw_uid  # hers alone, in a folder she cannot write


def test_a_token_needs_a_scope_that_gives_access_to_the_server(platform, alice):
    """The hub decides what a token may do: alice's token limited to reading her own model
    is hers, yet may not use her WebDAV endpoint; one limited to her server may; the admin's
    token (access to every server) is not alice's (the endpoint is hers alone)."""
    def token(*scopes):
        r = platform.api("POST", "/hub/api/users/alice/tokens", json={"note": "scoped", "scopes": list(scopes)})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    url = f"{platform.url}/dav/alice/"
    r = httpx.request("PROPFIND", url, auth=("alice", token("read:users!user=alice")), headers={"Depth": "0"})
    assert r.status_code == 403 and "may not access this server" in r.text
    r = httpx.request("PROPFIND", url, auth=("alice", token("access:servers!server=alice/")), headers={"Depth": "0"})
    assert r.status_code == 207
    r = httpx.request("PROPFIND", url, headers={"Authorization": f"token {platform.admin_token}", "Depth": "0"})
    assert r.status_code == 403 and "belongs to alice" in r.text
    r = httpx.request("PROPFIND", url, auth=("alice", "not-a-token"), headers={"Depth": "0"})
    assert r.status_code == 401 and "not valid" in r.text


def test_a_file_written_through_webdav_is_found_at_once(platform, alice):
    """Issue 15, must show 6: the find index of alice's server rescans every 300 s, yet a file
    PUT through her WebDAV endpoint is found at once (the endpoint tells the index through
    the launcher's pipe, ``skerry.adaptors.writefeed``); moved, it is found at its new place
    only; deleted, it is gone."""
    import secrets
    import time

    from helpers import wait_for

    api = httpx.Client(base_url=f"{platform.url}/user/alice/skerry/api/v1/",
                       headers={"Authorization": f"token {alice}"}, timeout=60)
    dav = httpx.Client(base_url=f"{platform.url}/dav/alice/home/", auth=("alice", alice), timeout=60)

    def where(name):
        r = api.get(f"find/{name}")
        assert r.status_code == 200, r.text
        return [loc["path"] for loc in r.json()["locations"]]

    wait_for(lambda: api.get("find/x").json()["complete"], 60, what="the first scan")
    name = f"fresh-{secrets.token_hex(4)}.txt"
    assert where(name) == []
    started = time.monotonic()
    assert dav.request("MKCOL", "feed/").status_code == 201
    assert dav.put(f"feed/{name}", content=b"written through WebDAV").status_code == 201
    wait_for(lambda: where(name) == [f"home/feed/{name}"], 10, interval=0.05, what="the new file in find")
    print(f"found {time.monotonic() - started:.2f} s after MKCOL and PUT were sent")  # README figure
    moved = f"moved-{name}"
    r = dav.request("MOVE", f"feed/{name}", headers={"Destination": f"{platform.url}/dav/alice/home/{moved}"})
    assert r.status_code == 201, r.text
    wait_for(lambda: where(name) == [] and where(moved) == [f"home/{moved}"], 10, interval=0.05,
             what="the move in find")
    assert dav.request("DELETE", moved).status_code == 204
    wait_for(lambda: where(moved) == [], 10, interval=0.05, what="the deleted file to leave find")
    assert dav.request("DELETE", "feed/").status_code == 204


def test_the_endpoint_keeps_every_kept_alive_connection_the_proxy_opened(platform, alice, dav):
    """A desktop client's parallel transfers reach the endpoint through the proxy on as many
    kept-alive connections: the endpoint keeps them all (cheroot, its server once, kept 10 and told
    the rest to reconnect for every request), and does not close them when idle for a second."""
    import socket
    import time

    assert dav.put("kept-alive.txt", content=b"x").status_code in (201, 204)
    target = platform.api("GET", "/hub/api/proxy").json()["/dav/alice/"]["target"]
    port = int(re.search(r":(\d+)/?$", target).group(1))
    request = (f"HEAD /dav/alice/home/kept-alive.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: token {alice}\r\n\r\n").encode()
    connections = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(24)]
    try:
        for c in connections:  # all open at once, as the proxy's are under rclone --transfers/--checkers
            c.sendall(request)
        for c in connections:
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += c.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b"connection: close" not in answer.lower()  # kept alive, as it says
        time.sleep(1)
        closed = 0
        for c in connections:
            c.setblocking(False)
            try:
                closed += c.recv(1) == b""  # the endpoint closed it
            except BlockingIOError:
                pass  # still open: nothing to read
        assert closed == 0, f"{closed} of {len(connections)} kept-alive connections closed"
    finally:
        for c in connections:
            c.close()
