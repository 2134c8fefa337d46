"""JWT bearer authentication on /dav/<name>/ (issue 3, the LOBCDER "webdav-jwt" rules).

Unit level: a real WebDAV server in this process (cheroot + make_dav_app over a folder)
behind the real ``HubTokenAuthenticator``, with keys in a key file of the documented
format. Platform level: the real ``skerry up``, keys registered through the hub service
(``PUT /services/skerry/api/v1/users/<name>/jwt-keys/<kid>``), which writes the file
``$SKERRY_JWT_KEYS`` names for the user's running micro-infrastructure.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import time

import httpx
import jwt
import pytest
from cheroot import wsgi
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import free_port
from skerry.adaptors.webdav import make_dav_app
from skerry.hub.userserver.tokenauth import HubTokenAuthenticator, HubTokens
from skerry.hub.userserver.jwtauth import KeyFile, JwtVerifier, looks_like_jwt

PROPFIND_0 = {"Depth": "0"}


class SigningKey:
    """A key pair of one algorithm, as a service that registered its public key holds it."""

    def __init__(self, alg: str, kid: str):
        self.alg, self.kid = alg, kid
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def entry(self) -> dict:
        return {"kid": self.kid, "alg": self.alg, "public_key": self.public_pem}

    def token(self, sub="alice", aud="skerry", lifetime=300, kid=True, drop=(), **claims) -> str:
        now = int(time.time())
        payload = {"sub": sub, "aud": aud, "exp": now + lifetime, "iat": now, **claims}
        for name in drop:
            payload.pop(name)
        headers = {"kid": self.kid} if kid else {}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict, header: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hs256_with_public_key(key: SigningKey, sub="alice") -> str:
    """The algorithm-confusion attack: HS256 with the (public!) PEM as the HMAC secret.

    Built by hand because PyJWT itself refuses to use a PEM key as an HMAC secret.
    """
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64(json.dumps({"sub": sub, "aud": "skerry", "exp": int(time.time()) + 300}).encode())
    signature = hmac.new(key.public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def tampered(token: str, **changes) -> str:
    """The same signature over a payload changed after signing."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def write_keys(path, *keys: SigningKey) -> None:
    """Write the key file as the registration API does: atomically, documented format."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": [k.entry() for k in keys]}, f)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def rsa_key():
    return SigningKey("RS256", "rsa-1")


@pytest.fixture(scope="module")
def ec_key():
    return SigningKey("ES256", "ec-1")


@pytest.fixture(scope="module")
def other_key():
    """A key nobody registered."""
    return SigningKey("RS256", "stranger")


def refusal_cases(rsa_key, ec_key, other_key):
    """(case, token, expected sentence fragment): every one must get 401."""
    now = int(time.time())
    return [
        ("expired", rsa_key.token(lifetime=-120), "expired"),
        ("wrong-aud", rsa_key.token(aud="someone-else"), "audience"),
        ("missing-exp", rsa_key.token(drop=("exp",)), "'exp'"),
        ("missing-aud", rsa_key.token(drop=("aud",)), "'aud'"),
        ("missing-sub", ec_key.token(drop=("sub",)), "'sub'"),
        ("alg-none", unsigned({"sub": "alice", "aud": "skerry", "exp": now + 300}, {"alg": "none", "typ": "JWT"}),
         "only RS256 and ES256"),
        ("hs256-public-key-as-secret", hs256_with_public_key(rsa_key), "only RS256 and ES256"),
        ("unknown-kid", other_key.token(), "not registered"),
        ("unregistered-key-no-kid", other_key.token(kid=False), "matches no key"),
        ("tampered-payload", tampered(ec_key.token(), sub="alice", exp=now + 10**6), "matches no key"),
        ("not-yet-valid", rsa_key.token(nbf=now + 600), "not valid yet"),
        ("issued-in-the-future", rsa_key.token(iat=now + 600), "not valid yet"),
        ("signed-payload-not-json", jwt.PyJWS().encode(b"not json", rsa_key.private, algorithm="RS256",
                                                        headers={"kid": rsa_key.kid}), "not a well-formed JWT"),
        ("kid-not-a-string", unsigned({"sub": "alice"}, {"alg": "RS256", "kid": 7}) + "c2ln", "not a well-formed JWT"),
        ("kid-of-another-alg", jwt.encode({"sub": "alice", "aud": "skerry", "exp": now + 300}, ec_key.private,
                                          algorithm="ES256", headers={"kid": rsa_key.kid}), "does not match"),
    ]


CASE_IDS = ["expired", "wrong-aud", "missing-exp", "missing-aud", "missing-sub", "alg-none",
            "hs256-public-key-as-secret", "unknown-kid", "unregistered-key-no-kid", "tampered-payload",
            "not-yet-valid", "issued-in-the-future", "signed-payload-not-json", "kid-not-a-string",
            "kid-of-another-alg"]


# ---------------------------------------------------------------- unit level


class DavServer:
    """alice's WebDAV endpoint over a folder, behind the real authenticator, in this process."""

    def __init__(self, folder, config):
        mount = "/dav/alice"
        app = make_dav_app(str(folder), mount, HubTokenAuthenticator, {"skerry_auth": config})
        self.server = wsgi.Server(("127.0.0.1", 0), wsgi.PathInfoDispatcher({mount: app}), numthreads=4)
        self.server.prepare()
        self.url = f"http://127.0.0.1:{self.server.bind_addr[1]}{mount}/"
        threading.Thread(target=self.server.serve, daemon=True).start()

    def stop(self):
        self.server.stop()


@pytest.fixture
def keyfile(tmp_path, rsa_key, ec_key):
    path = tmp_path / "accounts" / "alice" / "jwt-keys.json"
    write_keys(path, rsa_key, ec_key)
    return path


@pytest.fixture
def dav(tmp_path, keyfile):
    home = tmp_path / "home"
    home.mkdir()
    # a hub that does not answer: a token that is no JWT must end up there (503), never in jwtauth
    hub = HubTokens(f"http://127.0.0.1:{free_port()}/hub/api")
    server = DavServer(home, {"owner": "alice", "hub": hub,
                              "jwt": JwtVerifier("alice", KeyFile(str(keyfile)), "skerry")})
    server.home = home
    yield server
    server.stop()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def hrefs(body: bytes) -> set[str]:
    return set(re.findall(r"<(?:\w+:)?href>([^<]*)</(?:\w+:)?href>", body.decode()))


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("how", ["bearer", "basic-password"])
def test_valid_jwt_reads_and_writes(dav, rsa_key, ec_key, alg, how):
    key = rsa_key if alg == "RS256" else ec_key
    token = key.token()
    kwargs = {"headers": bearer(token)} if how == "bearer" else {"auth": ("alice", token)}
    with httpx.Client(base_url=dav.url, timeout=30, **kwargs) as c:
        assert c.put(f"{alg}.txt", content=alg.encode()).status_code == 201
        assert (dav.home / f"{alg}.txt").read_bytes() == alg.encode()
        assert c.get(f"{alg}.txt").content == alg.encode()
        r = c.request("PROPFIND", "", headers={"Depth": "1"})
        assert r.status_code == 207
        assert f"/dav/alice/{alg}.txt" in hrefs(r.content)


def test_without_kid_the_owners_keys_of_that_alg_are_tried(dav, keyfile, rsa_key, ec_key, other_key):
    write_keys(keyfile, rsa_key, other_key, ec_key)  # two RS256 keys: the second one signed
    for key in (rsa_key, other_key, ec_key):
        r = httpx.request("PROPFIND", dav.url, headers={**bearer(key.token(kid=False)), **PROPFIND_0})
        assert r.status_code == 207


def test_audience_list_and_leeway(dav, rsa_key):
    token = rsa_key.token(aud=["other-service", "skerry"], lifetime=-10)  # expired 10 s ago: inside the leeway
    assert httpx.request("PROPFIND", dav.url, headers={**bearer(token), **PROPFIND_0}).status_code == 207


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize("how", ["bearer", "basic-password"])
def test_bad_jwts_get_401_with_the_reason(dav, rsa_key, ec_key, other_key, case, how):
    _, token, reason = next(c for c in refusal_cases(rsa_key, ec_key, other_key) if c[0] == case)
    kwargs = {"headers": bearer(token)} if how == "bearer" else {"auth": ("alice", token)}
    r = httpx.put(dav.url + "refused.txt", content=b"nope", timeout=30, **kwargs)
    assert r.status_code == 401, (r.status_code, r.text)
    assert reason in r.text
    assert token not in r.text and token.split(".")[1] not in r.text
    assert 'Bearer realm="skerry"' in r.headers["WWW-Authenticate"]
    assert not (dav.home / "refused.txt").exists()


def test_jwt_of_another_user_is_forbidden(dav, rsa_key):
    r = httpx.put(dav.url + "x.txt", content=b"x", headers=bearer(rsa_key.token(sub="bob")))
    assert r.status_code == 403
    assert "belongs to alice" in r.text
    # as the Basic password, the user name must be the owner, whatever the token says
    r = httpx.put(dav.url + "x.txt", content=b"x", auth=("bob", rsa_key.token()))
    assert r.status_code == 403
    assert not (dav.home / "x.txt").exists()


def test_keys_registered_and_deleted_while_running(dav, keyfile, rsa_key, ec_key, other_key):
    def status(token):
        return httpx.request("PROPFIND", dav.url, headers={**bearer(token), **PROPFIND_0}).status_code

    assert status(other_key.token()) == 401
    write_keys(keyfile, rsa_key, ec_key, other_key)  # registered: works at once
    assert status(other_key.token()) == 207
    write_keys(keyfile, ec_key, other_key)  # rsa-1 deleted: refused at once, even a token made before
    token = rsa_key.token()
    assert status(token) == 401
    assert status(ec_key.token()) == 207
    keyfile.unlink()  # no file: no keys at all
    assert status(ec_key.token()) == 401


def test_a_broken_key_file_admits_nobody_and_bad_entries_are_skipped(dav, keyfile, rsa_key, ec_key):
    keyfile.write_text("{not json")
    assert httpx.get(dav.url, headers=bearer(rsa_key.token())).status_code == 401
    entries = [{"kid": "rsa-1", "alg": "ES256", "public_key": rsa_key.public_pem},  # alg does not fit the key
               {"kid": "hs", "alg": "HS256", "public_key": "secret"},
               {"kid": "broken", "alg": "RS256", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n"},
               ec_key.entry()]
    keyfile.write_text(json.dumps({"keys": entries}))
    assert httpx.get(dav.url, headers=bearer(rsa_key.token())).status_code == 401
    assert httpx.get(dav.url, headers=bearer(ec_key.token())).status_code == 200


def test_a_token_that_is_no_jwt_goes_to_the_hub_check(dav):
    # the hub of this fixture does not answer: 503 shows the hub, not jwtauth, was asked
    for value in ["Bearer 0123456789abcdef0123456789abcdef", "token a.b.c"]:
        r = httpx.get(dav.url, headers={"Authorization": value})
        assert r.status_code == 503, value
    assert not looks_like_jwt("a.b.c") and not looks_like_jwt("0123abcd")


def test_settings_from_the_environment(tmp_path, monkeypatch, rsa_key):
    path = tmp_path / "keys.json"
    write_keys(path, rsa_key)
    monkeypatch.setenv("SKERRY_JWT_KEYS", str(path))
    monkeypatch.setenv("SKERRY_JWT_AUDIENCE", "lobcder")
    home = tmp_path / "home"
    home.mkdir()
    server = DavServer(home, {"owner": "alice", "hub": HubTokens(f"http://127.0.0.1:{free_port()}/hub/api")})
    try:
        assert httpx.get(server.url, headers=bearer(rsa_key.token(aud="lobcder"))).status_code == 200
        r = httpx.get(server.url, headers=bearer(rsa_key.token()))
        assert r.status_code == 401 and "'lobcder'" in r.text
    finally:
        server.stop()


# ---------------------------------------------------------------- platform level


JWT_KEYS = "/services/skerry/api/v1/users/{name}/jwt-keys"


def register(platform, name, *keys: SigningKey, token=None) -> None:
    """Make ``keys`` exactly the keys registered for ``name``, through the registration API
    (as ``token``'s owner; the admin by default)."""
    url = JWT_KEYS.format(name=name)
    r = platform.api("GET", url, token=token)
    assert r.status_code == 200, r.text
    wanted = {k.kid for k in keys}
    for entry in r.json()["keys"]:
        if entry["kid"] not in wanted:
            assert platform.api("DELETE", f"{url}/{entry['kid']}", token=token).status_code == 204
    for key in keys:
        r = platform.api("PUT", f"{url}/{key.kid}", token=token, json={"public_key": key.public_pem})
        assert r.status_code == 200, r.text
        assert r.json()["alg"] == key.alg


@pytest.mark.platform
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("how", ["bearer", "basic-password"])
def test_platform_valid_jwt_reads_and_writes(platform, alice, rsa_key, ec_key, alg, how):
    register(platform, "alice", rsa_key, ec_key)
    token = (rsa_key if alg == "RS256" else ec_key).token()
    kwargs = {"headers": bearer(token)} if how == "bearer" else {"auth": ("alice", token)}
    name = f"jwt-{alg}-{how}.txt"
    with httpx.Client(base_url=f"{platform.url}/dav/alice/home/", timeout=60, **kwargs) as c:
        assert c.put(name, content=b"by a service").status_code == 201
        assert c.get(name).content == b"by a service"
        r = c.request("PROPFIND", "", headers={"Depth": "1"})
        assert r.status_code == 207
        assert f"/dav/alice/home/{name}" in hrefs(r.content)
    assert (platform.data_dir / "users" / "alice" / name).read_bytes() == b"by a service"


@pytest.mark.platform
@pytest.mark.parametrize("case", CASE_IDS)
def test_platform_bad_jwts_get_401(platform, alice, rsa_key, ec_key, other_key, case):
    register(platform, "alice", rsa_key, ec_key)
    _, token, reason = next(c for c in refusal_cases(rsa_key, ec_key, other_key) if c[0] == case)
    for kwargs in ({"headers": bearer(token)}, {"auth": ("alice", token)}):
        r = httpx.put(f"{platform.url}/dav/alice/home/refused.txt", content=b"nope", timeout=60, **kwargs)
        assert r.status_code == 401, (case, r.status_code, r.text)
        assert reason in r.text and token not in r.text
    assert not (platform.data_dir / "users" / "alice" / "refused.txt").exists()


@pytest.mark.platform
def test_platform_alices_jwt_is_refused_on_bobs_endpoint(platform, alice, bob, rsa_key):
    register(platform, "alice", rsa_key, token=alice)
    register(platform, "bob", token=bob)
    token = rsa_key.token(sub="alice")
    url = f"{platform.url}/dav/bob/home/from-alice.txt"
    # bob's server does not know alice's key
    for kwargs in ({"headers": bearer(token)}, {"auth": ("bob", token)}):
        r = httpx.put(url, content=b"x", timeout=60, **kwargs)
        assert r.status_code == 401, r.text
    # the same public key registered for bob too: the signature checks, sub != bob
    register(platform, "bob", rsa_key, token=bob)
    for kwargs in ({"headers": bearer(token)}, {"auth": ("bob", token)}):
        r = httpx.put(url, content=b"x", timeout=60, **kwargs)
        assert r.status_code == 403, r.text
        assert "belongs to bob" in r.text
    r = httpx.put(url, content=b"x", auth=("alice", token), timeout=60)  # alice's name on bob's endpoint
    assert r.status_code == 403
    assert not (platform.data_dir / "users" / "bob" / "from-alice.txt").exists()
    # and bob's own token for bob, with that key, does work there
    r = httpx.request("PROPFIND", f"{platform.url}/dav/bob/",
                      headers={**bearer(rsa_key.token(sub="bob")), **PROPFIND_0})
    assert r.status_code == 207
    register(platform, "bob", token=bob)


@pytest.mark.platform
def test_platform_keys_registered_and_deleted_while_running(platform, alice, rsa_key, ec_key, other_key):
    register(platform, "alice", rsa_key, ec_key, token=alice)
    url = f"{platform.url}/dav/alice/"
    assert httpx.request("PROPFIND", url, headers={**bearer(other_key.token()), **PROPFIND_0}).status_code == 401
    register(platform, "alice", rsa_key, ec_key, other_key, token=alice)  # works at once, no restart
    assert httpx.request("PROPFIND", url, headers={**bearer(other_key.token()), **PROPFIND_0}).status_code == 207
    token = ec_key.token()
    assert httpx.request("PROPFIND", url, headers={**bearer(token), **PROPFIND_0}).status_code == 207
    r = platform.api("DELETE", JWT_KEYS.format(name="alice") + f"/{ec_key.kid}", token=alice)
    assert r.status_code == 204
    r = httpx.request("PROPFIND", url, headers={**bearer(token), **PROPFIND_0})
    assert r.status_code == 401 and "not registered" in r.text


@pytest.mark.platform
def test_platform_hub_tokens_still_work_as_bearer_and_basic(platform, alice):
    url = f"{platform.url}/dav/alice/"
    assert httpx.request("PROPFIND", url, headers={**bearer(alice), **PROPFIND_0}).status_code == 207
    assert httpx.request("PROPFIND", url, auth=("alice", alice), headers=PROPFIND_0).status_code == 207
