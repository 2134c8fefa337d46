"""Ports of users' servers (skerry/ports.py), on real sockets and real processes: held ports are
never given to another process's bind(0) (JupyterHub's random_port included), a bind without
SO_REUSEADDR is refused, the intended server (cheroot, Tornado) binds them all the same; the
identity check accepts the server started with the key only, and names what else answered."""

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from skerry.ports import NoAnswer, PortLeases, WrongServer, check_identity, new_key

CHEROOT = textwrap.dedent("""
    import sys
    from cheroot import wsgi
    from skerry.ports import identity_wsgi
    port, key, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    def app(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here"]
    server = wsgi.Server(("127.0.0.1", port), identity_wsgi(app, f"/dav/{user}", "webdav", key, user, ""))
    server.prepare()
    print("listening", flush=True)
    server.serve()
""")

TORNADO = textwrap.dedent("""
    import asyncio, sys
    import tornado.web
    from skerry.ports import tornado_handlers
    port, key, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    async def main():
        app = tornado.web.Application(tornado_handlers(f"/user/{user}/", "jupyter", key, user, ""))
        app.listen(port, "127.0.0.1")
        print("listening", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")

PICKER = textwrap.dedent("""
    import json, socket, sys
    from jupyterhub.utils import random_port
    held = set(json.loads(sys.argv[1]))
    got = set()
    for _ in range(int(sys.argv[2])):
        got.add(random_port())
        s = socket.socket(); s.bind(("127.0.0.1", 0)); got.add(s.getsockname()[1]); s.close()
    refused = 0
    for port in held:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            refused += 1
        s.close()
    print(json.dumps({"taken": sorted(got & held), "refused": refused}))
""")


def serve(script: str, port: int, key: str, user: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, str(port), key, user], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "listening", f"the test server did not start on port {port}: {line!r}"
    return proc


def stop(*procs):
    for proc in procs:
        proc.kill()
        proc.wait()


def test_leased_ports_are_distinct_and_no_other_process_gets_them():
    leases = PortLeases()
    ports = [p for i in range(40) for p in leases.lease(f"user{i}/", 2)]
    assert len(set(ports)) == 80, "a port was leased twice"
    assert leases.owner(ports[0]) == "user0/" and leases.owner(ports[-1]) == "user39/"
    # another process racing for ports: random_port() and bind(0), 2 x 5000 picks
    out = subprocess.run([sys.executable, "-c", PICKER, json.dumps(ports), "5000"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["taken"] == [], f"another process was given held ports {result['taken']}"
    assert result["refused"] == 80, "a bind without SO_REUSEADDR to a held port succeeded"
    for i in range(40):
        leases.release(f"user{i}/")
    assert leases.owner(ports[0]) is None


def test_the_intended_servers_bind_held_ports_and_prove_who_they_are():
    leases = PortLeases()
    dav_port, jupyter_port = leases.lease("alice/", 2)
    key = new_key()
    dav = serve(CHEROOT, dav_port, key, "alice")
    jupyter = serve(TORNADO, jupyter_port, key, "alice")
    try:
        asyncio.run(check_identity(dav_port, "/dav/alice/", key, "alice", "", "webdav", 10))
        asyncio.run(check_identity(jupyter_port, "/user/alice/", key, "alice", "", "jupyter", 10))
        # the same server asked for another role or user, or with another key: not it
        with pytest.raises(WrongServer, match=f"port {dav_port} is answered by another skerry endpoint"):
            asyncio.run(check_identity(dav_port, "/dav/alice/", key, "alice", "", "jupyter", 5))
        with pytest.raises(WrongServer):
            asyncio.run(check_identity(jupyter_port, "/user/alice/", new_key(), "alice", "", "jupyter", 5))
    finally:
        stop(dav, jupyter)
        leases.release("alice/")


def test_a_stranger_on_the_port_is_detected_and_named():
    leases = PortLeases()
    (port,) = leases.lease("alice/")
    leases.release("alice/")  # as if it had been taken between choosing and binding
    bob = serve(CHEROOT, port, new_key(), "bob")  # bob's WebDAV endpoint got alice's Jupyter port
    try:
        with pytest.raises(WrongServer) as e:
            asyncio.run(check_identity(port, "/user/alice/", new_key(), "alice", "", "jupyter", 5))
        assert f"port {port} is answered by a process that is not this server (HTTP 404" in e.value.message
        assert "alice's jupyter endpoint" in e.value.message
    finally:
        stop(bob)
    bob = serve(CHEROOT, port, new_key(), "bob")
    try:
        with pytest.raises(WrongServer, match="another skerry endpoint \\(it says: 'bob'"):
            asyncio.run(check_identity(port, "/dav/bob/", new_key(), "bob", "", "webdav", 5))
    finally:
        stop(bob)
    plain = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(WrongServer, match="not this server"):
            asyncio.run(check_identity(port, "/dav/alice/", new_key(), "alice", "", "webdav", 10))
    finally:
        stop(plain)


def test_nothing_answering_is_a_timeout_or_an_ended_process_with_a_sentence():
    leases = PortLeases()
    (port,) = leases.lease("alice/")  # held, and nobody listens
    try:
        with pytest.raises(NoAnswer, match=f"alice's webdav endpoint did not answer on port {port} within 0.5s"):
            asyncio.run(check_identity(port, "/dav/alice/", new_key(), "alice", "", "webdav", 0.5))
        with pytest.raises(NoAnswer, match="alice's jupyter endpoint of server 'gpu' ended before it answered"):
            asyncio.run(check_identity(port, "/user/alice/gpu/", new_key(), "alice", "gpu", "jupyter", 30,
                                       alive=lambda: False))
    finally:
        leases.release("alice/")
