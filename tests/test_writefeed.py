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
    from skerry.adaptors.config import build_federation
    from skerry.adaptors.federation import SkerryFileSystem
    from skerry.adaptors.query import FindIndex

    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    (home / "d" / "a.txt").write_text("a")
    index = FindIndex(SkerryFileSystem(*build_federation(
        {"adaptors": [{"name": "home", "type": "local", "path": str(home)}]})))
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
