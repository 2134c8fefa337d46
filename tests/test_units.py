"""Unit tests of the pieces that need no running platform."""

import base64
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from helpers import ENDPOINT_ALONE, wait_for
from skerry.cli import main
from skerry.datadir import DataDir
from skerry.hub.userserver.tokenauth import _parse
from skerry.process import group_members, is_running, kill_group, start_time


def test_secret_is_created_once_with_mode_0600(tmp_path):
    data = DataDir(tmp_path / "d").ensure()
    token = data.admin_api_token
    path = data.secrets / "admin-api-token"
    assert len(token) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.secrets.stat().st_mode) == 0o700
    assert DataDir(tmp_path / "d").ensure().admin_api_token == token


def test_empty_secret_file_is_an_error_not_a_new_secret(tmp_path):
    data = DataDir(tmp_path / "d").ensure()
    (data.secrets / "admin-api-token").write_text("")
    with pytest.raises(Exception, match="is empty"):
        data.admin_api_token  # noqa: B018 (the lookup is the test)


def test_ports_are_chosen_once(tmp_path):
    data = DataDir(tmp_path / "d").ensure()
    ports = data.ports()
    assert set(ports) == {"hub", "proxy_api", "service"}
    assert stat.S_IMODE((data.run / "ports.json").stat().st_mode) == 0o600  # the platform's own
    assert DataDir(tmp_path / "d").ports() == ports


def test_ports_are_chosen_again_where_one_is_the_public_port(tmp_path):
    """The public port is free while the hub chooses its own (the proxy binds it later): a
    kept choice that meets it, or two kept ports alike, are chosen again, apart."""
    data = DataDir(tmp_path / "d").ensure()
    ports = data.ports()
    assert data.ports(avoid=frozenset({12345})) == ports
    again = data.ports(avoid=frozenset({ports["service"]}))
    assert ports["service"] not in again.values() and len(set(again.values())) == 3
    assert DataDir(tmp_path / "d").ports() == again  # kept
    (data.run / "ports.json").write_text('{"hub": 5000, "proxy_api": 5000, "service": 5001}')
    assert len(set(data.ports().values())) == 3


def test_a_quiet_port_is_never_one_to_avoid(monkeypatch):
    """A port chosen but not bound yet (the public one, the endpoint's) is free now: it is never chosen."""
    import itertools

    from skerry import ports

    draws = itertools.cycle([0, 1])  # the random draws: the two lowest ports of the range, in turn
    monkeypatch.setattr(ports.secrets, "randbelow", lambda n: next(draws))
    first = ports.quiet_port()
    chosen = {ports.quiet_port(avoid={first}) for _ in range(5)}  # each draws both ports: without avoid, first too
    assert len(chosen) == 1 and abs(chosen.pop() - first) == 1


def test_data_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["up", "--data-dir", str(tmp_path / "f")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000"])
def test_bad_port_is_refused(tmp_path, capsys, port):
    assert main(["up", "--data-dir", str(tmp_path / "d"), "--port", port]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


def test_port_that_is_not_a_number_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["up", "--port", "eighty"])
    assert e.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_start_time_tells_a_reused_pid_apart():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        started = start_time(p.pid)
        assert is_running(p.pid, started)
        assert not is_running(p.pid, started + 1)
        assert group_members(p.pid) == [p.pid]
    finally:
        kill_group(p.pid, signal.SIGKILL)
        p.wait()
    assert not is_running(p.pid)
    assert start_time(p.pid) is None


def b64(text):
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("header,expected", [
    (b64("alice:tok"), ("alice", "tok")),
    (b64("alice:to:k"), ("alice", "to:k")),
    ("token abc", (None, "abc")),
    ("Bearer abc", (None, "abc")),
    ("", (None, None)),
    ("Basic", (None, None)),
    (b64("alice:"), (None, None)),
    (b64("alice"), (None, None)),
    ("Basic ***", (None, None)),
    ("Digest username=alice", (None, None)),
])
def test_authorization_header_parsing(header, expected):
    assert _parse(header) == expected


def test_the_launcher_stops_when_one_member_dies(tmp_path):
    """When the Jupyter member exits, the WebDAV member is stopped and the group is gone."""
    from skerry.adaptors.config import write_config

    write_config(str(tmp_path / "adaptors.json"), [{"name": "home", "type": "local", "path": str(tmp_path)}])
    env = dict(os.environ, SKERRY_DAV_PORT="0", SKERRY_DAV_FRONT="off", SKERRY_ADAPTORS=str(tmp_path / "adaptors.json"),
               SKERRY_DAV_PREFIX="/dav/x/", SKERRY_USER="x", JUPYTERHUB_API_URL="http://127.0.0.1:1/hub/api")
    jupyter = [sys.executable, "-c", "import time; time.sleep(4)"]
    p = subprocess.Popen([sys.executable, "-m", "skerry.hub.userserver.launcher", *jupyter],
                         env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(group_members(p.pid)) == ENDPOINT_ALONE, timeout=3.5, what="all members")
        code = p.wait(30)
    finally:
        kill_group(p.pid)
    assert code == 1
    assert b"Jupyter server exited" in p.stderr.read()
    time.sleep(0.2)
    assert group_members(p.pid) == []


def test_port_in_use_is_refused_before_anything_starts(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["up", "--data-dir", str(tmp_path / "d"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # nothing written


def test_unknown_ip_is_refused(tmp_path, capsys):
    assert main(["up", "--data-dir", str(tmp_path / "d"), "--ip", "203.0.113.7"]) == 2
    assert "cannot listen on 203.0.113.7:8000" in capsys.readouterr().err


@pytest.mark.parametrize("held, required, granted", [
    ({"access:servers!user=alice"}, {"access:servers!user=alice"}, True),
    ({"access:servers"}, {"access:servers!user=alice"}, True),  # unfiltered: every server
    ({"access:servers!user=alice"}, {"access:servers!server=alice/"}, True),  # her filter covers her servers
    ({"access:servers!server=alice/"}, {"access:servers!server=alice/", "access:servers!user=alice"}, True),
    ({"access:servers!server=alice/other"}, {"access:servers!server=alice/"}, False),  # another server
    ({"access:servers!server=alice/"}, {"access:servers!user=alice"}, False),  # one server is not all hers
    ({"access:servers!user=bob"}, {"access:servers!user=alice", "access:servers!server=alice/"}, False),
    ({"access:servers!user=alice"}, {"access:servers"}, False),  # filtered never covers unfiltered
    ({"read:users!user=alice", "access:services"}, {"access:servers!user=alice"}, False),
    (set(), {"access:servers!user=alice"}, False),
])
def test_a_tokens_scopes_grant_access_as_the_hub_decides(held, required, granted):
    from skerry.hub.userserver.tokenauth import grants

    assert grants(held, required) is granted


@pytest.fixture
def stand_in_hub():
    """A stand-in for the hub's ``GET /hub/api/user`` (the real hub: tests/test_webdav.py):
    ``(url, asked, hub)``, where ``asked`` lists (path, Authorization) of each question and
    ``hub["status"]`` and ``hub["delay"]`` set its next answers."""
    import http.server
    import json
    import threading
    import time

    asked, hub = [], {"status": 200, "delay": 0.0}

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append((self.path, self.headers["Authorization"]))
            time.sleep(hub["delay"])
            body = json.dumps({"kind": "user", "name": "alice", "scopes": []}).encode()
            self.send_response(hub["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hub/api/", asked, hub
    finally:
        server.shutdown()


def test_hub_tokens_keeps_an_answer_for_its_cache_time_and_says_when_the_hub_fails(stand_in_hub):
    from skerry.hub.userserver.tokenauth import HubTokens

    url, asked, answers = stand_in_hub
    hub = HubTokens(url, cache_seconds=30)
    assert hub.kept("t1") is None  # nothing kept yet, and nothing asked for it
    assert hub.user_for_token("t1")["name"] == "alice"
    assert hub.user_for_token("t1")["name"] == "alice"
    assert asked == [("/hub/api/user", "token t1")]  # the second answer was kept
    assert hub.kept("t1")["name"] == "alice" and hub.kept("t9") is None and len(asked) == 1
    answers["status"] = 403
    assert hub.user_for_token("t2") is None
    assert hub.user_for_token("t2") is None and len(asked) == 3  # a refusal is asked again
    answers["status"] = 500
    with pytest.raises(OSError):
        hub.user_for_token("t3")
    assert hub.user_for_token("t1")["name"] == "alice"  # still kept
    hub.cache_seconds = 0
    assert hub.kept("t1") is None  # no longer kept
    with pytest.raises(OSError):
        hub.user_for_token("t1")


def test_hub_tokens_asks_the_hub_once_for_a_client_s_parallel_requests(stand_in_hub):
    """With no answer kept, 8 threads asking at once make one question to the hub (which
    answers slowly, as a busy hub does)."""
    import threading

    from skerry.hub.userserver.tokenauth import HubTokens

    url, asked, answers = stand_in_hub
    answers["delay"] = 0.2
    hub = HubTokens(url, cache_seconds=30)
    found = []
    clients = [threading.Thread(target=lambda: found.append(hub.user_for_token("t1"))) for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert [a["name"] for a in found] == ["alice"] * 8
    assert asked == [("/hub/api/user", "token t1")]
    assert hub._asking == {}  # nothing held once answered


def test_the_granian_shim_steps_a_lazy_app_once_and_ends_reads_at_the_body():
    """What granian needs of a WSGI app (hub/userserver/wsgishim.py): the status of an app
    that answers from a generator is set before the server reads it, and a read of more
    than the body has returns what it has instead of waiting for the rest."""
    import io

    from skerry.hub.userserver.wsgishim import for_granian

    closed = []

    def lazy(environ, start_response):
        body = environ["wsgi.input"].read(1024 * 1024)  # wsgidav's block size
        try:
            start_response("206 Partial Content", [("Content-Length", str(len(body)))])
            yield body
        finally:
            closed.append(True)

    class Stream(io.BytesIO):  # a body granian has not finished receiving: more bytes never come
        def read(self, size=-1):
            assert 0 <= size <= 11, f"a read of {size} bytes would wait for bytes that never come"
            return super().read(size)

    seen = []
    result = for_granian(lazy)({"CONTENT_LENGTH": "11", "wsgi.input": Stream(b"hello world")},
                               lambda status, headers, exc_info=None: seen.append((status, headers)))
    assert seen == [("206 Partial Content", [("Content-Length", "11")])]  # before any iteration
    assert list(result) == [b"hello world"]
    result.close()
    assert closed == [True]


def test_the_granian_shim_keeps_the_process_environment_out_of_requests(tmp_path):
    """A real granian copies its process's environment into every request's environ (the
    endpoint's holds its hub token); behind ``for_granian`` the app sees the request only."""
    import httpx

    from helpers import free_port

    (tmp_path / "envapp.py").write_text(
        "from skerry.hub.userserver.wsgishim import for_granian\n"
        "def bare(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [' '.join(sorted(k for k in environ if isinstance(k, str))).encode()]\n"
        "def app(environ, start_response):\n"
        "    return (shimmed if environ['PATH_INFO'] == '/shimmed' else bare)(environ, start_response)\n"
        "shimmed = for_granian(bare)\n")
    port = free_port()
    env = {**os.environ, "SKERRY_TEST_SECRET": "s3cret", "PYTHONPATH": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "envapp:app"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answers():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/bare", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, what="granian")
        bare = httpx.get(f"http://127.0.0.1:{port}/bare", headers={"X-Asked": "1"}).text.split()
        shimmed = httpx.get(f"http://127.0.0.1:{port}/shimmed", headers={"X-Asked": "1"}).text.split()
    finally:
        server.terminate()
        server.wait(10)
    assert "SKERRY_TEST_SECRET" in bare and "PATH" in bare  # what granian does on its own
    assert "SKERRY_TEST_SECRET" not in shimmed and "PATH" not in shimmed
    assert {"REQUEST_METHOD", "PATH_INFO", "HTTP_X_ASKED", "wsgi.input"} <= set(shimmed)


def test_the_granian_shim_reads_what_a_refusing_app_left_of_the_body():
    """An app that answers without reading the body (a 412 before a PUT's bytes): the
    rest of the body is read before the answer goes out, so the connection the proxy is
    sending on is not dropped under it."""
    import io

    from skerry.hub.userserver.wsgishim import for_granian

    def refusing(environ, start_response):
        start_response("412 Precondition Failed", [("Content-Length", "0")])
        return [b""]

    body = io.BytesIO(b"x" * 3_000_000)
    seen = []
    for_granian(refusing)({"CONTENT_LENGTH": "3000000", "wsgi.input": body},
                          lambda status, headers, exc_info=None: seen.append(body.tell()))
    assert seen == [3_000_000]  # all read when the status went to the server


def test_only_a_new_home_gets_the_tutorials(tmp_path):
    from skerry.tutorials import FOLDER, new_home

    assert new_home(tmp_path / "users" / "alice") is True
    made = tmp_path / "users" / "alice"
    assert (made.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in (made / FOLDER).iterdir())[:2] == ["01_storage_tour.ipynb", "02_first_pipeline.ipynb"]
    (made / FOLDER / "01_storage_tour.ipynb").unlink()  # she deleted one: it never comes back
    assert new_home(made) is False
    assert not (made / FOLDER / "01_storage_tour.ipynb").exists()
    existing = tmp_path / "users" / "bob"
    existing.mkdir()
    assert new_home(existing) is False and list(existing.iterdir()) == []


def test_the_webdav_front_is_taken_where_installed_and_demanded_only_where_asked(monkeypatch):
    """``SKERRY_DAV_FRONT``: 'auto' takes nginx with its Lua module where installed and does
    without it elsewhere; 'nginx' without it is a sentence naming what to install; 'off' never
    looks."""
    from skerry.errors import SetupError
    from skerry.hub.userserver import davfront

    found = davfront.LuaNginx("/usr/sbin/nginx", "/usr/lib/nginx/modules")
    monkeypatch.setattr(davfront, "find_nginx", lambda: found)
    for wanted, expected in (("auto", found), ("nginx", found), ("off", None)):
        monkeypatch.setenv("SKERRY_DAV_FRONT", wanted)
        assert davfront.wanted_nginx() is expected
    monkeypatch.setattr(davfront, "find_nginx", lambda: None)
    monkeypatch.setenv("SKERRY_DAV_FRONT", "auto")
    assert davfront.wanted_nginx() is None
    monkeypatch.setenv("SKERRY_DAV_FRONT", "nginx")
    with pytest.raises(SetupError, match="libnginx-mod-http-lua"):
        davfront.wanted_nginx()


@pytest.mark.parametrize("umask, access", [(0o077, "user:rw"), (0o022, "user:rw group:r all:r"),
                                           (0o027, "user:rw group:r"), (0o002, "user:rw group:rw all:r"),
                                           (0o044, None)])
def test_the_fronts_puts_get_the_mode_the_endpoints_umask_gives(umask, access):
    """nginx sets an uploaded file's mode from ``dav_access`` exactly: the words for ``0o666 & ~umask``;
    a mode it has no words for (write without read) leaves PUTs to the endpoint."""
    from skerry.hub.userserver.davfront import _dav_access

    assert _dav_access(umask) == access
