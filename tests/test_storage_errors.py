"""One storage error, one status: every row of ``skerry.errors.STORAGE_ERRORS`` through WebDAV,
the contents manager and the data API.

A memory filesystem that raises the chosen exception for paths named ``broken...`` is the
one adaptor (``home``) of a real federation; each surface is the real component, in this
process: the WebDAV WSGI app (``make_dav_app``, called through httpx's WSGI transport),
``SkerryContentsManager`` (its methods raise tornado ``HTTPError``), and the data API's
handlers in a tornado app with jupyter_server's own identity provider and authorizer.
"""

import asyncio
import errno
import threading

import httpx
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from tornado.web import HTTPError

from skerry.adaptors.config import write_config
from skerry.adaptors.davprovider import FederationProvider
from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.webdav import make_dav_app
from skerry.errors import (STORAGE_ERRORS, AdaptorUnavailable, ConfigError, NotFound, SkerryError,
                           storage_error)
from test_davprovider import LetEveryoneIn

TOKEN = "storage-errors-test-token"


def failure(raised: type[BaseException]) -> BaseException:
    """An instance of ``raised`` as a backend would raise it."""
    if issubclass(raised, SkerryError):
        return raised("adaptor 'home': what the backend said")
    if issubclass(raised, OSError):
        return raised(errno.EIO, "what the backend said", "broken.txt")
    return raised("what the backend said")


# every row of the table, and what the table does not name: a SkerryError keeps its own
# status, anything else is our own fault (500)
RAISED = [row[0] for row in STORAGE_ERRORS] + [AdaptorUnavailable, TimeoutError, ConnectionRefusedError, KeyError]
EXPECTED = {raised: storage_error(failure(raised)).status for raised in RAISED}


class Faulty(MemoryFileSystem):
    """A memory filesystem whose ``info`` and ``ls`` raise ``self.failure`` on ``broken...``."""

    cachable = False
    failure: BaseException | None = None

    def _check(self, path):
        if self.failure is not None and self._strip_protocol(path).lstrip("/").startswith("broken"):
            raise self.failure

    def info(self, path, **kwargs):
        self._check(path)
        return super().info(path, **kwargs)

    def ls(self, path, detail=True, **kwargs):
        self._check(path)
        return super().ls(path, detail=detail, **kwargs)


@pytest.fixture(scope="module")
def faulty():
    return Faulty()


@pytest.fixture(scope="module")
def federation(faulty):
    return SkerryFileSystem({"home": faulty})


@pytest.fixture(scope="module")
def dav(federation):
    mount = "/dav/tester"
    app = make_dav_app(FederationProvider(federation), mount, LetEveryoneIn)

    def routed(environ, start_response):  # the user server mounts the app at its URL
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = mount, environ["PATH_INFO"][len(mount):]
        return app(environ, start_response)

    # an exception the app lets through is a 500, as the WSGI server in production answers it
    transport = httpx.WSGITransport(app=routed, raise_app_exceptions=False)
    with httpx.Client(transport=transport, base_url="http://dav") as client:
        yield lambda path: client.get(f"{mount}/{path}").status_code


@pytest.fixture(scope="module")
def contents(tmp_path_factory, federation):
    from skerry.extensions.contents import SkerryContentsManager

    base = tmp_path_factory.mktemp("storage-errors")
    config = base / "adaptors.json"
    write_config(str(config), [{"name": "home", "type": "memory", "path": "/storage-errors"}])
    manager = SkerryContentsManager(adaptors_file=str(config), root_dir=str(base))
    manager.fs = federation  # the same federation as the other surfaces: the faulty adaptor

    def status(path):
        try:
            asyncio.run(manager.get(path))
        except HTTPError as e:
            return e.status_code
        except Exception:  # noqa: BLE001 - let through: jupyter_server's handler answers 500
            return 500
        return 200

    return status


@pytest.fixture(scope="module")
def dataapi(tmp_path_factory, federation, monkeypatch_module):
    """The data API's handlers in a tornado app of their own, served on a free port."""
    from jupyter_server.auth.authorizer import AllowAllAuthorizer
    from jupyter_server.auth.identity import IdentityProvider
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application

    from skerry.extensions import dataapi

    base = tmp_path_factory.mktemp("storage-errors-api")
    config = base / "adaptors.json"
    write_config(str(config), [{"name": "home", "type": "memory", "path": "/storage-errors-api"}])
    monkeypatch_module.setenv("SKERRY_ADAPTORS", str(config))
    api = dataapi.SkerryDataAPI(index_interval=3600)
    assert api.error is None, api.error
    api.fs = federation
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    started, loop = threading.Event(), {}

    def serve():
        loop["loop"] = asyncio.new_event_loop()
        asyncio.set_event_loop(loop["loop"])
        app = Application(dataapi.handlers("/"), **{
            dataapi.SETTINGS_KEY: api, "identity_provider": IdentityProvider(token=TOKEN),
            "authorizer": AllowAllAuthorizer(), "base_url": "/", "cookie_secret": TOKEN})
        HTTPServer(app).add_sockets(sockets)
        started.set()
        loop["loop"].run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert started.wait(10)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/{dataapi.PREFIX}",
                      headers={"Authorization": f"token {TOKEN}"}) as client:
        yield lambda path: client.get("list", params={"adaptor": "home", "path": path})
    loop["loop"].call_soon_threadsafe(loop["loop"].stop)
    api.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_surfaces_answer_a_healthy_adaptor(faulty, dav, contents, dataapi):
    faulty.failure = None
    faulty.pipe("/fine/a.txt", b"x")
    assert dav("home/fine/a.txt") == 200
    assert contents("home/fine/a.txt") == 200
    r = dataapi("fine")
    assert r.status_code == 200 and [e["name"] for e in r.json()["entries"]] == ["a.txt"], r.text


@pytest.mark.parametrize("raised", RAISED, ids=lambda c: c.__name__)
def test_one_storage_error_has_one_status_on_every_surface(raised, faulty, dav, contents, dataapi):
    faulty.failure = failure(raised)
    try:
        answer = dataapi("broken")
        got = {"webdav": dav("home/broken.txt"), "contents": contents("home/broken.txt"),
               "data API": answer.status_code}
    finally:
        faulty.failure = None
    assert got == dict.fromkeys(got, EXPECTED[raised]), raised
    body = answer.json()
    assert body["error"] == storage_error(failure(raised)).code and body["message"]
    if body["error"] == "internal_error":
        assert "what the backend said" not in answer.text  # our own fault: no exception text


def test_the_table_answers_what_the_three_surfaces_answered_alike():
    """The statuses the README lists; where the surfaces disagreed, the README says which won."""
    assert EXPECTED == {
        PermissionError: 403, FileNotFoundError: 404, FileExistsError: 409,
        IsADirectoryError: 400, NotADirectoryError: 400, ConnectionError: 503, TimeoutError: 504,
        ConfigError: 500, ValueError: 400, OSError: 502,
        AdaptorUnavailable: 503, ConnectionRefusedError: 503, KeyError: 500,
    }
    assert storage_error(NotFound("no dataset 'x'")).status == 404  # a skerry error keeps its own


def test_the_error_module_offers_exactly_the_tree_and_the_table():
    import inspect

    from skerry import errors

    offered = {n for n, v in vars(errors).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert offered == set(errors.__all__)
    assert all(issubclass(getattr(errors, n), errors.SkerryError) for n in errors.__all__
               if inspect.isclass(getattr(errors, n)))
