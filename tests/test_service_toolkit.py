"""The service's error plumbing (``hub.service.toolkit``) in-process: FastAPI's test client,
a stand-in for the hub's token check, the real profile store and catalog in a temporary
data dir. Statuses come from the errors; bodies are ``{"error", "message"}``."""

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from skerry.errors import ApiError, Conflict, NotFound, SkerryError
from skerry.hub.service.app import API, ROUTES, create_app
from skerry.hub.service.workload import open_catalog
from skerry.hub.stores.profiles import ProfileStore

USERS = {"alice-token": {"kind": "user", "name": "alice", "admin": False, "groups": [], "scopes": []},
         "admin-token": {"kind": "user", "name": "root", "admin": True, "groups": [], "scopes": []}}


class FakeHub:
    """Test double for ``service.Hub``: who a token belongs to (the real one asks JupyterHub)."""

    public_url = "http://127.0.0.1:8000"

    async def caller(self, request: Request) -> dict:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "token" or not token:
            raise ApiError(401, "unauthenticated", "Send your hub token as 'Authorization: token <token>'.")
        if token not in USERS:
            raise ApiError(401, "invalid_token", "This token is not valid (expired or revoked?).")
        return USERS[token]

    async def user(self, name: str) -> dict:
        if name not in {u["name"] for u in USERS.values()}:
            raise ApiError(404, "no_such_user", f"There is no user {name!r}.")
        return {"name": name, "groups": []}


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("SKERRY_DATA_DIR", str(tmp_path))
    app = create_app(hub=FakeHub(), catalog=open_catalog(str(tmp_path)),
                     profiles=ProfileStore.for_data_dir(str(tmp_path)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def as_(who: str) -> dict:
    return {"Authorization": f"token {who}-token"}


def test_a_missing_token_is_a_401_that_says_how_to_log_in(client):
    r = client.get(API + "/datasets")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "token"
    assert r.json()["error"] == "unauthenticated"


def test_the_status_comes_from_the_error(client):
    r = client.get(API + "/datasets/nope", headers=as_("alice"))
    assert (r.status_code, r.json()["error"]) == (404, "unknown_dataset"), r.text
    assert client.post(API + "/datasets", json={"name": "d"}, headers=as_("alice")).status_code == 201
    r = client.post(API + "/datasets", json={"name": "d"}, headers=as_("alice"))
    assert (r.status_code, r.json()["error"]) == (409, "dataset_exists"), r.text
    assert r.json()["message"].endswith(".")  # a sentence
    r = client.get(API + "/profiles/nope", headers=as_("admin"))
    assert (r.status_code, r.json()["error"]) == (404, "no_such_profile"), r.text
    r = client.post(API + "/profiles", json={"slug": "x", "bogus": 1}, headers=as_("admin"))
    assert (r.status_code, r.json()["error"]) == (400, "bad_profile"), r.text


def test_a_body_past_its_limit_is_a_413(client):
    r = client.post(API + "/datasets", content=b'{"name": "' + b"x" * (2 << 20) + b'"}', headers=as_("alice"))
    assert (r.status_code, r.json()["error"]) == (413, "too_large"), r.text
    assert r.json()["message"] == "The body is larger than 1 MiB."
    r = client.put(API + "/users/alice/jwt-keys/k", content=b"{" + b" " * 70_000 + b"}", headers=as_("alice"))
    assert (r.status_code, r.json()["error"]) == (413, "too_large"), r.text
    assert r.json()["message"] == "The body is larger than 64 KiB."


def test_a_body_that_is_not_a_json_object_is_a_400(client):
    for body in (b"{", b"[1, 2]"):
        r = client.post(API + "/datasets", content=body, headers=as_("alice"))
        assert (r.status_code, r.json()["error"]) == (400, "bad_json"), r.text


def test_every_kind_carries_its_status():
    from skerry.errors import (AdaptorUnavailable, BadRequest, ConfigError, Forbidden, SetupError, StorageFailed,
                               StorageTimeout, Unavailable)

    assert {k: k.status for k in (BadRequest, ConfigError, Forbidden, NotFound, Conflict, StorageFailed,
                                  Unavailable, AdaptorUnavailable, StorageTimeout, SetupError)} == {
        BadRequest: 400, ConfigError: 400, Forbidden: 403, NotFound: 404, Conflict: 409, StorageFailed: 502,
        Unavailable: 503, AdaptorUnavailable: 503, StorageTimeout: 504, SetupError: 500}
    assert issubclass(AdaptorUnavailable, ConnectionError) and SkerryError.status == 500


def test_domain_errors_take_the_status_of_their_kind():
    from skerry.accounts import AccountLocked
    from skerry.adaptors import store
    from skerry.hub.stores.profiles import NoSuchProfile, ProfileConflict
    from skerry.hub.stores.quotas import NoSuchQuota, QuotaExceeded
    from skerry.workload import catalog, states
    from skerry.workload.clusterask import ManagerUnavailable
    from skerry.workload.userpools import NoPool

    expected = {catalog.UnknownDataset: 404, catalog.UnknownJob: 404, NoSuchProfile: 404, NoSuchQuota: 404,
                store.NotFound: 404, NoPool: 404, catalog.DatasetExists: 409, catalog.ModuleExists: 409,
                catalog.AmbiguousDataset: 409, catalog.DatasetStateError: 409, catalog.JobStateError: 409,
                states.TransitionError: 409, ProfileConflict: 409, store.Conflict: 409, AccountLocked: 409,
                QuotaExceeded: 403, catalog.BadMetadata: 400, states.InvalidValue: 400,
                store.CryptError: 500, ManagerUnavailable: 503}
    assert {cls: cls.status for cls in expected} == expected


def test_no_route_or_dependency_of_the_service_waits_for_a_worker_thread():
    """FastAPI runs a plain ``def`` route or dependency in a worker thread, a trip per call per
    request: every one of the service's is ``async`` (blocking work goes through ``in_thread``)."""
    import inspect

    from fastapi.routing import APIRoute

    def calls(dependant):
        yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    app = create_app(hub=FakeHub())
    routes = [r for router in [app.router, *(module.router for module in ROUTES)] for r in router.routes
              if isinstance(r, APIRoute)]
    assert len(routes) > 50  # every module's routes are there
    plain = {f"{fn.__module__}.{fn.__qualname__}" for r in routes for fn in calls(r.dependant)
             if not inspect.iscoroutinefunction(fn)}
    assert plain == set()
