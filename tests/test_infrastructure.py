"""Must show 3: the micro-infrastructure API round trip, on the real platform with a real sshd.

alice POSTs a description of "hpc" with an extra SFTP adaptor (its key sent along); the
named server starts; GET lists its endpoints and they answer (WebDAV PROPFIND, a file put
over SFTP read through ``/dav/alice/hpc/cluster/``, the Jupyter server, the data API);
bob's token neither lists, reads nor deletes it (404); a service token with
``read:servers`` reads its endpoints; DELETE stops it, its routes and processes are gone,
its adaptors and credentials removed. Bad descriptions are 400 naming the field with
nothing stored or started; a refused spawn (403) leaves nothing. The SFTP secrets are in
no answer, log, process argument or file of the data dir in clear.

The first tests need no platform: the store's server-scoped adaptors and the parser.
"""

import json
import os
import subprocess

import httpx
import pytest

from helpers import files_holding, pids_of

API = "/services/skerry/api/v1"
POOLS = {"cpu": {"workers": 1}, "gpu": None}  # one pool, to see alice's cluster of it listed
SFTP_PASSWORD = "sftp-Pw-7rQ2-never-in-clear"


# -- the store and the parser (no platform) --------------------------------------


@pytest.fixture
def store(tmp_path):
    from skerry.adaptors.store import AccountStore

    return AccountStore(tmp_path / "accounts", tmp_path / "credentials", tmp_path / "key")


@pytest.fixture
def private_key(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    return (tmp_path / "k").read_text()


def _sftp(name="cluster", credentials=None):
    spec = {"name": name, "type": "sftp", "host": "127.0.0.1", "username": "u", "path": "/x"}
    return {**spec, "credentials": credentials} if credentials is not None else spec


def test_server_adaptors_join_only_their_servers_federation(store, private_key, tmp_path):
    from skerry.hub.service import descriptions

    described = descriptions.parse({"name": "hpc", "adaptors": [_sftp(credentials={"kind": "ssh-key",
                                                                              "private_key": private_key})]})
    store.put_server("alice", "hpc", {"services": described.services}, described.specs, described.credentials)
    specs, credentials = store.federation("alice", "/home/alice", server="hpc")
    assert [s["name"] for s in specs] == ["home", "cluster"]
    assert specs[1]["credentials"] == "hpc/cluster"
    assert credentials["hpc/cluster"]["private_key"] == private_key
    # the default server and other servers do not get them
    assert [s["name"] for s in store.federation("alice", "/home/alice")[0]] == ["home"]
    assert [s["name"] for s in store.federation("alice", "/home/alice", server="other")[0]] == ["home"]
    # the secret is encrypted at rest, and the user's own credential list does not show it
    assert "PRIVATE KEY" not in (tmp_path / "credentials" / "alice.json").read_text()
    assert store.list_credentials("alice") == []
    shown = store.server_credentials("alice", "hpc")["cluster"]
    assert shown["secret"] == "set" and shown["kind"] == "ssh-key"
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True,
                            text=True, check=True).stdout
    assert shown["fingerprint"] == keygen.split()[1]  # the fingerprint ssh-keygen shows
    # deleting the server removes its record and its credentials, and nothing else
    store.put_credential("alice", "mine", "password", {"username": "a"}, {"password": SFTP_PASSWORD})
    assert store.delete_server("alice", "hpc") is True
    assert store.servers("alice") == {} and set(store.credentials("alice")) == {"mine"}
    assert store.delete_server("alice", "hpc") is False


def test_server_names_and_credentials_are_checked(store):
    from skerry.adaptors.store import Conflict
    from skerry.errors import ConfigError
    from skerry.hub.service import descriptions

    store.put_credential("alice", "pw", "password", {"username": "a"}, {"password": SFTP_PASSWORD})
    shown = store.list_credentials("alice")[0]
    assert shown["secret"] == "set" and shown["fingerprint"].startswith("hmac-sha256:")
    assert SFTP_PASSWORD not in json.dumps(shown)
    described = descriptions.parse({"name": "hpc", "adaptors": [_sftp(credentials="pw")]})
    store.put_server("alice", "hpc", {}, described.specs, described.credentials)
    with pytest.raises(Conflict, match="already has a micro-infrastructure named 'hpc'"):
        store.put_server("alice", "hpc", {}, described.specs, described.credentials)
    # a credential a server's adaptor uses cannot be deleted, nor its name taken by an own adaptor
    with pytest.raises(Conflict, match="hpc/cluster"):
        store.delete_credential("alice", "pw")
    from skerry.adaptors.specs import load_spec

    with pytest.raises(Conflict, match="used by the micro-infrastructure 'hpc'"):
        store.put_adaptor("alice", load_spec({"name": "cluster", "type": "memory"}))
    store.put_adaptor("alice", load_spec({"name": "scratch", "type": "memory"}))
    clash = descriptions.parse({"name": "two", "adaptors": [{"name": "scratch", "type": "memory"}]})
    with pytest.raises(ConfigError, match=r"adaptors\[0\] \(scratch\): the name 'scratch' is one of your own"):
        store.check_server("alice", "two", clash.specs, clash.credentials)
    wrong = descriptions.parse({"name": "two", "adaptors": [_sftp(credentials="nothing")]})
    with pytest.raises(ConfigError, match=r"adaptors\[0\] \(cluster\): there is no credential 'nothing'"):
        store.check_server("alice", "two", wrong.specs, wrong.credentials)


BAD_BODIES = [
    ({}, "name: required"),
    ({"name": "Has Caps"}, "name: required"),
    ({"name": "x" * 40}, "name: required"),
    ({"name": "hpc2", "colour": "red"}, "colour: unknown field"),
    ({"name": "hpc2", "services": ["jupyter", "ftp"]}, "services[1]: \"ftp\" is not a service"),
    ({"name": "hpc2", "services": []}, "services: must be a non-empty list"),
    ({"name": "hpc2", "profile": 3}, "profile: must be a profile's slug"),
    ({"name": "hpc2", "options": ["a"]}, "options: must be an object"),
    ({"name": "hpc2", "adaptors": {"a": 1}}, "adaptors: must be a list"),
    ({"name": "hpc2", "adaptors": [{"name": "c", "type": "sftp", "username": "u"}]},
     "adaptors[0]: adaptor spec field 'host': Field required"),
    ({"name": "hpc2", "adaptors": [{"name": "c", "type": "ftp"}]}, "adaptors[0]: adaptor spec: 'type' must be"),
    ({"name": "hpc2", "adaptors": [{"name": "c", "type": "local", "path": "/etc"}]}, "adaptors[0].type: local"),
    ({"name": "hpc2", "adaptors": [{"name": "home", "type": "memory"}]}, "adaptors[0].name: 'home' is reserved"),
    ({"name": "hpc2", "adaptors": [{"type": "memory"}]}, "adaptors[0].name: required"),
    ({"name": "hpc2", "adaptors": [{"name": "m", "type": "memory"}, {"name": "m", "type": "memory"}]},
     "adaptors[1].name: 'm' appears more than once"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials={"kind": "password"})]},
     "adaptors[0].credentials: a password credential needs password"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials={"kind": "ssh-key", "private_key": SFTP_PASSWORD})]},
     "adaptors[0].credentials: private_key is not a private key"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials={"kind": "password", "password": SFTP_PASSWORD,
                                                        "pin": SFTP_PASSWORD})]},
     "adaptors[0].credentials: a password credential has no field(s) pin"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials={"kind": "sftp-key-setup", "password": SFTP_PASSWORD})]},
     "adaptors[0].credentials: sftp-key-setup is not taken here"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials={"kind": "s3", "key": "k", "secret": SFTP_PASSWORD})]},
     "adaptors[0] (cluster): credential 'hpc2/cluster' is of kind 's3'; sftp adaptors take"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials="no-such-credential")]},
     "adaptors[0] (cluster): there is no credential 'no-such-credential'"),
    ({"name": "hpc2", "adaptors": [_sftp(credentials="../x")]}, "adaptors[0].credentials: must be"),
]


# -- the platform ---------------------------------------------------------------


@pytest.fixture(scope="module")
def answers():
    """Every API answer of the platform tests, to grep for secrets at the end."""
    return []


@pytest.fixture(scope="module")
def call(platform, answers):
    def call(method, path, token=None, **kwargs):
        headers = {"Authorization": f"token {token or platform.admin_token}"}
        # a POST waits for the server to start (at most hub.service.infrastructure.START_WAIT)
        r = httpx.request(method, platform.url + API + path, headers=headers, timeout=300, **kwargs)
        answers.append(r.text)
        return r
    return call


@pytest.fixture(scope="module")
def sftp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hpc-sftp")


def _description(sshd, sftp_root) -> dict:
    return {"name": "hpc", "services": ["jupyter", "webdav", "data-api"], "adaptors": [{
        "name": "cluster", "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
        "path": str(sftp_root), "credentials": {"kind": "ssh-key", "private_key": sshd.key}}]}


@pytest.fixture(scope="module")
def hpc(platform, alice, bob, sshd, sftp_root, call):
    """alice's micro-infrastructure "hpc", created through the API: the 201 answer."""
    r = call("POST", "/infrastructure", alice, json=_description(sshd, sftp_root))
    assert r.status_code == 201, r.text
    return r.json()


def _state(platform, user: str) -> dict:
    """What the hub knows of ``user``'s servers, stopped ones too (admin view, with state)."""
    return platform.api("GET", f"/hub/api/users/{user}?include_stopped_servers=1").json()["servers"]


def _stored(platform, user: str) -> dict:
    """The bytes of every account file of ``user``, and their credentials decrypted (to show
    a refused request left nothing: a rewritten credentials file has new bytes)."""
    from skerry.adaptors.store import AccountStore
    from skerry.datadir import DataDir

    found = {}
    for dirpath, _, names in os.walk(platform.data_dir / "accounts" / user):
        for n in names:
            if n != ".lock":
                found[os.path.join(dirpath, n)] = open(os.path.join(dirpath, n), "rb").read()
    found["credentials"] = AccountStore.for_data_dir(DataDir(platform.data_dir)).credentials(user)
    return found


@pytest.mark.platform
def test_post_creates_and_starts_hpc(platform, alice, hpc):
    assert (hpc["user"], hpc["name"], hpc["ready"]) == ("alice", "hpc", True)
    assert hpc["services"] == ["jupyter", "webdav", "data-api"]
    assert set(hpc["endpoints"]) == {"jupyter", "webdav", "data-api", "dask"}
    assert hpc["endpoints"]["jupyter"]["url"] == f"{platform.url}/user/alice/hpc/"
    assert hpc["endpoints"]["webdav"]["url"] == f"{platform.url}/dav/alice/hpc/"
    assert hpc["endpoints"]["data-api"]["url"] == f"{platform.url}/user/alice/hpc/skerry/api/v1/"
    [adaptor] = hpc["adaptors"]
    assert (adaptor["name"], adaptor["type"]) == ("cluster", "sftp")
    assert adaptor["credentials"]["secret"] == "set" and adaptor["credentials"]["fingerprint"].startswith("SHA256:")
    server = _state(platform, "alice")["hpc"]
    assert server["ready"] and server["state"]["pid"]
    # stored as the module docstring of adaptors.store says: the spec in the record, the key encrypted
    record = json.loads((platform.data_dir / "accounts" / "alice" / "servers" / "hpc.json").read_text())
    assert record["adaptors"][0]["credentials"] == "hpc/cluster" and "PRIVATE" not in json.dumps(record)


@pytest.mark.platform
def test_listed_endpoints_work(platform, alice, hpc, sshd, sftp_root, call):
    import sshfs

    r = call("GET", "/infrastructure", alice)
    assert r.status_code == 200
    listed = {i["name"]: i for i in r.json()["infrastructures"]}
    assert set(listed) == {"", "hpc"} and listed["hpc"] == hpc
    assert "cluster" not in json.dumps(listed[""]["adaptors"])  # the default server has no extra adaptors
    endpoints = hpc["endpoints"]
    # a file put over SFTP (the real sshd) is readable through the infrastructure's WebDAV
    fs = sshfs.SSHFileSystem(host="127.0.0.1", port=sshd.port, username=sshd.username, known_hosts=None,
                             client_keys=[str(sshd.base / "user_key")], skip_instance_cache=True)
    fs.makedirs(f"{sftp_root}/results", exist_ok=True)
    fs.pipe_file(f"{sftp_root}/results/run-1.csv", b"step,loss\n1,0.5\n")
    with httpx.Client(base_url=endpoints["webdav"]["url"], auth=("alice", alice), timeout=60) as dav:
        listing = dav.request("PROPFIND", "", headers={"Depth": "1"})
        assert listing.status_code == 207
        assert "/dav/alice/hpc/home/" in listing.text and "/dav/alice/hpc/cluster/" in listing.text
        assert dav.get("cluster/results/run-1.csv").content == b"step,loss\n1,0.5\n"
        assert dav.put("cluster/results/from-dav.txt", content=b"back").status_code == 201
    assert (sftp_root / "results" / "from-dav.txt").read_bytes() == b"back"
    # the default server's WebDAV does not have hpc's adaptor
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/", auth=("alice", alice), headers={"Depth": "1"})
    assert r.status_code == 207 and "/dav/alice/cluster/" not in r.text
    # the Jupyter server and its data API answer, with the authentication the answer describes
    auth = {"Authorization": f"token {alice}"}
    r = httpx.get(endpoints["jupyter"]["url"] + "api/status", headers=auth, timeout=60)
    assert r.status_code == 200 and "started" in r.json()
    r = httpx.get(endpoints["data-api"]["url"] + "adaptors", headers=auth, timeout=60)
    assert r.status_code == 200 and {a["name"] for a in r.json()["adaptors"]} == {"home", "cluster"}
    # dask: her own cluster of the pool once asked for (TLS, her files), its dashboard in her server
    dask = endpoints["dask"]
    assert dask["pools"] == {} and dask["dashboard"] == {} and "skerry/dask/<pool>/status" in dask["note"]
    assert "TLS" in dask["auth"] and "first use of skerry.client" in dask["note"]
    assert call("GET", "/endpoints/hpc", alice).json() == hpc


@pytest.mark.platform
def test_bob_cannot_see_read_or_delete_it(platform, alice, bob, hpc, call):
    r = call("GET", "/infrastructure", bob)
    assert r.status_code == 200 and [i["user"] for i in r.json()["infrastructures"]] == ["bob"]
    assert "hpc" not in r.text
    for method, path in [("GET", "/endpoints/hpc"), ("GET", "/endpoints/hpc?user=alice"),
                         ("GET", "/infrastructure?user=alice"), ("DELETE", "/infrastructure/hpc"),
                         ("DELETE", "/infrastructure/hpc?user=alice")]:
        r = call(method, path, bob)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == "not_found" and r.json()["message"]
    r = httpx.request("PROPFIND", hpc["endpoints"]["webdav"]["url"], auth=("bob", bob), headers={"Depth": "0"})
    assert r.status_code == 403
    assert _state(platform, "alice")["hpc"]["ready"]


@pytest.mark.platform
def test_a_token_with_read_servers_reads_its_endpoints(platform, alice, hpc, call):
    admin = platform.admin_token  # the skerry-admin service: admin role, so read:servers
    r = call("GET", "/endpoints/hpc?user=alice", admin)
    assert r.status_code == 200 and r.json() == hpc
    r = call("GET", "/infrastructure?user=alice", admin)
    assert r.status_code == 200 and "hpc" in {i["name"] for i in r.json()["infrastructures"]}
    assert call("GET", "/endpoints/hpc", admin).status_code == 404  # a service has none of its own
    assert call("GET", "/endpoints/nothing?user=alice", admin).status_code == 404
    # the token's scopes decide, not who owns it: the admin user's token limited to read:servers
    # reads alice's endpoints; limited to read:users, it cannot; neither may delete
    platform.create_user("admin")

    def token(*scopes):
        r = platform.api("POST", "/hub/api/users/admin/tokens", json={"note": "scoped", "scopes": list(scopes)})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    reader, other = token("read:servers"), token("read:users")
    r = call("GET", "/endpoints/hpc?user=alice", reader)
    assert r.status_code == 200 and r.json() == hpc
    assert call("GET", "/endpoints/hpc?user=alice", other).status_code == 404
    assert call("DELETE", "/infrastructure/hpc?user=alice", reader).status_code == 404
    assert _state(platform, "alice")["hpc"]["ready"]


@pytest.mark.platform
@pytest.mark.parametrize("body, words", BAD_BODIES)
def test_bad_descriptions_are_400_naming_the_field(platform, alice, hpc, call, body, words):
    before, servers = _stored(platform, "alice"), set(_state(platform, "alice"))
    r = call("POST", "/infrastructure", alice, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_infrastructure" and r.json()["message"].startswith(words), r.json()
    assert _stored(platform, "alice") == before and set(_state(platform, "alice")) == servers


@pytest.mark.platform
def test_malformed_json_and_taken_names(platform, alice, hpc, sshd, sftp_root, call, bob):
    before = _stored(platform, "alice")
    r = call("POST", "/infrastructure", alice, content=b"{nope")
    assert r.status_code == 400 and r.json()["error"] == "bad_json"
    r = call("POST", "/infrastructure", alice, json=_description(sshd, sftp_root))
    assert r.status_code == 409 and r.json()["error"] == "name_taken" and "hpc" in r.json()["message"]
    assert _stored(platform, "alice") == before
    r = call("POST", "/infrastructure", platform.admin_token, json={"name": "svc"})
    assert r.status_code == 403 and "users" in r.json()["message"]


@pytest.mark.platform
def test_delete_stops_it_and_removes_routes_processes_and_adaptors(platform, alice, hpc, call):
    pgid = _state(platform, "alice")["hpc"]["state"]["pid"]
    members = pids_of("SKERRY_DAV_PREFIX=/dav/alice/hpc/", environ=True)
    assert pgid in members and len(members) >= 3  # micro-infrastructure, Jupyter, WebDAV
    r = call("DELETE", "/infrastructure/hpc", alice)
    assert r.status_code == 204, r.text
    assert "hpc" not in _state(platform, "alice")  # the named server is deleted, not only stopped
    assert not pids_of("SKERRY_DAV_PREFIX=/dav/alice/hpc/", environ=True)
    assert not (platform.data_dir / "accounts" / "alice" / "servers" / "hpc.json").exists()
    assert not (platform.data_dir / "run" / "users" / "alice" / "hpc.adaptors.json").exists()
    from skerry.adaptors.store import AccountStore
    from skerry.datadir import DataDir

    assert not [n for n in AccountStore.for_data_dir(DataDir(platform.data_dir)).credentials("alice")
                if n.startswith("hpc/")]
    # its routes are gone: /dav/alice/hpc/ is now a path in alice's default WebDAV, which has no "hpc"
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/hpc/", auth=("alice", alice), headers={"Depth": "0"})
    assert r.status_code == 404, r.status_code
    r = httpx.get(f"{platform.url}/user/alice/hpc/api/status", headers={"Authorization": f"token {alice}"},
                  follow_redirects=False, timeout=60)
    assert r.status_code != 200 and "started" not in r.text
    assert call("GET", "/endpoints/hpc", alice).status_code == 404
    assert "hpc" not in {i["name"] for i in call("GET", "/infrastructure", alice).json()["infrastructures"]}
    assert call("DELETE", "/infrastructure/hpc", alice).status_code == 404
    assert _state(platform, "alice")[""]["ready"]  # her default server is untouched


@pytest.mark.platform
def test_a_stopped_named_server_answers_503_and_no_server_hides_an_adaptor(platform, alice, call):
    """Issue 15, must show 5: ``/dav/alice/<server>/`` lies inside the folders of alice's
    default server, which runs throughout. Stopped, her named server answers 503 with a
    sentence (not the default server's 404); deleted, the path is the default server's again.
    A server named like one of her adaptors, or an adaptor named like one of her servers,
    is refused with a sentence, and nothing is started or stored."""
    from helpers import wait_for

    dav = f"{platform.url}/dav/alice/parked/"
    propfind = {"auth": ("alice", alice), "headers": {"Depth": "0"}, "timeout": 60}
    hub = f"{platform.url}/hub/api/users/alice/servers"
    as_alice = {"Authorization": f"token {alice}"}
    r = httpx.post(f"{hub}/parked", headers=as_alice, timeout=120)
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: _state(platform, "alice").get("parked", {}).get("ready"), 120, what="alice's server parked")
    assert httpx.request("PROPFIND", dav, **propfind).status_code == 207
    r = httpx.delete(f"{hub}/parked", headers=as_alice, timeout=60)
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: not _state(platform, "alice")["parked"].get("pending"), 60, what="parked to stop")
    for check in (False, True):  # before and after the hub's own repair of the routing table
        if check:
            assert platform.api("POST", "/hub/api/proxy").status_code == 200  # runs check_routes now
        r = httpx.request("PROPFIND", dav, **propfind)
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
        assert "alice's server 'parked' is not running" in r.json()["message"], r.text
    # an adaptor of that name would be hidden behind it: refused while the server exists
    before = _stored(platform, "alice")
    r = call("PUT", "/users/alice/adaptors/parked", alice, json={"type": "memory"})
    assert r.status_code == 409 and r.json()["error"] == "server_name_clash", r.text
    assert "/dav/alice/parked/" in r.json()["message"]
    assert _stored(platform, "alice") == before
    # deleted: the route goes with it, and the path is a folder of the default server again (none)
    r = httpx.request("DELETE", f"{hub}/parked", headers=as_alice, json={"remove": True}, timeout=60)
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: "parked" not in _state(platform, "alice"), 60, what="parked to be deleted")
    assert httpx.request("PROPFIND", dav, **propfind).status_code == 404
    assert "/dav/alice/parked/" not in platform.api("GET", "/hub/api/proxy").json()
    # a server named like an adaptor (the built-in home, or one of hers) is refused with a sentence
    assert call("PUT", "/users/alice/adaptors/scratch", alice, json={"type": "memory"}).status_code == 200
    try:
        for name in ("home", "scratch"):
            direct = httpx.post(f"{hub}/{name}", headers=as_alice, timeout=60)
            assert direct.status_code == 409, direct.text
            assert f"may not be named {name!r}" in direct.json()["message"], direct.text
            assert f"/dav/alice/{name}/ is the folder of the adaptor" in direct.json()["message"]
            # the hub keeps the refused server's record; the repair does not park it over the folder
            assert platform.api("POST", "/hub/api/proxy").status_code == 200
            assert f"/dav/alice/{name}/" not in platform.api("GET", "/hub/api/proxy").json()
            folder = httpx.request("PROPFIND", f"{platform.url}/dav/alice/{name}/", **propfind)
            assert folder.status_code == (207 if name == "home" else 404)  # scratch: mounted at her next start
            httpx.request("DELETE", f"{hub}/{name}", headers=as_alice, json={"remove": True}, timeout=60)
            assert not pids_of(f"SKERRY_DAV_PREFIX=/dav/alice/{name}/", environ=True)
        r = call("POST", "/infrastructure", alice, json={"name": "scratch"})
        assert r.status_code == 409 and "may not be named 'scratch'" in r.json()["message"], r.text
        assert "scratch" not in _state(platform, "alice")
    finally:
        assert call("DELETE", "/users/alice/adaptors/scratch", alice).status_code == 204


@pytest.mark.platform
def test_a_refused_spawn_leaves_nothing(platform, alice, sshd, sftp_root, call):
    """A profile alice may not use: the hub refuses (403) and the API answers so, with nothing left."""
    r = platform.api("POST", API + "/profiles", json={
        "slug": "bob-only", "display_name": "Bob only", "resources": {"cpu_limit": 1, "mem_limit": "2Gi", "gpus": 0},
        "dask": {"max_workers": 1, "worker_memory": "1Gi"}, "access": {"users": ["bob"]}})
    assert r.status_code in (201, 409), r.text
    before = _stored(platform, "alice")
    body = _description(sshd, sftp_root) | {"name": "refused", "profile": "bob-only"}
    body["adaptors"][0]["credentials"] = {"kind": "password", "username": sshd.username, "password": SFTP_PASSWORD}
    r = call("POST", "/infrastructure", alice, json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "spawn_refused"
    # the hub's own sentence, as the hub gives it to a direct spawn request
    direct = httpx.post(f"{platform.url}/hub/api/users/alice/servers/direct", json={"profile": "bob-only"},
                        headers={"Authorization": f"token {alice}"}, timeout=60)
    assert direct.status_code == 403 and r.json()["message"] == direct.json()["message"]
    platform.api("DELETE", "/hub/api/users/alice/servers/direct", json={"remove": True})
    assert "refused" not in _state(platform, "alice")
    assert _stored(platform, "alice") == before
    assert not pids_of("SKERRY_DAV_PREFIX=/dav/alice/refused/", environ=True)


@pytest.mark.platform
def test_no_sftp_secret_in_answers_logs_arguments_or_files(platform, answers, sshd):
    body = sshd.key.strip().splitlines()[1:-1]
    secrets = [line for line in body[2:] if len(line) >= 20] + [SFTP_PASSWORD]  # lines past the public part
    texts = "\n".join(answers)
    assert answers
    for secret in secrets:
        assert secret not in texts
        assert not pids_of(secret)
    assert files_holding(platform.data_dir, *secrets) == []  # hub.log (run/) included


@pytest.mark.platform
def test_her_own_dask_cluster_is_listed_once_started(platform, alice, bob, hpc, call):
    """Last in this module: the descriptions above are compared whole, without a cluster."""
    started = call("POST", "/clusters/cpu", alice).json()
    assert started["address"].startswith("tls://127.0.0.1:")
    assert set(started["tls"]) == {"tls_ca_file", "tls_client_cert", "tls_client_key"}
    [mine] = [i for i in call("GET", "/infrastructure", alice).json()["infrastructures"] if i["name"] == ""]
    assert mine["endpoints"]["dask"]["pools"] == {"cpu": started["address"]}
    assert call("GET", "/clusters", alice).json() == {"pools": ["cpu"], "clusters": {"cpu": started["address"]}}
    # bob sees none of it; a service token has no cluster; an unknown pool says which there are
    assert call("GET", "/clusters", bob).json() == {"pools": ["cpu"], "clusters": {}}
    r = call("POST", "/clusters/cpu")
    assert r.status_code == 403 and r.json()["error"] == "not_a_user"
    r = call("POST", "/clusters/tpu", alice)
    assert r.status_code == 404 and r.json() == {"error": "no_pool",
                                                  "message": "this platform runs no 'tpu' pool (pools: cpu)"}
