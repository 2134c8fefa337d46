"""Must show 5: the hub service lists the caller's micro-infrastructures, and only theirs."""

import httpx
import pytest

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"


def test_alice_sees_her_infrastructure_with_working_urls(platform, alice, bob):
    listing = platform.api("GET", API + "/infrastructure", token=alice)
    assert listing.status_code == 200
    # never a secret in the answer
    assert alice not in listing.text and platform.admin_token not in listing.text
    infras = listing.json()["infrastructures"]
    assert {i["user"] for i in infras} == {"alice"}  # hers only (the platform is shared: sharing.py)
    [default] = [i for i in infras if i["name"] == ""]
    assert default["ready"]
    endpoints = default["endpoints"]
    assert endpoints["jupyter"]["url"] == f"{platform.url}/user/alice/"
    assert endpoints["webdav"]["url"] == f"{platform.url}/dav/alice/"
    # the URLs work, with the authentication the answer describes
    jupyter = httpx.get(endpoints["jupyter"]["url"] + "api/status", headers={"Authorization": f"token {alice}"})
    assert jupyter.status_code == 200
    dav = httpx.request("PROPFIND", endpoints["webdav"]["url"], auth=("alice", alice), headers={"Depth": "0"})
    assert dav.status_code == 207


def test_bob_does_not_see_alice(platform, alice, bob):
    r = platform.api("GET", API + "/infrastructure", token=bob)
    assert r.status_code == 200
    assert {i["user"] for i in r.json()["infrastructures"]} == {"bob"}
    assert "alice" not in r.text


def test_no_or_bad_token_is_401_json(platform):
    r = httpx.get(platform.url + API + "/infrastructure")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated" and r.json()["message"]
    r = httpx.get(platform.url + API + "/infrastructure", headers={"Authorization": "token nope"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"


def test_unknown_path_is_json_404(platform, alice):
    r = platform.api("GET", API + "/nothing-here", token=alice)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_openapi_document(platform):
    r = httpx.get(platform.url + API + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert API + "/infrastructure" in doc["paths"]
