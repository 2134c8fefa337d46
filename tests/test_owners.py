"""Each job sees its owner's adaptors: the configuration written per owner, and the gate
that keeps two owners' jobs from sharing one worker process's environment."""

import os
import stat
import threading
import time

import fsspec
import pytest

from skerry.adaptors.config import read_config
from skerry.config import ADAPTORS
from skerry.adaptors.specs import load_spec
from skerry.adaptors.store import AccountStore, parse_credential
from skerry.datadir import DataDir
from skerry.errors import ConfigError
from skerry.workload.owners import OwnerConfigs, adaptors_of


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv(ADAPTORS.name, raising=False)
    d = DataDir(tmp_path / "data").ensure()
    for user in ("alice", "bob"):
        d.user_home(user).mkdir(parents=True)
        (d.user_home(user) / "who.txt").write_text(user)
    yield d
    os.environ.pop(ADAPTORS.name, None)
    from skerry.adaptors.federation import SkerryFileSystem
    SkerryFileSystem.clear_instance_cache()


def test_the_owners_configuration_is_private_and_names_their_home(data):
    path = OwnerConfigs(data.path).path("alice")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = read_config(path)
    assert config["adaptors"][0] == {"name": "home", "type": "local", "path": str(data.user_home("alice"))}


def test_stored_adaptors_and_their_credentials_go_in(data):
    store = AccountStore.for_data_dir(data)
    store.put_credential("alice", "bucket", *parse_credential({"kind": "s3", "key": "AKIA1", "secret": "s3-secret"}))
    store.put_adaptor("alice", load_spec({"name": "b", "type": "s3", "bucket": "bkt", "credentials": "bucket"}))
    config = read_config(OwnerConfigs(data.path).path("alice"))
    assert [a["name"] for a in config["adaptors"]] == ["home", "b"]
    assert "s3-secret" in str(config["credentials"]["bucket"])  # decrypted for the job, in the 0600 file only
    with pytest.raises(ConfigError):
        OwnerConfigs(data.path).path("no/such")  # not a user name: refused, nothing written


def test_the_configuration_is_written_again_only_when_it_is_not_what_it_should_be(data):
    """Every new task asks for it: the same text, owner and mode are left as they are; an
    adaptor added, a file changed or opened to others, or a link in its place is replaced."""
    owners = OwnerConfigs(data.path)
    path = owners.path("alice")
    first = os.stat(path)
    assert owners.path("alice") == path and os.stat(path).st_ino == first.st_ino  # unchanged: not rewritten
    store = AccountStore.for_data_dir(data)
    store.put_adaptor("alice", load_spec({"name": "scratch", "type": "memory"}))
    owners.path("alice")
    assert [a["name"] for a in read_config(path)["adaptors"]] == ["home", "scratch"]  # the change reaches the job
    with open(path, "a") as f:
        f.write(" ")
    os.chmod(path, 0o644)
    owners.path("alice")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and read_config(path)["adaptors"][1]["name"] == "scratch"
    good = open(path, "rb").read()
    os.unlink(path)
    (data.path / "elsewhere.json").write_bytes(good)
    os.symlink(data.path / "elsewhere.json", path)  # the same text behind a link: not taken for the file
    owners.path("alice")
    assert not os.path.islink(path) and open(path, "rb").read() == good


def test_a_job_reads_its_owners_home(data):
    owners = OwnerConfigs(data.path)
    for user in ("alice", "bob", "alice"):
        with adaptors_of(owners.path(user)):
            with fsspec.open("skerry://home/who.txt", "r") as f:
                assert f.read() == user


def test_two_owners_jobs_never_overlap_in_one_process(data):
    owners = OwnerConfigs(data.path)
    paths = {u: owners.path(u) for u in ("alice", "bob")}
    inside = {"alice": 0, "bob": 0}
    overlaps, same_owner_together, lock = [], [], threading.Lock()

    def job(user):
        with adaptors_of(paths[user]):
            with lock:
                inside[user] += 1
                other = "bob" if user == "alice" else "alice"
                if inside[other]:
                    overlaps.append(user)
                if inside[user] > 1:
                    same_owner_together.append(user)
                assert os.environ[ADAPTORS.name] == paths[user]
            time.sleep(0.02)
            with lock:
                inside[user] -= 1

    threads = [threading.Thread(target=job, args=("alice" if i % 3 else "bob",)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not overlaps
    assert same_owner_together  # one owner's jobs still run side by side
