"""Per-user adaptors and credentials through the hub service, on the real platform.

alice stores an S3 and an SFTP adaptor with their credentials, starts her server and
reads and writes through /dav/alice/<adaptor>/; bob cannot touch her account, the admin
can; no answer, log or process argument ever shows a secret; bad input is a 400 with a
sentence and stores nothing.
"""

import json
import os

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from helpers import files_holding, pids_of

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"
S3_KEY = "AKIAALICEEXAMPLE7Q"
S3_SECRET = "alice-s3-secret-Zq93-never-shown"


@pytest.fixture(scope="module")
def answers():
    """Every API answer of this module, to grep for secrets at the end."""
    return []


@pytest.fixture(scope="module")
def call(platform, answers):
    def call(method, path, token=None, **kwargs):
        r = platform.api(method, API + path, token=token, **kwargs)
        answers.append(r.text)
        return r
    return call


def account_files(platform, user):
    """The bytes of every stored file of ``user`` (to show a refused request wrote nothing)."""
    paths = [platform.data_dir / "accounts" / user / "adaptors.json",
             platform.data_dir / "run" / "users" / user / "jwt-keys.json",
             platform.data_dir / "secrets" / "credentials" / f"{user}.json"]
    return {str(p): p.read_bytes() if p.exists() else None for p in paths}


@pytest.fixture(scope="module")
def alice_federation(platform, alice, call, sshd, s3server, tmp_path_factory):
    """alice's S3 and SFTP adaptors stored, and her server restarted to pick them up."""
    s3server.make_bucket("alice-data")
    sftp_root = tmp_path_factory.mktemp("alice-sftp")
    r = call("PUT", "/users/alice/credentials/bucket", alice, json={"kind": "s3", "key": S3_KEY, "secret": S3_SECRET})
    assert r.status_code == 200, r.text
    r = call("PUT", "/users/alice/credentials/hpc-key", alice, json={"kind": "ssh-key", "private_key": sshd.key})
    assert r.status_code == 200, r.text
    r = call("PUT", "/users/alice/adaptors/s3", alice, json={
        "type": "s3", "bucket": "alice-data", "prefix": "projects", "endpoint_url": s3server.url,
        "credentials": "bucket"})
    assert r.status_code == 200, r.text
    r = call("PUT", "/users/alice/adaptors/sftp", alice, json={
        "name": "sftp", "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
        "path": str(sftp_root), "credentials": "hpc-key"})
    assert r.status_code == 200, r.text
    # adaptor changes apply at the next start of the server
    platform.stop_server("alice")
    platform.start_server("alice")
    return sftp_root


def test_alice_reads_and_writes_through_her_s3_and_sftp_adaptors(platform, alice, alice_federation, s3server):
    import s3fs

    with httpx.Client(base_url=f"{platform.url}/dav/alice/", auth=("alice", alice), timeout=60) as dav:
        listing = dav.request("PROPFIND", "", headers={"Depth": "1"})
        assert listing.status_code == 207
        for name in ("home", "s3", "sftp"):
            assert f"/dav/alice/{name}/" in listing.text
        assert dav.put("s3/report.csv", content=b"a,b\n1,2\n").status_code == 201
        assert dav.request("MKCOL", "sftp/run/").status_code == 201
        assert dav.put("sftp/run/out.txt", content=b"from hpc").status_code == 201
        assert dav.get("s3/report.csv").content == b"a,b\n1,2\n"
        assert dav.get("sftp/run/out.txt").content == b"from hpc"
    # the bytes are in the real storage behind each adaptor
    fs = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3server.url})
    assert fs.cat("alice-data/projects/report.csv") == b"a,b\n1,2\n"
    assert (alice_federation / "run" / "out.txt").read_bytes() == b"from hpc"


def test_listing_shows_home_first_and_no_secrets(platform, alice, alice_federation, call, sshd):
    r = call("GET", "/users/alice/adaptors", alice)
    assert r.status_code == 200
    adaptors = r.json()["adaptors"]
    assert [a["name"] for a in adaptors] == ["home", "s3", "sftp"]
    assert adaptors[0]["type"] == "local"
    assert adaptors[1]["credentials"] == "bucket"
    r = call("GET", "/users/alice/credentials", alice)
    assert r.status_code == 200
    creds = {c["name"]: c for c in r.json()["credentials"]}
    assert creds["bucket"]["kind"] == "s3" and creds["bucket"]["created"]
    assert creds["hpc-key"]["kind"] == "ssh-key" and creds["hpc-key"]["public_key"].startswith("ssh-ed25519 ")
    assert S3_SECRET not in r.text and S3_KEY not in r.text and "PRIVATE KEY" not in r.text


def test_bob_cannot_read_or_change_alices_account(platform, alice, bob, alice_federation, call):
    before = account_files(platform, "alice")
    for method, path, body in [
        ("GET", "/users/alice/adaptors", None),
        ("PUT", "/users/alice/adaptors/mine", {"type": "memory"}),
        ("DELETE", "/users/alice/adaptors/s3", None),
        ("GET", "/users/alice/credentials", None),
        ("PUT", "/users/alice/credentials/x", {"kind": "password", "password": "p"}),
        ("DELETE", "/users/alice/credentials/bucket", None),
        ("GET", "/users/alice/jwt-keys", None),
        ("DELETE", "/users/alice/jwt-keys/k", None),
        ("GET", "/users/nobody/adaptors", None),  # no hint whether a user exists
    ]:
        r = call(method, path, bob, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"] == "forbidden" and r.json()["message"]
    assert account_files(platform, "alice") == before
    # bob's own account is his
    assert call("GET", "/users/bob/adaptors", bob).json()["adaptors"][0]["name"] == "home"


def test_admin_manages_alices_account(platform, alice, alice_federation, call):
    admin = platform.admin_token  # the admin API token (service skerry-admin, scope admin:users)
    r = call("GET", "/users/alice/credentials", admin)
    assert r.status_code == 200 and {c["name"] for c in r.json()["credentials"]} == {"bucket", "hpc-key"}
    r = call("PUT", "/users/alice/adaptors/scratch", admin, json={"type": "memory"})
    assert r.status_code == 200 and r.json()["name"] == "scratch"
    assert call("DELETE", "/users/alice/adaptors/scratch", admin).status_code == 204
    assert call("DELETE", "/users/alice/adaptors/scratch", admin).status_code == 404
    r = call("GET", "/users/nobody/adaptors", admin)
    assert r.status_code == 404 and r.json()["error"] == "no_such_user"


@pytest.mark.parametrize("path, body, code, words", [
    ("/adaptors/bad", {"type": "sftp", "username": "u"}, "bad_spec", "'host': Field required"),
    ("/adaptors/bad", {"type": "ftp"}, "bad_spec", "'type' must be one of"),
    ("/adaptors/bad", {"type": "s3", "bucket": "bkt", "credentials": "nope"}, "bad_spec", "no credential 'nope'"),
    ("/adaptors/bad", {"type": "s3", "bucket": "bkt", "credentials": "hpc-key"}, "bad_spec", "s3 adaptors take s3"),
    ("/adaptors/bad", {"type": "local", "path": "/etc"}, "bad_spec", "local adaptors"),
    ("/adaptors/bad", {"name": "other", "type": "memory"}, "bad_spec", "the URL 'bad'"),
    ("/adaptors/home", {"type": "memory"}, "reserved", "reserved"),
    ("/adaptors/Bad", {"type": "memory"}, "bad_spec", "'name'"),
    ("/credentials/bad", {"kind": "s3", "key": "k"}, "bad_credential", "needs secret"),
    ("/credentials/bad", {"kind": "ssh-key", "private_key": "not a key"}, "bad_credential", "not a private key"),
    ("/credentials/bad", {"kind": "telepathy"}, "bad_credential", "'kind' must be"),
    ("/credentials/bad", {"kind": "sftp-key-setup", "host": "h", "username": "u"}, "bad_credential", "'password'"),
    ("/credentials/Bad!", {"kind": "password", "password": "p"}, "bad_credential", "not a credential name"),
    ("/jwt-keys/k", {"public_key": "nope"}, "bad_key", "not a PEM public key"),
])
def test_bad_input_is_400_with_a_sentence_and_stores_nothing(platform, alice, alice_federation, call,
                                                             path, body, code, words):
    before = account_files(platform, "alice")
    r = call("PUT", "/users/alice" + path, alice, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code and words in r.json()["message"], r.json()
    assert account_files(platform, "alice") == before


def test_bad_json_is_400(platform, alice, alice_federation, call):
    before = account_files(platform, "alice")
    for path in ("/adaptors/x", "/credentials/x", "/jwt-keys/x"):
        r = call("PUT", "/users/alice" + path, alice, content=b"{not json", headers={"Authorization": f"token {alice}"})
        assert r.status_code == 400 and r.json()["error"] == "bad_json" and r.json()["message"]
        r = call("PUT", "/users/alice" + path, alice, json=["a", "list"])
        assert r.status_code == 400 and r.json()["error"] == "bad_json"
        r = call("PUT", "/users/alice" + path, alice, content=b'{"a": "' + b"x" * 70_000 + b'"}')
        assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert account_files(platform, "alice") == before


def test_credential_in_use_cannot_be_deleted(platform, alice, alice_federation, call):
    r = call("DELETE", "/users/alice/credentials/bucket", alice)
    assert r.status_code == 409 and "s3" in r.json()["message"]
    assert call("DELETE", "/users/alice/credentials/nothing", alice).status_code == 404


def _pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_jwt_keys(platform, alice, call):
    import time

    import jwt

    rsa_private = rsa.generate_private_key(65537, 2048)
    rsa_pem = _pem(rsa_private)
    ec_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
    r = call("PUT", "/users/alice/jwt-keys/laptop", alice, json={"public_key": rsa_pem})
    assert r.status_code == 200 and r.json() == {"kid": "laptop", "alg": "RS256", "public_key": rsa_pem}
    r = call("PUT", "/users/alice/jwt-keys/robot", alice, json={"public_key": ec_pem})
    assert r.status_code == 200 and r.json()["alg"] == "ES256"
    for weak in (_pem(rsa.generate_private_key(65537, 1024)), _pem(ec.generate_private_key(ec.SECP384R1())),
                 _pem(ed25519.Ed25519PrivateKey.generate())):
        r = call("PUT", "/users/alice/jwt-keys/weak", alice, json={"public_key": weak})
        assert r.status_code == 400 and r.json()["error"] == "bad_key", r.text
    # the file the WebDAV JWT verifier reads, in exactly this format
    keys_file = platform.data_dir / "run" / "users" / "alice" / "jwt-keys.json"
    stored = json.loads(keys_file.read_text())
    # public keys only: the platform's file, readable by alice's account through its group
    assert keys_file.stat().st_gid == platform.account("alice").pw_gid and keys_file.stat().st_mode & 0o777 == 0o640
    assert stored == {"keys": [{"kid": "laptop", "alg": "RS256", "public_key": rsa_pem},
                               {"kid": "robot", "alg": "ES256", "public_key": ec_pem}]}
    assert call("GET", "/users/alice/jwt-keys", alice).json() == stored
    # alice's running server accepts a JWT signed by the key she registered
    token = jwt.encode({"sub": "alice", "aud": "skerry", "exp": int(time.time()) + 300}, rsa_private,
                       algorithm="RS256", headers={"kid": "laptop"})
    r = httpx.request("PROPFIND", f"{platform.url}/dav/alice/", headers={"Authorization": f"Bearer {token}",
                                                                         "Depth": "0"})
    assert r.status_code == 207, r.text
    assert call("GET", "/users/alice/jwt-keys/robot", alice).json()["alg"] == "ES256"
    assert call("DELETE", "/users/alice/jwt-keys/robot", alice).status_code == 204
    assert call("GET", "/users/alice/jwt-keys/robot", alice).status_code == 404
    assert [k["kid"] for k in call("GET", "/users/alice/jwt-keys", alice).json()["keys"]] == ["laptop"]


def test_micro_infrastructure_is_told_where_the_jwt_keys_are(platform, alice):
    pid = platform.group_of("alice")
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    expected = str(platform.data_dir / "run" / "users" / "alice" / "jwt-keys.json").encode()
    assert b"SKERRY_JWT_KEYS=" + expected in env


def test_a_broken_stored_spec_fails_the_spawn_with_a_sentence(platform):
    platform.create_user("carol")
    folder = platform.data_dir / "accounts" / "carol"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "adaptors.json").write_text(json.dumps({"adaptors": [{"name": "x", "type": "sftp"}]}))
    r = platform.api("POST", "/hub/api/users/carol/server")
    assert r.status_code >= 400, r.text
    assert "adaptors of carol cannot be set up" in r.json()["message"], r.text
    assert platform.server("carol") is None


def test_no_secret_in_answers_logs_or_process_arguments(platform, alice, alice_federation, answers, sshd):
    private_body = "".join(sshd.key.strip().splitlines()[1:-1])
    texts = "\n".join(answers)
    assert answers and S3_SECRET not in texts and private_body[:40] not in texts
    assert not pids_of(S3_SECRET)
    # nor in the clear anywhere in the data dir (logs included) but the file handed to the
    # server: alice's account's own, 0600
    handed = platform.data_dir / "run" / "users" / "alice" / "default.adaptors.json"
    assert handed.stat().st_uid == platform.account("alice").pw_uid and handed.stat().st_mode & 0o777 == 0o600
    assert files_holding(platform.data_dir, S3_SECRET) in ([], [str(handed)])


def test_an_admin_user_manages_alices_account(platform, alice, call):
    platform.create_user("admin")  # the hub's admin user (admin_users in hub/plugins/settings.py)
    admin_user_token = platform.user_token("admin")
    r = call("PUT", "/users/alice/adaptors/scratch2", admin_user_token, json={"type": "memory"})
    assert r.status_code == 200, r.text
    assert call("DELETE", "/users/alice/adaptors/scratch2", admin_user_token).status_code == 204


def test_crypt_key_from_the_environment_never_reaches_user_servers(make_platform):
    """With $SKERRY_CRYPT_KEY the key file is never made, and the user's server (which
    runs user code) does not inherit the key."""
    from cryptography.fernet import Fernet

    from skerry.adaptors.store import AccountStore
    from skerry.datadir import DataDir

    key = Fernet.generate_key().decode()
    p = make_platform(env={**os.environ, "SKERRY_CRYPT_KEY": key}).start()
    p.create_user("erin")
    token = p.user_token("erin")
    r = p.api("PUT", API + "/users/erin/credentials/web", token,
              json={"kind": "password", "username": "erin", "password": S3_SECRET})
    assert r.status_code == 200, r.text
    r = p.api("PUT", API + "/users/erin/adaptors/scratch", token, json={"type": "memory"})
    assert r.status_code == 200, r.text
    p.start_server("erin")
    data = DataDir(p.data_dir)
    assert not data.credentials_key_file.exists()
    os.environ["SKERRY_CRYPT_KEY"] = key  # this process decrypts with the same key
    try:
        assert AccountStore.for_data_dir(data).credentials("erin")["web"]["secret"]["password"] == S3_SECRET
    finally:
        del os.environ["SKERRY_CRYPT_KEY"]
    members = pids_of("SKERRY_DAV_PREFIX=/dav/erin/", environ=True)  # Jupyter, WebDAV and their parent
    assert p.group_of("erin") in members and len(members) >= 3
    for pid in members:
        environ = open(f"/proc/{pid}/environ", "rb").read()
        assert key.encode() not in environ and b"SKERRY_CRYPT_KEY" not in environ
