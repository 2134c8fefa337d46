"""The account store: credentials encrypted at rest, atomic 0600 writes, clear errors."""

import json
import multiprocessing
import os
import stat

import asyncssh
import pytest
from cryptography.fernet import Fernet

from skerry.adaptors.specs import load_spec
from skerry.adaptors.store import (AccountStore, Conflict, CryptError, NotFound, backend_entry, load_key,
                                   parse_credential)
from skerry.datadir import DataDir
from skerry.errors import ConfigError

SECRET = "s3cr3t-Pa55-do-not-leak-7f3a"
S3_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv("SKERRY_CRYPT_KEY", raising=False)
    return DataDir(tmp_path / "data").ensure()


@pytest.fixture
def store(data):
    return AccountStore.for_data_dir(data)


def files_under(path):
    for root, _, names in os.walk(path):
        for n in names:
            yield os.path.join(root, n)


def test_round_trip_of_every_kind(store):
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    store.put_credential("alice", "web", *parse_credential({"kind": "password", "username": "al", "password": SECRET}))
    store.put_credential("alice", "key", *parse_credential({"kind": "ssh-key", "private_key": private}))
    store.put_credential("alice", "bucket", *parse_credential({"kind": "s3", "key": "AKIA1", "secret": S3_SECRET}))

    again = AccountStore(store.accounts_dir, store.credentials_dir, store.key_file)  # a fresh reader
    assert again.backend_credentials("alice", ["web", "key", "bucket"]) == {
        "web": {"username": "al", "password": SECRET},
        "key": {"private_key": private},
        "bucket": {"key": "AKIA1", "secret": S3_SECRET},
    }
    listed = {c["name"]: c for c in again.list_credentials("alice")}
    assert listed["web"]["username"] == "al" and listed["web"]["kind"] == "password"
    assert listed["key"]["public_key"].startswith("ssh-ed25519 ")
    assert SECRET not in json.dumps(listed) and S3_SECRET not in json.dumps(listed)
    assert private.split("\n")[1] not in json.dumps(listed)


def test_no_secret_in_clear_anywhere_under_the_data_dir(data, store):
    store.put_credential("alice", "web", *parse_credential({"kind": "password", "password": SECRET}))
    store.put_credential("alice", "bucket", *parse_credential({"kind": "s3", "key": "AKIA1", "secret": S3_SECRET}))
    store.put_adaptor("alice", load_spec({"name": "b", "type": "s3", "bucket": "bkt", "credentials": "bucket"}))
    seen = list(files_under(data.path))
    assert any(p.endswith("alice.json") for p in seen)
    for path in seen:
        content = open(path, "rb").read()
        assert SECRET.encode() not in content and S3_SECRET.encode() not in content, path


def test_files_are_0600_and_the_key_is_made_once(data, store):
    store.put_credential("alice", "web", *parse_credential({"kind": "password", "password": SECRET}))
    store.put_adaptor("alice", load_spec({"name": "m", "type": "memory"}))
    key = data.credentials_key_file.read_bytes()
    for path in [data.credentials_key_file, store.credentials_file("alice"), store.adaptors_file("alice")]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(data.accounts).st_mode) == 0o700
    assert load_key(data.credentials_key_file) == key.strip()
    assert data.credentials_key_file.read_bytes() == key


def test_wrong_key_is_a_clear_error(store, monkeypatch):
    monkeypatch.setenv("SKERRY_CRYPT_KEY", Fernet.generate_key().decode())
    store.put_credential("alice", "web", *parse_credential({"kind": "password", "password": SECRET}))
    monkeypatch.setenv("SKERRY_CRYPT_KEY", Fernet.generate_key().decode())
    other = AccountStore(store.accounts_dir, store.credentials_dir, store.key_file)
    with pytest.raises(CryptError, match="encrypted with another key.*SKERRY_CRYPT_KEY"):
        other.credentials("alice")
    # nor is anything written with the wrong key
    before = store.credentials_file("alice").read_bytes()
    with pytest.raises(CryptError):
        other.put_credential("alice", "more", *parse_credential({"kind": "password", "password": "x"}))
    assert store.credentials_file("alice").read_bytes() == before


def test_damaged_file_and_bad_key_are_clear_errors(store, monkeypatch):
    store.put_credential("alice", "web", *parse_credential({"kind": "password", "password": SECRET}))
    path = store.credentials_file("alice")
    data = json.loads(path.read_text())
    data["token"] = data["token"][:-8] + "AAAAAAAA"
    path.write_text(json.dumps(data))
    with pytest.raises(CryptError, match="cannot be decrypted"):
        AccountStore(store.accounts_dir, store.credentials_dir, store.key_file).credentials("alice")
    monkeypatch.setenv("SKERRY_CRYPT_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="not a Fernet key"):
        AccountStore(store.accounts_dir, store.credentials_dir, store.key_file).credentials("alice")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(store, monkeypatch):
    store.put_credential("alice", "web", *parse_credential({"kind": "password", "password": SECRET}))
    store.put_adaptor("alice", load_spec({"name": "m", "type": "memory"}))
    before = {p: open(p, "rb").read() for p in files_under(store.credentials_dir)}
    adaptors_before = store.adaptors_file("alice").read_bytes()

    # a crash between writing the temp file and renaming it cannot be provoked from
    # outside: os.replace failing stands for it (the one fault injected here)
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.put_credential("alice", "more", *parse_credential({"kind": "password", "password": "x"}))
    with pytest.raises(OSError):
        store.put_adaptor("alice", load_spec({"name": "n", "type": "memory"}))
    monkeypatch.undo()
    assert {p: open(p, "rb").read() for p in files_under(store.credentials_dir)} == before
    assert store.adaptors_file("alice").read_bytes() == adaptors_before
    assert sorted(os.listdir(store.accounts_dir / "alice")) == [".lock", "adaptors.json"]
    assert [c["name"] for c in store.list_credentials("alice")] == ["web"]


def _put_many(args):
    dirs, prefix = args
    s = AccountStore(*dirs)
    for i in range(15):
        s.put_credential("alice", f"{prefix}{i}", "password", {}, {"password": "x"})


def test_concurrent_writers_lose_nothing(store):
    dirs = (store.accounts_dir, store.credentials_dir, store.key_file)
    store.credentials("alice")  # the key exists before the writers start
    load_key(store.key_file)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_put_many, [(dirs, "a"), (dirs, "b")])
    assert len(store.list_credentials("alice")) == 30


def test_adaptor_rules(store):
    store.put_credential("alice", "key", "ssh-key", {}, {"private_key": "x"})
    with pytest.raises(ConfigError, match="reserved"):
        store.put_adaptor("alice", load_spec({"name": "home", "type": "memory"}))
    with pytest.raises(ConfigError, match="local adaptors"):
        store.put_adaptor("alice", load_spec({"name": "etc", "type": "local", "path": "/etc"}))
    with pytest.raises(ConfigError, match="no credential 'nope'"):
        store.put_adaptor("alice", load_spec({"name": "b", "type": "s3", "bucket": "bkt", "credentials": "nope"}))
    with pytest.raises(ConfigError, match="s3 adaptors take s3"):
        store.put_adaptor("alice", load_spec({"name": "b", "type": "s3", "bucket": "bkt", "credentials": "key"}))
    assert store.adaptors("alice") == []
    stored = store.put_adaptor("alice", load_spec({"name": "hpc", "type": "sftp", "host": "h", "username": "u",
                                                   "credentials": "key"}))
    assert store.adaptors("alice") == [stored]
    with pytest.raises(Conflict, match="used by the adaptor"):
        store.delete_credential("alice", "key")
    store.delete_adaptor("alice", "hpc")
    store.delete_credential("alice", "key")
    with pytest.raises(NotFound):
        store.delete_credential("alice", "key")
    with pytest.raises(NotFound):
        store.delete_adaptor("alice", "hpc")


def test_jwt_keys_file_format(store):
    store.put_jwt_key("alice", "k1", "ES256", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    store.put_jwt_key("alice", "k0", "RS256", "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n")
    data = json.loads(store.jwt_keys_file("alice").read_text())
    assert data == {"keys": [
        {"kid": "k0", "alg": "RS256", "public_key": "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n"},
        {"kid": "k1", "alg": "ES256", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"},
    ]}
    # public keys, in alice's handover folder: readable by her account's group once it is shared
    assert store.jwt_keys_file("alice") == data_dir_of(store) / "run" / "users" / "alice" / "jwt-keys.json"
    assert stat.S_IMODE(os.stat(store.jwt_keys_file("alice")).st_mode) == 0o640
    with pytest.raises(ConfigError, match="not a key id"):
        store.put_jwt_key("alice", "../x", "RS256", "x")


def data_dir_of(store):
    return store.accounts_dir.parent


def test_jwt_keys_kept_under_accounts_before_move_to_the_handover_folder(store):
    old = store.accounts_dir / "bob" / "jwt-keys.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"keys": [{"kid": "k", "alg": "RS256", "public_key": "PEM"}]}))
    assert [k["kid"] for k in store.jwt_keys("bob")] == ["k"]
    assert not old.exists() and stat.S_IMODE(os.stat(store.jwt_keys_file("bob")).st_mode) == 0o640


def test_credential_bodies(store):
    with pytest.raises(ConfigError, match="needs password"):
        parse_credential({"kind": "password", "username": "u"})
    with pytest.raises(ConfigError, match="no field"):
        parse_credential({"kind": "s3", "key": "k", "secret": SECRET, "extra": 1})
    with pytest.raises(ConfigError, match="'kind' must be"):
        parse_credential({"kind": "token"})
    encrypted = asyncssh.generate_private_key("ssh-ed25519").export_private_key(passphrase="pw").decode()
    with pytest.raises(ConfigError, match="encrypted") as e:
        parse_credential({"kind": "ssh-key", "private_key": encrypted})
    with pytest.raises(ConfigError, match="not a private key") as e:
        parse_credential({"kind": "ssh-key", "private_key": SECRET})
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="not a user name"):
        store.credentials("../etc")
    assert backend_entry({"kind": "password", "public": {}, "secret": {"password": "p"}}) == {"password": "p"}
