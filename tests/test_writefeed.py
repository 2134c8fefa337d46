"""skerry.adaptors.writefeed without a platform: which requests tell what, a full pipe never
holds a request, and the find index applies the lines (a real local adaptor). The platform
round trip (PUT through the hub URL, found by find at once) is in test_webdav.py."""

import json
import os
import select

from skerry.adaptors.writefeed import apply_change, tell_writes

MOUNT = "/dav/alice"


def dav_app(status):
    """A stand-in for the WebDAV app: answers ``status`` to everything (what wsgidav did is
    not this module's concern: it tells only what a request's success means)."""
    def app(environ, start_response):
        start_response(status, [("Content-Length", "0")])
        return [b""]
    return app


def call(app, method, path, destination=None):
    environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": MOUNT, "PATH_INFO": path}
    if destination:
        environ["HTTP_DESTINATION"] = destination
    got = []
    body = app(environ, lambda status, headers, exc_info=None: got.append(status))
    return got[0], b"".join(body)


def home_federation(home):
    """A federation of one local adaptor, ``home``, over the folder ``home``."""
    from skerry.adaptors.config import build_federation
    from skerry.adaptors.federation import SkerryFileSystem

    return SkerryFileSystem(*build_federation({"adaptors": [{"name": "home", "type": "local", "path": str(home)}]}))


def read_lines(fd) -> list[dict]:
    lines = []
    while select.select([fd], [], [], 0)[0]:
        lines += [json.loads(x) for x in os.read(fd, 65536).splitlines()]
    return lines


def test_successful_writes_tell_their_paths_and_nothing_else_tells():
    r, w = os.pipe()
    os.set_blocking(w, False)
    ok, refused = tell_writes(dav_app("201 Created"), w, MOUNT), tell_writes(dav_app("403 Forbidden"), w, MOUNT)
    call(ok, "PUT", "/home/a%20b/é.txt".encode().decode("latin-1"))  # PEP 3333: bytes as latin-1
    call(ok, "MOVE", "/home/x.txt", destination="http://hub.example/dav/alice/s3/y%C3%A9.txt")
    call(ok, "COPY", "/home/x.txt", destination="http://hub.example/dav/alice/home/copy.txt")
    call(ok, "DELETE", "/home/old/")
    call(ok, "GET", "/home/x.txt")
    call(ok, "PROPFIND", "/home/")
    call(ok, "MOVE", "/home/x.txt", destination="http://hub.example/elsewhere/y.txt")  # not ours: the source only
    call(refused, "PUT", "/home/no.txt")
    call(ok, "PUT", "/")  # the federation root is no file
    assert read_lines(r) == [{"changed": "home/a%20b/é.txt"}, {"removed": "home/x.txt"},
                             {"changed": "s3/yé.txt"}, {"changed": "home/copy.txt"}, {"removed": "home/old"},
                             {"removed": "home/x.txt"}]
    os.close(r)
    os.close(w)


def test_a_full_pipe_or_a_gone_reader_never_holds_or_fails_a_request():
    r, w = os.pipe()
    os.set_blocking(w, False)
    app = tell_writes(dav_app("204 No Content"), w, MOUNT)
    for i in range(10000):  # 64 KiB of lines and more: the reader never reads
        assert call(app, "PUT", f"/home/f{i:05d}.txt")[0] == "204 No Content"
    lines = read_lines(r)
    assert lines[0] == {"changed": "home/f00000.txt"} and 0 < len(lines) < 10000  # the rest was dropped
    os.close(r)
    assert call(app, "DELETE", "/home/f00000.txt")[0] == "204 No Content"  # EPIPE: still answered
    os.close(w)


def test_the_index_records_changes_and_forgets_removed_folders(tmp_path):
    from skerry.adaptors.query import FindIndex

    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    (home / "d" / "a.txt").write_text("a")
    index = FindIndex(home_federation(home))
    index.scan("home")
    assert [loc["path"] for loc in index.lookup("a.txt")["locations"]] == ["home/d/a.txt"]
    (home / "b.txt").write_text("bb")
    apply_change(index, {"changed": "home/b.txt"})
    [b] = index.lookup("b.txt")["locations"]
    assert (b["path"], b["size"]) == ("home/b.txt", 2)
    (home / "d" / "a.txt").unlink()
    (home / "d").rmdir()
    apply_change(index, {"removed": "home/d"})  # a folder: everything in it goes
    assert index.lookup("a.txt")["locations"] == []
    (home / "e" / "f").mkdir(parents=True)
    (home / "e" / "f" / "c.txt").write_text("c")
    apply_change(index, {"changed": "home/e"})  # a folder moved in: its adaptor is listed again
    assert [loc["path"] for loc in index.lookup("c.txt")["locations"]] == ["home/e/f/c.txt"]
    apply_change(index, {"changed": "home/never-was.txt"})  # gone again before it was looked up
    assert index.lookup("never-was.txt")["locations"] == []


def test_a_put_tells_the_file_as_written_and_the_index_records_it_without_a_lookup(tmp_path):
    """A PUT that ``fastfiles`` answered tells the file's size and time with its path (the
    index records them as they are: no lookup, which for a file gone meanwhile would forget
    it); other writes tell the path alone; the entry is the one a listing makes."""
    from skerry.adaptors.query import FindIndex
    from skerry.adaptors.writefeed import WRITTEN

    def written_app(environ, start_response):  # says what fastfiles says of its PUTs, whatever the method
        environ[WRITTEN] = {"size": 2, "mtime": 1700000000.5}
        start_response("201 Created", [("Content-Length", "0")])
        return [b""]

    r, w = os.pipe()
    app = tell_writes(written_app, w, MOUNT)
    call(app, "PUT", "/home/b.txt")
    call(app, "COPY", "/home/b.txt", destination="http://h/dav/alice/home/c.txt")
    told = read_lines(r)
    os.close(r)
    os.close(w)
    assert told == [{"changed": "home/b.txt", "size": 2, "mtime": 1700000000.5}, {"changed": "home/c.txt"}]

    home = tmp_path / "home"
    home.mkdir()
    index = FindIndex(home_federation(home))
    index.scan("home")
    apply_change(index, told[0])  # no such file on disk: recorded as told
    [b] = index.lookup("b.txt")["locations"]
    assert (b["path"], b["size"], b["modified"]) == ("home/b.txt", 2, "2023-11-14T22:13:20.500000+00:00")
    apply_change(index, told[1])  # no facts: looked up, and not there
    assert index.lookup("c.txt")["locations"] == []
    (home / "real.txt").write_text("xyz")
    st = (home / "real.txt").stat()
    apply_change(index, {"changed": "home/real.txt", "size": st.st_size, "mtime": st.st_mtime})
    recorded = index.lookup("real.txt")["locations"]
    index.scan("home")
    assert index.lookup("real.txt")["locations"] == recorded  # what the listing makes of the file


def test_fastfiles_puts_say_the_file_as_written(tmp_path):
    """The real WebDAV app: a PUT of a local file sets ``WRITTEN`` to the written file's
    size and time, and the feed tells them."""
    import io

    from test_davprovider import LetEveryoneIn

    from skerry.adaptors.davprovider import FederationProvider
    from skerry.adaptors.webdav import make_dav_app

    home = tmp_path / "home"
    home.mkdir()
    r, w = os.pipe()
    app = tell_writes(make_dav_app(FederationProvider(home_federation(home)), MOUNT, LetEveryoneIn), w, MOUNT)
    body = b"written through the fast path\n"
    environ = {"REQUEST_METHOD": "PUT", "SCRIPT_NAME": MOUNT, "PATH_INFO": "/home/new.txt",  # as the endpoint mounts it
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(),
               "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "127.0.0.1"}
    got = []
    b"".join(app(environ, lambda status, headers, exc_info=None: got.append(status)))
    [line] = read_lines(r)
    os.close(r)
    os.close(w)
    st = (home / "new.txt").stat()
    assert got == ["201 Created"]
    assert line == {"changed": "home/new.txt", "size": len(body), "mtime": st.st_mtime}
