"""The per-user data API (``<base_url>skerry/api/v1/``) on a real ``jupyter server``.

Adaptors: two local folders (one read-only) and S3 (moto's server). Copies' bulk and
fault cases are in test_staging.py; here: every endpoint, its answers and its errors.
"""

import hashlib
import os
import threading
import time

import httpx
import pytest
import s3fs

from jupyterserver import JupyterServer

S3_SECRET = "s3-secret-never-shown-7f3a9c"  # moto (no auth) accepts any; it must never come back


@pytest.fixture(scope="module")
def setup(tmp_path_factory, s3server):
    base = tmp_path_factory.mktemp("dataapi")
    home, ro = base / "home", base / "ro"
    home.mkdir()
    ro.mkdir()
    s3server.make_bucket("dataapi")
    s3 = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3server.url})
    # one file name in three places, before the server starts (the first scan finds them)
    (home / "x").mkdir()
    (home / "x" / "same.csv").write_bytes(b"a,b\n1,2\n")
    (ro / "same.csv").write_bytes(b"read only\n")
    s3.pipe("dataapi/deep/er/same.csv", b"in the bucket\n")
    adaptors = [
        {"name": "home", "type": "local", "path": str(home)},
        {"name": "ro", "type": "local", "path": str(ro), "read_only": True},
        {"name": "s3", "type": "s3", "bucket": "dataapi", "endpoint_url": s3server.url, "credentials": "s3"},
    ]
    credentials = {"s3": {"key": "testing", "secret": S3_SECRET}}
    # no rescans during the tests: what find shows of our copies comes from the copies themselves
    server = JupyterServer(base / "server", adaptors, credentials,
                           options=["--SkerryDataAPI.index_interval=3600"]).start()
    yield server, home, ro, s3
    server.stop()


def copy_ids(server) -> list[str]:
    """The copies the server has taken, asked of the server itself."""
    r = server.get("copy")
    assert r.status_code == 200, r.text
    return [c["id"] for c in r.json()["copies"]]


def wait_done(server, copy_id):
    state = server.wait_copy(copy_id, timeout=120)
    return state


# ---- adaptors and authentication -------------------------------------------


def test_adaptors_lists_names_types_and_read_only_never_secrets(setup):
    server, *_ = setup
    r = server.get("adaptors")
    assert r.status_code == 200
    assert r.json() == {"adaptors": [
        {"name": "home", "type": "local", "read_only": False},
        {"name": "ro", "type": "local", "read_only": True},
        {"name": "s3", "type": "s3", "read_only": False},
    ]}
    assert S3_SECRET not in r.text


@pytest.mark.parametrize("token", [False, "not-the-token"])
def test_every_endpoint_refuses_requests_without_the_token(setup, token):
    server, *_ = setup
    before = copy_ids(server)
    for method, path in [("GET", "adaptors"), ("GET", "list?adaptor=home"), ("GET", "find/same.csv"),
                         ("POST", "copy"), ("GET", "copy"), ("GET", "copy/abc")]:
        kwargs = {"json": [{"from": "home/x/same.csv", "to": "home/stolen.csv"}]} if method == "POST" else {}
        r = server.request(method, path, token=token, **kwargs)
        assert r.status_code == 403, (method, path, r.text)
        assert "Traceback" not in r.text
    assert copy_ids(server) == before  # the refused copy was never taken
    assert not (setup[1] / "stolen.csv").exists()


# ---- list -----------------------------------------------------------------


def test_list_gives_each_entry_with_name_type_size_and_modified(setup):
    server, home, *_ = setup
    (home / "listed").mkdir()
    (home / "listed" / "a.bin").write_bytes(b"x" * 1234)
    (home / "listed" / "sub").mkdir()
    r = server.get("list", params={"adaptor": "home", "path": "listed"})
    assert r.status_code == 200, r.text
    entries = {e["name"]: e for e in r.json()["entries"]}
    assert set(entries) == {"a.bin", "sub"}
    assert entries["a.bin"]["type"] == "file" and entries["a.bin"]["size"] == 1234
    assert entries["a.bin"]["path"] == "home/listed/a.bin"
    assert entries["sub"]["type"] == "directory"
    assert entries["a.bin"]["modified"].startswith(time.strftime("%Y-", time.gmtime()))

    r = server.get("list", params={"adaptor": "s3", "path": "deep/er"})
    assert r.status_code == 200, r.text
    [e] = r.json()["entries"]
    assert (e["name"], e["size"], e["type"]) == ("same.csv", len(b"in the bucket\n"), "file")


@pytest.mark.parametrize("params, status, code", [
    ({}, 400, "missing_parameter"),
    ({"adaptor": "nope"}, 404, "unknown_adaptor"),
    ({"adaptor": "home", "path": "../.."}, 400, "bad_path"),
    ({"adaptor": "home", "path": "x/../../etc"}, 400, "bad_path"),
    ({"adaptor": "home", "path": "missing-folder"}, 404, "not_found"),
    ({"adaptor": "home", "path": "x/same.csv"}, 400, "not_a_folder"),
])
def test_list_errors_are_clear(setup, params, status, code):
    server, *_ = setup
    r = server.get("list", params=params)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["message"]


def test_list_refuses_encoded_traversal(setup):
    server, *_ = setup
    r = httpx.get(server.url + "list?adaptor=home&path=%2e%2e/%2e%2e/etc",
                  headers={"Authorization": f"token {server.token}"})
    assert r.status_code == 400 and r.json()["error"] == "bad_path"


# ---- find -----------------------------------------------------------------


def _find(server, name):
    r = server.get(f"find/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def test_find_gives_every_location_with_size_modified_and_s3_checksum(setup):
    server, *_ = setup
    from helpers import wait_for

    answer = wait_for(lambda: (a := _find(server, "same.csv"))["complete"] and a, 30, what="first scan")
    where = {loc["url"]: loc for loc in answer["locations"]}
    assert set(where) == {"skerry://home/x/same.csv", "skerry://ro/same.csv", "skerry://s3/deep/er/same.csv"}
    assert where["skerry://home/x/same.csv"]["size"] == 8
    assert where["skerry://home/x/same.csv"]["checksum"] is None  # local disks keep none
    s3 = where["skerry://s3/deep/er/same.csv"]
    assert s3["checksum"] == {"type": "s3-etag", "value": hashlib.md5(b"in the bucket\n").hexdigest()}
    assert all(loc["modified"] for loc in answer["locations"])
    assert _find(server, "no-such-name.txt") == {"name": "no-such-name.txt", "locations": [],
                                                 "complete": True, "errors": {}}


def test_find_shows_our_copies_at_once(setup):
    server, home, *_ = setup
    (home / "fresh.dat").write_bytes(b"fresh data")
    # rescans are an hour apart in this server: only the copy itself can tell the index
    [cid] = server.copy([{"from": "home/fresh.dat", "to": "skerry://s3/copies/renamed.dat"}])
    assert wait_done(server, cid)["state"] == "done"
    [loc] = _find(server, "renamed.dat")["locations"]
    assert loc["url"] == "skerry://s3/copies/renamed.dat" and loc["size"] == 10
    assert loc["checksum"]["value"] == hashlib.md5(b"fresh data").hexdigest()


def test_find_answers_what_is_known_while_the_first_scan_runs():
    """A listing that takes long cannot be provoked deterministically with a real backend:
    this test uses a memory filesystem whose ``find`` of one adaptor waits on an event."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    from skerry.adaptors.federation import SkerryFileSystem
    from skerry.adaptors.query import FindIndex

    release = threading.Event()

    class SlowListing(DirFileSystem):
        def find(self, *args, **kwargs):
            release.wait(30)
            return super().find(*args, **kwargs)

    memory = MemoryFileSystem()
    memory.pipe({"/fast/a/data.h5": b"1", "/slow/b/data.h5": b"22"})
    fs = SkerryFileSystem({"fast": DirFileSystem("/fast", memory), "slow": SlowListing("/slow", memory)})
    index = FindIndex(fs, interval=3600).start()
    try:
        from helpers import wait_for

        first = wait_for(lambda: (a := index.lookup("data.h5"))["locations"] and a, 10, what="fast adaptor")
        assert first["complete"] is False
        assert [loc["url"] for loc in first["locations"]] == ["skerry://fast/a/data.h5"]
        # one of our copies lands while the adaptor is being listed: a listing that began
        # before it may miss it (here it does: only the index is told), and must not drop it
        index.record("slow/c/data.h5", {"name": "c/data.h5", "type": "file", "size": 3})
        release.set()
        done = wait_for(lambda: (a := index.lookup("data.h5"))["complete"] and a, 10, what="slow adaptor")
        assert [loc["url"] for loc in done["locations"]] == [
            "skerry://fast/a/data.h5", "skerry://slow/b/data.h5", "skerry://slow/c/data.h5"]
    finally:
        release.set()
        index.stop()


def test_find_rescans_see_changes_made_behind_our_back(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    from helpers import wait_for
    from skerry.adaptors.federation import SkerryFileSystem
    from skerry.adaptors.query import FindIndex
    from skerry.adaptors.registry import LocalRootFileSystem

    (tmp_path / "old.txt").write_bytes(b"old")
    fs = SkerryFileSystem({"disk": LocalRootFileSystem(str(tmp_path), LocalFileSystem())})
    index = FindIndex(fs, interval=0.2).start()
    try:
        wait_for(lambda: index.lookup("old.txt")["locations"], 10, what="the first scan")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "new.txt").write_bytes(b"new")
        (tmp_path / "old.txt").unlink()
        wait_for(lambda: index.lookup("new.txt")["locations"], 10, what="a rescan to see the new file")
        wait_for(lambda: not index.lookup("old.txt")["locations"], 10, what="a rescan to forget the old one")
        assert [loc["url"] for loc in index.lookup("new.txt")["locations"]] == ["skerry://disk/sub/new.txt"]
    finally:
        index.stop()


def test_find_refuses_a_path_as_name(setup):
    server, *_ = setup
    r = server.get("find/..")
    assert r.status_code in (400, 404)
    assert "Traceback" not in r.text


# ---- copy -----------------------------------------------------------------


GOOD = {"from": "home/x/same.csv", "to": "home/never/same.csv"}


@pytest.mark.parametrize("bad, code", [
    ({"from": "nope/a", "to": "home/never/b"}, "unknown_adaptor"),
    ({"from": "home/x/same.csv", "to": "ro/never.csv"}, "read_only"),
    ({"from": "home/../../etc/passwd", "to": "home/never/p"}, "bad_path"),
    ({"from": "home/%2e%2e/%2E%2E/etc/passwd", "to": "home/never/p"}, "bad_path"),
    ({"from": "/etc/passwd", "to": "home/never/p"}, "bad_path"),
    ({"from": "skerry://home/x/same.csv", "to": "skerry://home/never/../../p"}, "bad_path"),
    ({"from": "http://example.org/a", "to": "home/never/p"}, "bad_location"),
    ({"from": "home/x/same.csv"}, "bad_location"),
    ({"from": "home/x/same.csv", "to": "home"}, "bad_path"),
    ({"from": "home/x", "to": "home/x/inside"}, "bad_path"),
    ({"from": "home/x/same.csv", "to": "home/never/c", "webhook": "ftp://127.0.0.1/x"}, "bad_webhook"),
    ({"from": "home/x/same.csv", "to": "home/never/c", "webhook": "not a url"}, "bad_webhook"),
    ({"from": "home/x/same.csv", "to": "home/never/c", "extra": 1}, "bad_request"),
    ("home/x/same.csv", "bad_request"),
])
def test_one_bad_item_refuses_the_whole_list_and_starts_nothing(setup, bad, code):
    server, home, *_ = setup
    before = copy_ids(server)
    r = server.post("copy", json=[GOOD, bad])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code and r.json()["message"]
    assert copy_ids(server) == before  # not even GOOD was taken
    assert not (home / "never").exists()


@pytest.mark.parametrize("body, code", [
    (b"[{", "bad_json"),
    (b"", "bad_json"),
    (b'{"from": "home/x/same.csv", "to": "home/never/x"}', "bad_request"),
    (b"[]", "bad_request"),
])
def test_malformed_bodies_are_refused(setup, body, code):
    server, home, *_ = setup
    before = copy_ids(server)
    r = server.post("copy", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code
    assert copy_ids(server) == before
    assert not (home / "never").exists()


def test_more_than_10000_items_are_refused(setup):
    server, home, *_ = setup
    before = copy_ids(server)
    r = server.post("copy", json=[GOOD] * 10_001)
    assert r.status_code == 400 and r.json()["error"] == "too_many"
    assert copy_ids(server) == before
    assert not (home / "never").exists()


def test_copy_reports_its_state_and_unknown_ids_are_404(setup):
    server, home, ro, s3 = setup
    data = b"0123456789" * 1000
    (home / "state.bin").write_bytes(data)
    ids = server.copy([{"from": "skerry://home/state.bin", "to": "skerry://s3/state/state.bin"},
                       {"from": "home/state.bin", "to": "home/state-copy.bin"}])
    assert len(ids) == 2 and len(set(ids)) == 2
    assert copy_ids(server)[-2:] == ids  # the listing has them, newest last
    to_s3, to_home = (wait_done(server, i) for i in ids)
    for state in (to_s3, to_home):
        assert state["state"] == "done" and state["error"] is None
        assert state["bytes"] == state["total"] == len(data)
        assert state["md5"] == hashlib.md5(data).hexdigest()
    assert to_s3["verified"] == "size+etag"  # S3 keeps a checksum
    assert to_home["verified"] == "size"  # a local disk does not
    assert s3.cat("dataapi/state/state.bin") == data
    assert (home / "state-copy.bin").read_bytes() == data
    assert not [p for p in home.iterdir() if p.name.endswith(".skerry-part")]

    r = server.get("copy/0123456789abcdef")
    assert r.status_code == 404 and r.json()["error"] == "unknown_copy"


def test_a_failed_copy_says_why_and_leaves_nothing(setup):
    server, home, *_ = setup
    [cid] = server.copy([{"from": "home/does-not-exist.bin", "to": "home/failed/out.bin"}])
    state = wait_done(server, cid)
    assert state["state"] == "failed"
    assert "not found" in state["error"] and "Traceback" not in state["error"]
    assert not (home / "failed").exists()

    # a file onto an existing folder: refused, the folder untouched
    (home / "afolder").mkdir()
    [cid] = server.copy([{"from": "home/x/same.csv", "to": "home/afolder"}])
    state = wait_done(server, cid)
    assert state["state"] == "failed" and "is a folder" in state["error"], state
    assert os.listdir(home / "afolder") == []


# ---- through the platform ----------------------------------------------------


@pytest.mark.platform
def test_platform_data_api_answers_alice_and_refuses_bob(platform, alice, bob):
    base = f"{platform.url}/user/alice/skerry/api/v1/"
    r = httpx.get(base + "adaptors", headers={"Authorization": f"token {alice}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert "home" in [a["name"] for a in r.json()["adaptors"]]
    r = httpx.get(base + "list", params={"adaptor": "home"}, headers={"Authorization": f"token {alice}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["entries"], list)
    for path in ("adaptors", "list?adaptor=home"):
        r = httpx.get(base + path, headers={"Authorization": f"token {bob}"}, timeout=30)
        assert r.status_code == 403, r.text

    # copies too: alice's token starts one, bob's is refused
    home = platform.data_dir / "users" / "alice"
    (home / "dataapi-mine.txt").write_bytes(b"alice's data")
    platform.give(home / "dataapi-mine.txt", "alice")  # hers, as what she writes is
    item = [{"from": "home/dataapi-mine.txt", "to": "home/dataapi-copied/mine.txt"}]
    r = httpx.post(base + "copy", json=item, headers={"Authorization": f"token {bob}"}, timeout=30)
    assert r.status_code == 403, r.text
    r = httpx.post(base + "copy", json=item, headers={"Authorization": f"token {alice}"}, timeout=30)
    assert r.status_code == 202, r.text
    [cid] = r.json()["ids"]
    from helpers import wait_for

    state = wait_for(lambda: (s := httpx.get(base + f"copy/{cid}", headers={"Authorization": f"token {alice}"},
                                             timeout=30).json())["state"] in ("done", "failed") and s, 60,
                     what="alice's copy")
    assert state["state"] == "done", state
    assert (home / "dataapi-copied" / "mine.txt").read_bytes() == b"alice's data"
    r = httpx.get(base + f"copy/{cid}", headers={"Authorization": f"token {bob}"}, timeout=30)
    assert r.status_code == 403
