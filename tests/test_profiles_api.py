"""The profiles REST API on a running platform, as the admin, a user named by a profile, a
member of its JupyterHub group and a user outside both.

Every refused write answers 4xx JSON with a sentence naming the field, and leaves the
platform's own ``DIR/profiles.sqlite`` as it was (rows counted before and after).
"""

import copy

import pytest

from skerry.hub.stores.profiles import ProfileStore

from helpers import refused

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"
POOLS = {"cpu": None, "gpu": None}  # no Dask: profiles need none
GPU = {
    "slug": "gpu-physics", "display_name": "GPU (physics)",
    "resources": {"cpu_limit": 4, "mem_limit": "16Gi", "gpus": 1},
    "adaptors": [{"name": "scratch", "type": "memory"}],
    "dask": {"max_workers": 8, "worker_memory": "2Gi"},
    "access": {"users": ["dora"], "groups": ["physics"]},
}
CPU = {
    "slug": "cpu", "display_name": "CPU", "description": "for everyone",
    "resources": {"cpu_limit": 1, "mem_limit": "2Gi", "gpus": 0},
    "dask": {"max_workers": 2, "worker_memory": "1Gi"},
    "access": {"everyone": True},
}


@pytest.fixture(scope="module")
def store(platform):
    """The platform's own profile store, opened beside the service."""
    s = ProfileStore.for_data_dir(platform.data_dir)
    yield s
    s.dispose()


def slugs(platform, token=None) -> list[str]:
    r = platform.api("GET", API + "/profiles", token=token)
    assert r.status_code == 200, r.text
    return [p["slug"] for p in r.json()["profiles"]]


def test_admin_writes_users_see_what_they_may_use(platform, users, store):
    for spec in (GPU, CPU):
        r = platform.api("POST", API + "/profiles", json=spec)
        assert r.status_code == 201, r.text
        gib = int(spec["resources"]["mem_limit"].removesuffix("Gi"))
        assert r.json()["version"] == 1 and r.json()["resources"]["mem_limit"] == gib * 1024**3  # stored as bytes

    assert slugs(platform) == ["cpu", "gpu-physics"]
    assert slugs(platform, users["carol"]) == ["cpu", "gpu-physics"]  # by group
    assert slugs(platform, users["dora"]) == ["cpu", "gpu-physics"]  # by name
    assert slugs(platform, users["erin"]) == ["cpu"]
    assert platform.api("GET", API + "/profiles/gpu-physics", token=users["carol"]).json()["resources"]["gpus"] == 1
    # outside the profile's users and groups: as if it did not exist
    refused(platform.api("GET", API + "/profiles/gpu-physics", token=users["erin"]), 404, "no_such_profile")

    before = store.counts()
    writes = [("POST", "/profiles", {**CPU, "slug": "mine"}), ("PUT", "/profiles/cpu", CPU),
              ("DELETE", "/profiles/cpu", None), ("POST", "/profiles/cpu/enable", None),
              ("POST", "/profiles/cpu/duplicate", {"slug": "cpu2"}), ("GET", "/profiles/cpu/audit", None)]
    for method, path, body in writes:
        refused(platform.api(method, API + path, token=users["carol"], json=body), 403, "forbidden")
    assert store.counts() == before


def test_malformed_profiles_are_refused_naming_the_field(platform, users, store):
    platform.api("POST", API + "/profiles", json=CPU)  # 201, or 409 after the test above
    before = store.counts()
    cases = [
        ({**CPU, "slug": "x1", "colour": "blue"}, "colour: unknown field"),
        ({**CPU, "slug": "x2", "resources": {"cpu_limit": -1, "mem_limit": "2Gi", "gpus": 0}}, "resources.cpu_limit:"),
        ({**CPU, "slug": "x3", "resources": {"cpu_limit": 1, "mem_limit": "2Gi"}}, "resources.gpus: required"),
        ({**CPU, "slug": "x4", "adaptors": [{"name": "a", "type": "ftp"}]}, "adaptors[0]: adaptor spec: 'type'"),
        ({**CPU, "slug": "x5", "options": {"img": {"display_name": "Image", "choices": {"a": {"display_name": "A"}},
                                                   "free_value": {"display_name": "Other", "pattern": "([",
                                                                  "sets": "image"}}}},
         "options.img.free_value.pattern: not a regular expression"),
    ]
    for body, start in cases:
        message = refused(platform.api("POST", API + "/profiles", json=body), 400, "bad_profile")
        assert message.startswith(start), message
        message = refused(platform.api("PUT", API + "/profiles/cpu", json={**body, "slug": "cpu"}), 400, "bad_profile")
        assert message.startswith(start), message
    refused(platform.api("POST", API + "/profiles", content=b"[1, 2]"), 400)
    refused(platform.api("POST", API + "/profiles", json=CPU), 409, "conflict")
    assert store.counts() == before


def test_update_duplicate_disable_enable_and_audit(platform, users):
    platform.api("POST", API + "/profiles", json=CPU)
    current = platform.api("GET", API + "/profiles/cpu").json()
    edited = copy.deepcopy(current)
    edited["idle_timeout_s"] = 600
    r = platform.api("PUT", API + "/profiles/cpu", json=edited)  # what GET gave, edited, with its version
    assert r.status_code == 200 and r.json()["version"] == current["version"] + 1, r.text
    message = refused(platform.api("PUT", API + "/profiles/cpu", json=edited), 409, "conflict")  # stale version
    assert "read it again" in message

    r = platform.api("POST", API + "/profiles/cpu/duplicate", json={"slug": "cpu-copy"})
    assert r.status_code == 201 and r.json()["idle_timeout_s"] == 600 and r.json()["version"] == 1, r.text
    refused(platform.api("POST", API + "/profiles/cpu/duplicate", json={"slug": "Bad Slug"}), 400, "bad_profile")

    r = platform.api("DELETE", API + "/profiles/cpu")
    assert r.status_code == 200 and r.json()["disabled"], r.text
    assert "cpu" not in slugs(platform, users["erin"]) and "cpu" in slugs(platform)
    refused(platform.api("GET", API + "/profiles/cpu", token=users["erin"]), 404)
    assert not platform.api("POST", API + "/profiles/cpu/enable").json()["disabled"]
    assert "cpu" in slugs(platform, users["erin"])

    audit = platform.api("GET", API + "/profiles/cpu/audit").json()["audit"]
    assert [a["action"] for a in audit] == ["create", "update", "disable", "enable"]  # refused writes: none
    update = next(a for a in audit if a["action"] == "update" and "idle_timeout_s" in a["changes"])
    assert update["changes"]["idle_timeout_s"]["new"] == 600 and update["who"] and update["at"]
    refused(platform.api("GET", API + "/profiles/nope/audit"), 404, "no_such_profile")


def test_routes_are_in_the_openapi_document(platform):
    paths = platform.api("GET", API + "/openapi.json").json()["paths"]
    assert {API + "/profiles", API + "/profiles/{slug}", API + "/profiles/{slug}/duplicate",
            API + "/profiles/{slug}/audit"} <= set(paths)
    assert "requestBody" in paths[API + "/profiles"]["post"]
