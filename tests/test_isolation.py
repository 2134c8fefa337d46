"""Must show 3: one user's token never reaches another's WebDAV; a stopped server answers
503 with a sentence and leaves no process of its group behind."""

import base64
import os
import signal

import httpx
import pytest

from helpers import MICRO_PROCESSES, wait_for
from skerry.process import group_members

pytestmark = pytest.mark.platform

METHODS = [
    ("GET", {}, None),
    ("HEAD", {}, None),
    ("PUT", {}, b"bob was here"),
    ("DELETE", {}, None),
    ("MKCOL", {}, None),
    ("PROPFIND", {"Depth": "0"}, None),
    ("PROPFIND", {"Depth": "1"}, None),
    ("PROPPATCH", {}, b'<?xml version="1.0"?><propertyupdate xmlns="DAV:"/>'),
    ("COPY", {"Destination": "/dav/alice/home/isolation-copy.txt"}, None),
    ("MOVE", {"Destination": "/dav/alice/home/isolation-moved.txt"}, None),
    ("LOCK", {}, b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
                 b'<locktype><write/></locktype></lockinfo>'),
    ("UNLOCK", {"Lock-Token": "<opaquelocktoken:x>"}, None),
]


@pytest.fixture(scope="module")
def alice_file(platform, alice):
    r = httpx.put(f"{platform.url}/dav/alice/home/isolation-secret.txt", content=b"alice only", auth=("alice", alice))
    assert r.status_code == 201
    return platform.data_dir / "users" / "alice" / "isolation-secret.txt"


@pytest.mark.parametrize("method,headers,body", METHODS, ids=[m[0] + str(m[1].get("Depth", "")) for m in METHODS])
@pytest.mark.parametrize("how", ["basic-as-bob", "basic-as-alice", "token-header"])
def test_other_users_token_is_refused(platform, alice, bob, alice_file, how, method, headers, body):
    headers = dict(headers)
    if how == "basic-as-bob":
        auth = ("bob", bob)
    elif how == "basic-as-alice":  # alice's name with bob's token
        auth = ("alice", bob)
    else:
        auth = None
        headers["Authorization"] = f"token {bob}"
    if "Destination" in headers:
        headers["Destination"] = platform.url + headers["Destination"]
    r = httpx.request(method, f"{platform.url}/dav/alice/home/isolation-secret.txt", headers=headers,
                      content=body, auth=auth)
    assert r.status_code == 403, (r.status_code, r.text)
    assert alice_file.read_bytes() == b"alice only"
    home = alice_file.parent
    assert not (home / "isolation-copy.txt").exists() and not (home / "isolation-moved.txt").exists()


@pytest.mark.parametrize("method,headers,body", METHODS, ids=[m[0] + str(m[1].get("Depth", "")) for m in METHODS])
def test_no_or_bad_credentials_get_401(platform, alice, alice_file, method, headers, body):
    headers = dict(headers)
    if "Destination" in headers:
        headers["Destination"] = platform.url + headers["Destination"]
    url = f"{platform.url}/dav/alice/home/isolation-secret.txt"
    r = httpx.request(method, url, headers=headers, content=body)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = httpx.request(method, url, headers=headers, content=body, auth=("alice", "not-a-token"))
    assert r.status_code == 401
    assert alice_file.read_bytes() == b"alice only"


def test_admin_service_token_is_not_a_user(platform, alice):
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/", headers={
        "Authorization": f"token {platform.admin_token}", "Depth": "0"})
    assert r.status_code == 403


def test_malformed_basic_header_is_401(platform, alice):
    for value in ["Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest x"]:
        r = httpx.get(f"{platform.url}/dav/alice/", headers={"Authorization": value})
        assert r.status_code == 401, value


def test_revoked_token_stops_working_within_cache_time(platform, alice):
    r = platform.api("POST", "/hub/api/users/alice/tokens", json={"note": "to revoke"})
    token, token_id = r.json()["token"], r.json()["id"]
    url = f"{platform.url}/dav/alice/"
    assert httpx.request("PROPFIND", url, auth=("alice", token), headers={"Depth": "0"}).status_code == 207
    assert platform.api("DELETE", f"/hub/api/users/alice/tokens/{token_id}").status_code == 204
    wait_for(lambda: httpx.request("PROPFIND", url, auth=("alice", token),
                                   headers={"Depth": "0"}).status_code == 401,
             timeout=15, what="the revoked token to be refused")


def test_dav_routes_survive_the_hubs_route_check(platform, alice):
    assert platform.api("POST", "/hub/api/proxy").status_code == 200  # runs check_routes now
    routes = platform.api("GET", "/hub/api/proxy").json()
    assert "/dav/alice/" in routes
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/", auth=("alice", alice), headers={"Depth": "0"})
    assert r.status_code == 207


def test_stopped_server_gives_503_and_leaves_no_process(platform):
    platform.create_user("isocarol")
    platform.start_server("isocarol")
    token = platform.user_token("isocarol")
    pgid = platform.group_of("isocarol")
    assert len(group_members(pgid)) == MICRO_PROCESSES
    url = f"{platform.url}/dav/isocarol/"
    assert httpx.request("PROPFIND", url, auth=("isocarol", token), headers={"Depth": "0"}).status_code == 207

    platform.stop_server("isocarol")
    assert group_members(pgid) == []
    r = httpx.request("PROPFIND", url, auth=("isocarol", token), headers={"Depth": "0"})
    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "server_not_running"
    assert "not running" in body["message"] and "Start" in body["message"]
    # the proxy's routing table survives the hub's periodic check with a stopped server
    routes = platform.api("GET", "/hub/api/proxy").json()
    assert "/dav/isocarol/" not in routes and "/dav/" in routes


@pytest.mark.parametrize("name, which", [("isodave", "main"), ("isoerin", "worker")])
def test_poll_reports_group_dead_when_webdav_dies(platform, name, which):
    """The endpoint is granian's main process and the worker it forks: either one killed
    takes the whole micro-infrastructure down, and the hub sees it."""
    platform.create_user(name)
    platform.start_server(name)
    pgid = platform.group_of(name)
    members = group_members(pgid)
    dav = [p for p in members if b"skerry.hub.userserver.webdav" in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(dav) == 2
    parents = {p: int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) for p in dav}
    main = next(p for p in dav if parents[p] not in dav)
    os.kill(main if which == "main" else next(p for p in dav if p != main), signal.SIGKILL)
    # the group stops itself at once ...
    wait_for(lambda: group_members(pgid) == [], timeout=15, what="the group to stop itself")
    # ... and the hub's poll sees it dead
    wait_for(lambda: platform.server(name) is None, timeout=40, what="the hub to notice")


def test_home_that_is_not_a_folder_fails_the_spawn_clearly(platform):
    platform.create_user("isoivan")
    (platform.data_dir / "users" / "isoivan").write_text("not a folder")
    r = platform.api("POST", "/hub/api/users/isoivan/server")
    assert r.status_code == 500
    assert "is not a folder" in r.json()["message"]
    assert platform.server("isoivan") is None  # not left pending
    assert (platform.data_dir / "users" / "isoivan").read_text() == "not a folder"
