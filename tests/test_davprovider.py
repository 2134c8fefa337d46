"""The WebDAV provider over the federation, served in-process by cheroot (no hub): the
listing cache, atomic PUT, read-only adaptors, litmus."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time

from urllib.parse import quote, unquote

import httpx
import pytest
from xml.sax.saxutils import escape
from cheroot import wsgi
from wsgidav.mw.base_mw import BaseMiddleware

from litmus import all_passed, run_litmus
from skerry.adaptors.config import build_federation
from skerry.adaptors.atomic import SUFFIX, temp_name
from skerry.adaptors import folderwatch, listings
from skerry.adaptors.davprovider import FederationProvider
from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.webdav import make_dav_app


class LetEveryoneIn(BaseMiddleware):
    """Test double for the hub-token authenticator (tested against the real hub elsewhere)."""

    def __call__(self, environ, start_response):
        environ["wsgidav.auth.user_name"] = "tester"
        environ["wsgidav.auth.realm"] = "test"
        environ["wsgidav.auth.roles"] = None
        environ["wsgidav.auth.permissions"] = None
        return self.next_app(environ, start_response)

    def is_disabled(self):
        return False


class DavServer:
    def __init__(self, fs, mount="/dav/tester"):
        self.provider = FederationProvider(fs)
        app = make_dav_app(self.provider, mount, LetEveryoneIn)
        self.server = wsgi.Server(("127.0.0.1", 0), wsgi.PathInfoDispatcher({mount: app}), numthreads=8)
        self.server.prepare()
        self.url = f"http://127.0.0.1:{self.server.bind_addr[1]}{mount}/"
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.stop()


@pytest.fixture
def roots(tmp_path):
    for name in ("home", "ref"):
        (tmp_path / name).mkdir()
    (tmp_path / "ref" / "genome.fa").write_bytes(b">chr1\nACGT\n")
    return tmp_path


@pytest.fixture
def dav(roots):
    config = {"adaptors": [
        {"name": "home", "type": "local", "path": str(roots / "home")},
        {"name": "ref", "type": "local", "path": str(roots / "ref"), "read_only": True},
    ]}
    server = DavServer(SkerryFileSystem(*build_federation(config)))
    yield server
    server.stop()


def hrefs(body: bytes) -> list[str]:
    return re.findall(r"<(?:\w+:)?href>([^<]*)</(?:\w+:)?href>", body.decode())


def test_root_lists_adaptors_and_is_not_writable(dav):
    r = httpx.request("PROPFIND", dav.url, headers={"Depth": "1"})
    assert r.status_code == 207
    assert sorted(hrefs(r.content)) == ["/dav/tester/", "/dav/tester/home/", "/dav/tester/ref/"]
    assert httpx.put(dav.url + "top.txt", content=b"x").status_code == 403
    assert httpx.request("MKCOL", dav.url + "newadaptor/").status_code == 403


def test_read_only_adaptor_refuses_writes(dav, roots):
    assert httpx.get(dav.url + "ref/genome.fa").content == b">chr1\nACGT\n"
    assert httpx.put(dav.url + "ref/new.txt", content=b"x").status_code == 403
    assert httpx.delete(dav.url + "ref/genome.fa").status_code == 403
    assert httpx.request("MOVE", dav.url + "ref/genome.fa",
                         headers={"Destination": dav.url + "home/g.fa"}).status_code == 403
    assert os.listdir(roots / "ref") == ["genome.fa"]
    # copying out of it works, across adaptors
    r = httpx.request("COPY", dav.url + "ref/genome.fa", headers={"Destination": dav.url + "home/g.fa"})
    assert r.status_code == 201
    assert (roots / "home" / "g.fa").read_bytes() == b">chr1\nACGT\n"


def test_propfind_depth_1_makes_one_listing_call(dav, roots):
    for i in range(50):
        (roots / "home" / f"f{i}.txt").write_text(str(i))
    calls = []
    ls = dav.provider.fs.ls
    dav.provider.fs.ls = lambda *a, **k: calls.append(a) or ls(*a, **k)
    infos = []
    info = dav.provider.fs.info
    dav.provider.fs.info = lambda *a, **k: infos.append(a) or info(*a, **k)
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert r.status_code == 207
    assert len(hrefs(r.content)) == 51
    assert len(calls) == 1
    assert set(infos) == {("home",)}  # the folder itself (wsgidav resolves it twice), no child


def test_changes_behind_our_back_appear_within_seconds(dav, roots):
    assert len(hrefs(httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"}).content)) == 1
    (roots / "home" / "from-hpc.txt").write_text("new")

    time.sleep(2.1)
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert "/dav/tester/home/from-hpc.txt" in hrefs(r.content)


def _lists(dav) -> list:
    """The folders the provider lists from here on (its ``ls`` calls)."""
    calls = []
    ls = dav.provider.fs.ls
    dav.provider.fs.ls = lambda path, *a, **k: calls.append(path) or ls(path, *a, **k)
    return calls


def _listed(dav, folder: str) -> dict:
    """{href: {property name: text}} of a PROPFIND Depth 1 of ``folder``."""
    import xml.etree.ElementTree as ET

    r = httpx.request("PROPFIND", dav.url + folder, headers={"Depth": "1"})
    assert r.status_code == 207
    return {response.find("{DAV:}href").text: {prop.tag.partition("}")[2]: prop.text
                                                for prop in next(response.iter("{DAV:}prop"))}
            for response in ET.fromstring(r.content).iter("{DAV:}response")}


def sh(command: str) -> None:
    """A change made by another process, as a user's kernel or job would make it."""
    subprocess.run(["sh", "-c", command], check=True)


def test_a_local_listing_is_kept_and_what_changes_in_its_folder_is_read_again(dav, roots, monkeypatch):
    monkeypatch.setattr(listings, "LISTING_TTL", 0.0)  # every listing is past its time at once
    home = roots / "home"
    (home / "data.csv").write_text("1,2")
    (home / "old.txt").write_text("old")
    (home / "runs").mkdir()
    os.utime(home / "runs", (1_000_000_000, 1_000_000_000))
    calls = _lists(dav)
    first = _listed(dav, "home/")
    assert _listed(dav, "home/") == first
    # another process adds to a file, makes one, removes one, renames one
    sh(f"cd {home} && echo 3,4 >> data.csv && echo b > b.txt && rm old.txt && mv b.txt a.txt && echo c > c.txt")
    again = _listed(dav, "home/")
    assert again["/dav/tester/home/data.csv"]["getcontentlength"] == str(len("1,2") + len("3,4\n"))
    assert again["/dav/tester/home/a.txt"]["getcontentlength"] == "2"
    assert "/dav/tester/home/old.txt" not in again and "/dav/tester/home/b.txt" not in again
    assert list(again) == sorted(again)  # new names in their place
    # a file made inside a subfolder changes the subfolder's time, which no event of home's says
    sh(f"touch {home / 'runs' / 'new.log'}")
    later = _listed(dav, "home/")
    assert later["/dav/tester/home/runs/"]["getlastmodified"] != again["/dav/tester/home/runs/"]["getlastmodified"]
    assert calls == ["home"]  # every answer after the first came from the kept listing
    # each answer is what a new listing says
    dav.provider.listings._kept.clear()
    assert _listed(dav, "home/") == later
    assert calls == ["home", "home"]


def test_a_watched_listing_shows_a_change_at_once_and_our_own_writes_keep_it(dav, roots):
    home = roots / "home"
    (home / "data.csv").write_text("1,2")
    calls = _lists(dav)
    _listed(dav, "home/")
    sh(f"echo behind > {home / 'job-output.txt'}")  # well within LISTING_TTL
    assert "/dav/tester/home/job-output.txt" in _listed(dav, "home/")
    assert httpx.put(dav.url + "home/ours.txt", content=b"ours").status_code == 201
    listed = _listed(dav, "home/")
    assert listed["/dav/tester/home/ours.txt"]["getcontentlength"] == "4"
    assert calls == ["home"]


def test_a_folder_changed_too_much_or_itself_is_listed_again(dav, roots, monkeypatch):
    monkeypatch.setattr(folderwatch, "MAX_NAMES", 3)
    home = roots / "home"
    (home / "sub" / "inner").mkdir(parents=True)
    calls = _lists(dav)
    _listed(dav, "home/sub/inner/")
    sh(f"cd {home / 'sub' / 'inner'} && touch 1 2 3 4")  # more names than the watch keeps
    assert len(_listed(dav, "home/sub/inner/")) == 5
    assert calls == ["home/sub/inner"] * 2
    # its parent moved away and a new folder made at its path: no event of the old folder's says it
    sh(f"cd {home} && mv sub moved && mkdir -p sub/inner && touch sub/inner/new")
    assert "/dav/tester/home/sub/inner/new" in _listed(dav, "home/sub/inner/")
    assert calls == ["home/sub/inner"] * 3
    # a link made in a kept listing's folder: it is not kept (its size is its target's)
    sh(f"ln -s new {home / 'sub' / 'inner' / 'link'}")
    assert "/dav/tester/home/sub/inner/link" in _listed(dav, "home/sub/inner/")
    assert calls == ["home/sub/inner"] * 4
    assert dav.provider.listings._kept["home/sub/inner"].token is None


def test_a_listing_with_a_link_or_many_subfolders_is_not_kept_past_its_time(dav, roots, monkeypatch):
    monkeypatch.setattr(listings, "LISTING_TTL", 0.0)
    monkeypatch.setattr(listings, "KEPT_SUBFOLDERS", 2)
    linked, many = roots / "home" / "linked", roots / "home" / "many"
    linked.mkdir()
    (linked / "target.txt").write_text("t")
    (linked / "link.txt").symlink_to("target.txt")  # its size is its target's: no event of this folder says it
    for name in ("a", "b", "c"):
        (many / name).mkdir(parents=True)
    calls = _lists(dav)
    for _ in range(2):
        _listed(dav, "home/linked/")
        _listed(dav, "home/many/")
    assert calls == ["home/linked", "home/many"] * 2


def test_listings_during_a_jobs_writes_each_show_every_file_written_before_they_were_asked(dav, roots):
    """A job writes files one by one while four clients list the folder over and over: each
    answer holds every file whose write ended before its request was sent (no change is
    taken from the watch by one request and missed by another), and every answer is whole."""
    out = roots / "home" / "out"
    out.mkdir()
    for i in range(300):
        (out / f"old{i:03d}.txt").write_text("x")
    written: list[str] = []  # in order, each appended once its write has ended
    listed_once, done = threading.Event(), threading.Event()

    def job():
        listed_once.wait(30)  # the folder's listing is kept before the first write
        for i in range(150):
            with open(out / f"new{i:03d}.txt", "w") as f:
                f.write("y" * i)
            written.append(f"new{i:03d}.txt")
            time.sleep(0.005)  # a job's pace: the clients' listings fall between its writes
        done.set()

    problems = []

    def client():
        while not done.is_set():
            before = list(written)
            try:
                listed = {href.rpartition("/")[2]: props for href, props in _listed(dav, "home/out/").items()}
            except Exception as e:  # a broken answer is the failure this test looks for
                problems.append(repr(e))
                return
            listed_once.set()
            missing = [name for name in before if name not in listed]
            wrong = [name for name in before if listed.get(name, {}).get("getcontentlength") != str(int(name[3:6]))]
            if missing or wrong or len(listed) < 301:
                problems.append(f"missing {missing[:3]}, wrong sizes {wrong[:3]}, {len(listed)} entries")

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    job()
    for t in clients:
        t.join(60)
    assert not problems, problems[:5]
    assert len(written) == 150
    assert set(_listed(dav, "home/out/")) >= {f"/dav/tester/home/out/{name}" for name in written}


def test_a_listing_that_fails_leaves_no_watch_behind(dav, roots):
    (roots / "home" / "broken").mkdir()

    def failing(path, *args, **kwargs):
        raise OSError(5, "Input/output error")

    dav.provider.fs.ls = failing
    r = httpx.request("PROPFIND", dav.url + "home/broken/", headers={"Depth": "1"})
    assert r.status_code >= 400
    assert dav.provider.listings.watch._watched == {}  # each watch counts against the account's limit


def test_kept_listings_are_bounded_and_the_oldest_goes_first(dav, roots, monkeypatch):
    monkeypatch.setattr(listings, "LISTING_TTL", 0.0)
    monkeypatch.setattr(listings, "KEPT_ENTRIES", 5)
    for folder in ("one", "two"):
        (roots / "home" / folder).mkdir()
        for i in range(3):
            (roots / "home" / folder / f"f{i}").write_text("x")
    calls = _lists(dav)
    _listed(dav, "home/one/")
    token = dav.provider.listings._kept["home/one"].token
    _listed(dav, "home/two/")  # 3 + 3 entries: one's listing goes, with its watch
    assert dav.provider.listings.watch.changes(str(roots / "home" / "one"), token) is None
    _listed(dav, "home/two/")
    _listed(dav, "home/one/")
    assert calls == ["home/one", "home/two", "home/one"]


def test_our_writes_show_at_once(dav):
    httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})  # fills the cache
    assert httpx.put(dav.url + "home/now.txt", content=b"now").status_code == 201
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert "/dav/tester/home/now.txt" in hrefs(r.content)
    assert httpx.delete(dav.url + "home/now.txt").status_code == 204
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert "/dav/tester/home/now.txt" not in hrefs(r.content)


def test_interrupted_put_leaves_nothing_visible(dav, roots):
    port = int(dav.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"PUT /dav/tester/home/partial.bin HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 10000000\r\n\r\n" + b"x" * 1_000_000)
    # the client is gone half-way: no file, no temporary file, once the server has noticed

    time.sleep(1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.listdir(roots / "home"):
        time.sleep(0.1)
    assert os.listdir(roots / "home") == []
    assert httpx.get(dav.url + "home/partial.bin").status_code == 404


def test_temporary_names_cannot_be_addressed(dav, roots):
    (roots / "home" / temp_name("x", "abc")).write_text("in flight")
    assert httpx.get(dav.url + "home/" + temp_name("x", "abc")).status_code == 404
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert not any(SUFFIX in h for h in hrefs(r.content))


def test_etag_and_if_match(dav):
    r = httpx.put(dav.url + "home/e.txt", content=b"one")
    etag = r.headers["ETag"]
    assert httpx.get(dav.url + "home/e.txt").headers["ETag"] == etag
    assert httpx.put(dav.url + "home/e.txt", content=b"two", headers={"If-Match": '"nope"'}).status_code == 412
    assert httpx.put(dav.url + "home/e.txt", content=b"two", headers={"If-Match": etag}).status_code == 204
    assert httpx.get(dav.url + "home/e.txt").content == b"two"
    assert httpx.put(dav.url + "home/e.txt", content=b"3", headers={"If-None-Match": "*"}).status_code == 412


@pytest.mark.parametrize("path", ["home/../../../../etc/passwd", "home/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                                  "home/..%2f..%2f..%2fetc/passwd", "/etc/passwd", "home//etc/passwd"])
def test_traversal_is_refused(dav, path):
    import http.client

    port = int(dav.url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/dav/tester/" + path)  # sent as is: no client-side normalising
    r = conn.getresponse()
    body = r.read()
    assert r.status in (400, 403, 404), (r.status, body[:200])
    assert b"root:" not in body


@pytest.mark.skipif(not shutil.which("litmus"), reason="litmus is not installed (apt-get install litmus)")
def test_litmus_passes_over_the_federation(dav, tmp_path):
    summary, output = run_litmus(dav.url + "home/", tmp_path)
    assert summary == all_passed(), output[-3000:]


def test_concurrent_if_match_puts_exactly_one_wins(dav):
    from concurrent.futures import ThreadPoolExecutor

    etag = httpx.put(dav.url + "home/contended.txt", content=b"v0").headers["ETag"]
    bodies = [os.urandom(2 * 1024 * 1024) for _ in range(6)]

    def put(body):
        return httpx.put(dav.url + "home/contended.txt", content=body, headers={"If-Match": etag},
                         timeout=60).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        codes = list(pool.map(put, bodies))
    assert sorted(codes) == [204] + [412] * (len(bodies) - 1)
    winner = bodies[codes.index(204)]
    assert httpx.get(dav.url + "home/contended.txt").content == winner


@pytest.mark.parametrize("depth", ["infinity", "Infinity", None])
def test_propfind_depth_infinity_is_refused(dav, depth):
    headers = {"Depth": depth} if depth else {}  # no Depth header means infinity (RFC 4918 9.1)
    r = httpx.request("PROPFIND", dav.url + "home/", headers=headers)
    assert r.status_code == 403
    assert r.headers["Content-Type"].startswith("application/xml")
    pattern = rb"<(\w+:)?error xmlns(:\w+)?=\"DAV:\">\s*<(\w+:)?propfind-finite-depth\s*/>"
    assert re.search(pattern, r.content), r.content
    # finite depths still work, on the root and inside an adaptor
    assert httpx.request("PROPFIND", dav.url, headers={"Depth": "1"}).status_code == 207
    assert httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "0"}).status_code == 207


def test_propfind_without_depth_on_a_file_is_answered(dav, roots):
    (roots / "home" / "one.txt").write_text("1")
    # on a file infinity means 0 (webdav4 asks "is it a folder?" this way)
    for headers in ({}, {"Depth": "infinity"}):
        r = httpx.request("PROPFIND", dav.url + "home/one.txt", headers=headers)
        assert r.status_code == 207
        assert hrefs(r.content) == ["/dav/tester/home/one.txt"]
    assert httpx.request("PROPFIND", dav.url + "home/missing.txt").status_code == 404


@pytest.mark.parametrize("slash", ["", "/"])
def test_copy_and_move_of_a_folder_tree(dav, roots, slash):
    home = roots / "home"
    (home / "d1" / "sub").mkdir(parents=True)
    (home / "d1" / "g.txt").write_text("g")
    (home / "d1" / "sub" / "f.txt").write_text("f")
    r = httpx.request("COPY", dav.url + "home/d1/", headers={"Destination": dav.url + "home/d2" + slash,
                                                           "Depth": "infinity", "Overwrite": "F"})
    assert r.status_code == 201, r.text  # not a 207 with errors per child
    assert (home / "d2" / "g.txt").read_text() == "g"
    assert (home / "d2" / "sub" / "f.txt").read_text() == "f"
    assert (home / "d1" / "sub" / "f.txt").exists()
    r = httpx.request("MOVE", dav.url + "home/d2/", headers={"Destination": dav.url + "home/d3" + slash})
    assert r.status_code == 201, r.text
    assert not (home / "d2").exists()
    assert (home / "d3" / "sub" / "f.txt").read_text() == "f"


def _props_by_href(body: bytes) -> dict:
    """{href: {(status, property tag, text)}} of a multistatus body, prefixes ignored."""
    import xml.etree.ElementTree as ET

    found = {}
    for response in ET.fromstring(body).iter("{DAV:}response"):
        href = response.find("{DAV:}href").text
        props = set()
        for propstat in response.iter("{DAV:}propstat"):
            status = propstat.find("{DAV:}status").text
            for prop in propstat.find("{DAV:}prop"):
                props.add((status, prop.tag, tuple((el.tag, (el.text or "").strip()) for el in prop.iter())))
        found[href] = props
    return found


@pytest.mark.parametrize("body", [
    b"",
    b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>',
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns"><d:prop><d:displayname/>'
    b'<d:getlastmodified/><d:getcontentlength/><d:resourcetype/><d:getcontenttype/><d:getetag/><oc:checksums/>'
    b'</d:prop></d:propfind>',
])
def test_fast_depth_1_listing_says_what_wsgidav_says(dav, roots, body):
    (roots / "home" / "sub").mkdir()
    (roots / "home" / "a b&c.txt").write_text("x")
    (roots / "home" / "data.csv").write_text("1,2\n")
    (roots / "home" / "p(1) ü.txt").write_text("z")  # hrefs quote what wsgidav quotes, no more
    ask = lambda: httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"}, content=body)  # noqa: E731
    fast = ask()
    dav.provider.propfind_listing = None  # wsgidav's own generic PROPFIND
    try:
        generic = ask()
    finally:
        del dav.provider.propfind_listing
    assert fast.status_code == generic.status_code == 207
    assert _props_by_href(fast.content) == _props_by_href(generic.content)
    assert len(_props_by_href(fast.content)) == 5


_SAME = ("content-length", "content-type", "etag", "last-modified", "accept-ranges")


def _answer(r) -> tuple:
    return r.status_code, {h: r.headers.get(h) for h in _SAME}, r.content


def test_fast_get_head_and_put_say_what_wsgidav_says(dav, roots):
    big = os.urandom(2 * 1024 * 1024 + 7)  # more than one block
    (roots / "home" / "big.bin").write_bytes(big)
    (roots / "home" / "notes.txt").write_text("hello")

    def ask(tag):
        started = dav.provider._count_get_resource_inst
        return [_answer(httpx.put(dav.url + f"home/{tag}.csv", content=b"a,b\n")),
                _answer(httpx.put(dav.url + f"home/{tag}.csv", content=b"a,b,c\n")),
                _answer(httpx.get(dav.url + "home/notes.txt")), _answer(httpx.head(dav.url + "home/notes.txt")),
                _answer(httpx.get(dav.url + "home/big.bin"))], dav.provider._count_get_resource_inst - started

    fast, fast_lookups = ask("fast")
    dav.provider.local_file = None  # wsgidav's own GET, HEAD and PUT
    try:
        generic, generic_lookups = ask("generic")
    finally:
        del dav.provider.local_file
    assert fast_lookups == 0 < generic_lookups  # the fast path answered all five itself
    # the PUTs wrote two files (other ETags), and their status page holds the time; GET and
    # HEAD read the same files both ways: all the same, ETag and Last-Modified included
    for i, (f, g) in enumerate(zip(fast, generic, strict=True)):
        ignored = {"etag", "last-modified", "content-length"} if i < 2 else set()
        assert f[0] == g[0] and (i < 2 or f[2] == g[2])
        assert {h: v for h, v in f[1].items() if h not in ignored} == \
            {h: v for h, v in g[1].items() if h not in ignored}
        assert (f[1]["etag"] is None) == (g[1]["etag"] is None)
    assert [a[0] for a in fast] == [201, 204, 200, 200, 200]
    assert fast[4][2] == big and fast[3][2] == b"" and fast[3][1]["content-length"] == "5"
    assert (roots / "home" / "fast.csv").read_bytes() == b"a,b,c\n"
    # the PUT's ETag is the one GET then gives, and the one PROPFIND lists
    assert httpx.get(dav.url + "home/fast.csv").headers["etag"] == fast[1][1]["etag"]
    assert not [n for n in os.listdir(roots / "home") if n.endswith(SUFFIX)]


def test_each_file_gets_the_content_type_wsgidav_guesses_for_its_own_name(dav, roots):
    """Types are remembered by what follows a name's first dot: a.tar.gz (a tar file) does
    not make b.gz one, nor x.csv a file named csv, in a listing or a GET, in either order."""
    from wsgidav import util

    names = ["a.tar.gz", "b.gz", "x.csv", "csv", "x.mp4", ".mp4", "data:x.csv", "N.CSV"]
    for name in names:
        (roots / "home" / name).write_text("x")
    expected = {name: util.guess_mime_type(name, {"default_charset": "utf-8"}) for name in names}  # wsgidav's default
    assert len(set(expected.values())) >= 4  # the names above differ in what is guessed
    for order in (names, names[::-1]):
        got = {name: httpx.get(dav.url + "home/" + quote(name)).headers["content-type"] for name in order}
        assert got == expected
    listed = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    types = [re.search(r"/home/([^<]+)</D:href>.*<D:getcontenttype>([^<]*)<", response).groups()
             for response in listed.text.split("<D:response>")[2:]]  # the files, after the folder
    assert {unquote(href): kind for href, kind in types} == expected


def test_fast_put_keeps_the_rules_wsgidav_keeps(dav, roots):
    (roots / "home" / "folder").mkdir()
    assert httpx.put(dav.url + "home/folder", content=b"x").status_code == 405
    assert httpx.put(dav.url + "home/nowhere/x.txt", content=b"x").status_code == 409
    assert httpx.put(dav.url + "ref/new.txt", content=b"x").status_code == 403  # a read-only adaptor
    assert httpx.get(dav.url + "home/missing.txt").status_code == 404
    assert httpx.get(dav.url + "home/folder/").status_code == 200  # the folder's page, as before
    # a locked file: 423 without its token, written with it (the If header: wsgidav's path)
    (roots / "home" / "locked.txt").write_text("mine")
    lock = httpx.request("LOCK", dav.url + "home/locked.txt", content=(
        b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
        b'<locktype><write/></locktype><owner>tester</owner></lockinfo>'))
    token = lock.headers["Lock-Token"]
    assert httpx.put(dav.url + "home/locked.txt", content=b"theirs").status_code == 423
    assert (roots / "home" / "locked.txt").read_text() == "mine"
    assert httpx.put(dav.url + "home/locked.txt", content=b"ours", headers={"If": f"({token})"}).status_code == 204
    assert (roots / "home" / "locked.txt").read_text() == "ours"
    # a short body: 400 naming it, and nothing written under either name
    port = int(dav.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"PUT /dav/tester/home/short.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        answer = b""
        while b"</html>" not in answer and (chunk := s.recv(65536)):  # the headers and page may come apart
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"ended after 10 of 100 bytes" in answer
    assert sorted(os.listdir(roots / "home")) == ["folder", "locked.txt"]


def test_a_folder_lock_holds_fast_puts_into_it_until_it_is_released(dav, roots):
    """With no lock anywhere a write's lock check answers at once (``webdav.LockStore``); a
    lock on a folder, Depth infinity, still stops a PUT of a new file and of an existing
    one below it without the token, and once released the store is empty and PUTs go."""
    (roots / "home" / "shared" / "deep").mkdir(parents=True)
    (roots / "home" / "shared" / "deep" / "old.txt").write_text("old")
    store = dav.provider.lock_manager.storage
    assert not store._dict
    lock = httpx.request("LOCK", dav.url + "home/shared/", headers={"Depth": "infinity"}, content=(
        b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
        b'<locktype><write/></locktype><owner>tester</owner></lockinfo>'))
    assert lock.status_code == 200, lock.text
    token = lock.headers["Lock-Token"]
    for name in ("deep/new.txt", "deep/old.txt"):
        assert httpx.put(dav.url + f"home/shared/{name}", content=b"theirs").status_code == 423
    assert sorted(os.listdir(roots / "home" / "shared" / "deep")) == ["old.txt"]
    assert (roots / "home" / "shared" / "deep" / "old.txt").read_text() == "old"
    assert httpx.put(dav.url + "home/elsewhere.txt", content=b"x").status_code == 201  # outside the lock
    assert httpx.request("UNLOCK", dav.url + "home/shared/", headers={"Lock-Token": token}).status_code == 204
    assert not store._dict  # no lock left: the next write's check is the shortcut
    assert httpx.put(dav.url + "home/shared/deep/new.txt", content=b"ours").status_code == 201
    assert httpx.put(dav.url + "home/shared/deep/old.txt", content=b"ours").status_code == 204
    assert (roots / "home" / "shared" / "deep" / "old.txt").read_text() == "ours"


def test_the_lock_store_keeps_its_flag_exactly_while_a_lock_exists(tmp_path):
    """The WebDAV front sends every request to the endpoint while the flag file exists
    (``hub.userserver.davfront``): it is there before a lock is, and gone once none is."""
    from skerry.adaptors.webdav import LockStore

    flag = tmp_path / "locks-held"
    store = LockStore(str(flag))
    store.open()
    new = lambda: {"type": "write", "scope": "exclusive", "depth": "0", "owner": b"<owner/>", "timeout": 60,  # noqa: E731
                   "principal": "p"}
    assert not flag.exists()
    first = store.create("/home/a.txt", new())
    second = store.create("/home/b.txt", new())
    assert flag.exists()
    store.delete(first["token"])
    assert flag.exists(), "one lock is left"
    store.delete(second["token"])
    assert not flag.exists()
    store.create("/home/c.txt", new())
    store.clear()
    assert not flag.exists()


def test_listing_shows_dead_properties_and_locks(dav, roots):
    (roots / "home" / "n.txt").write_text("x")
    r = httpx.request("PROPPATCH", dav.url + "home/n.txt", content=(
        b'<?xml version="1.0"?><propertyupdate xmlns="DAV:" xmlns:z="urn:skerry-test"><set><prop>'
        b'<z:colour>blue</z:colour></prop></set></propertyupdate>'))
    assert r.status_code == 207
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert b"urn:skerry-test" in r.content and b">blue<" in r.content
    # made behind our back while the listing is cached; no dead property: only its lock is in play
    (roots / "home" / "locked.txt").write_text("y")
    lock = httpx.request("LOCK", dav.url + "home/locked.txt", content=(
        b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
        b'<locktype><write/></locktype><owner>tester</owner></lockinfo>'))
    assert lock.status_code in (200, 201)  # 201: the cached listing did not know it yet
    assert (roots / "home" / "locked.txt").read_text() == "y"  # LOCK never empties a file
    httpx.request("PROPPATCH", dav.url + "home/n.txt", content=(
        b'<?xml version="1.0"?><propertyupdate xmlns="DAV:" xmlns:z="urn:skerry-test"><remove><prop>'
        b'<z:colour/></prop></remove></propertyupdate>'))
    r = httpx.request("PROPFIND", dav.url + "home/", headers={"Depth": "1"})
    assert b">blue<" not in r.content
    assert re.search(rb"<(\w+:)?activelock>", r.content)


def test_an_unreachable_adaptor_is_a_503_and_the_others_work(roots, tmp_path):
    from servers import Sshd

    down = Sshd(tmp_path / "sshd")  # its port, with nothing listening
    config = {"adaptors": [
        {"name": "home", "type": "local", "path": str(roots / "home")},
        {"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": down.port, "username": "nobody"},
    ]}
    server = DavServer(SkerryFileSystem(*build_federation(config)))
    try:
        r = httpx.request("PROPFIND", server.url + "hpc/", headers={"Depth": "1"})
        assert r.status_code == 503 and b"cannot be reached" in r.content  # the reason, for people
        assert httpx.put(server.url + "hpc/a.txt", content=b"x").status_code == 503
        assert httpx.put(server.url + "home/a.txt", content=b"x").status_code == 201
        root = httpx.request("PROPFIND", server.url, headers={"Depth": "1"})
        assert root.status_code == 207 and "/hpc/" in root.text  # listing adaptors connects nothing
    finally:
        server.stop()


def test_conditional_write_locks_are_forgotten_when_done():
    from skerry.adaptors import webdav

    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        start_response("204 No Content", [])
        return [b""]

    serialized = webdav.serialize_conditional_writes(app)
    for i in range(100):
        environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": f"/f{i}", "HTTP_IF_MATCH": '"x"'}
        serialized(environ, lambda *a: None)
    locks = next(c.cell_contents for c in serialized.__closure__ if isinstance(c.cell_contents, dict))
    assert len(seen) == 100 and locks == {}


@pytest.mark.parametrize("name, info, folder", [
    ("a b&c<1>.txt", {"name": "home/a b&c<1>.txt", "size": 12, "mtime": 1_700_000_000.25, "type": "file"}, False),
    ("empty", {"name": "home/empty", "size": 0, "mtime": 1_700_000_001, "type": "file"}, False),
    ("s3.bin", {"name": "b/s3.bin", "size": 5, "ETag": '"abc"', "LastModified": "2026-01-02T03:04:05Z",
                "type": "file"}, False),
    ("no-time", {"name": "home/no-time", "size": 3, "type": "file"}, False),
    ("sub", {"name": "home/sub", "size": 0, "mtime": 1_700_000_002, "type": "directory"}, True),
    ("plain.txt", {"name": "home/plain.txt", "size": 7, "mtime": 1_700_000_003.5, "type": "file"}, False),
    ("whole-second", {"name": "home/whole-second", "size": 9, "mtime": 1_700_000_004.0, "type": "file"}, False),
    (".hidden.txt", {"name": "home/.hidden.txt", "size": 2, "mtime": 1_700_000_005.5, "type": "file"}, False),
    ("before-1970", {"name": "home/before-1970", "size": 1, "mtime": -0.5, "type": "file"}, False),
])
def test_an_allprop_entry_in_one_piece_is_the_entry_element_by_element(name, info, folder):
    """The two shortcuts (one format for an entry's properties, and for a plain file's whole
    response) write what the element-by-element writer writes."""
    from skerry.adaptors.propfind import (_allprop, _allprop_of, _allprop_response, _allprop_responses,
                                          _href, _live_values, _time_formats)

    def mime_of(n):
        return "text/plain" if n.endswith(".txt") else "application/octet-stream"

    times = _time_formats()
    assert _allprop_of(name, info, folder, mime_of, times) == _allprop(_live_values(name, info, folder, mime_of, times))
    href = "/dav/alice/a&b/"
    element_by_element = (f"<D:response><D:href>{escape(href + _href(name) + ('/' if folder else ''))}</D:href>"
                          f"<D:propstat><D:prop>{_allprop(_live_values(name, info, folder, mime_of, times))}</D:prop>"
                          "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")
    assert list(_allprop_responses(href, [(name, info)], mime_of, times)) == [element_by_element]
    assert _allprop_response(href + _href(name) + ("/" if folder else ""), name, info, folder, mime_of,
                             times) == element_by_element


def test_files_of_one_folder_each_get_their_own_times_and_types():
    """The per-listing memos (a second's times, a type by what follows the first dot) give
    each entry what it alone would get."""
    from skerry.adaptors.propfind import _allprop_response, _allprop_responses, _time_formats

    def mime_of(n):
        return {"csv": "text/csv", "tar.gz": "application/x-tar"}.get(n.partition(".")[2], "application/x-unknown")

    items = [(name, {"name": f"home/{name}", "size": i, "mtime": ts, "type": "file"})
             for i, (name, ts) in enumerate([("a.csv", -0.5), ("b.csv", 0.3), ("c.tar.gz", 0.7), ("d.tar.gz", 1.2),
                                             ("e", 1.9), ("f.csv", 1.95), ("g.gz", 2.1)])]
    alone = [_allprop_response(f"/dav/x/{name}", name, info, False, mime_of, _time_formats()) for name, info in items]
    assert list(_allprop_responses("/dav/x/", items, mime_of, _time_formats())) == alone


def test_a_big_listing_is_sent_in_pieces_and_a_small_one_with_its_length(dav, roots):
    from skerry.adaptors.propfind import PIECE

    for folder, count in (("big", 2 * PIECE + 10), ("small", 3)):
        (roots / "home" / folder).mkdir()
        for i in range(count):
            (roots / "home" / folder / f"f{i:05d}.txt").write_text("x")
    big = httpx.request("PROPFIND", dav.url + "home/big/", headers={"Depth": "1"})
    small = httpx.request("PROPFIND", dav.url + "home/small/", headers={"Depth": "1"})
    assert big.status_code == small.status_code == 207
    assert big.headers.get("transfer-encoding") == "chunked" and "content-length" not in big.headers
    assert small.headers["content-length"] == str(len(small.content))
    assert sorted(hrefs(big.content)) == ["/dav/tester/home/big/"] + [
        f"/dav/tester/home/big/f{i:05d}.txt" for i in range(2 * PIECE + 10)]
    assert len(hrefs(small.content)) == 4
