"""Fixtures that run the real platform (see helpers.py): nothing mocked."""

import json

import pytest

from helpers import TEMPLATES, Platform, kill_leftovers, remove_accounts

pytest_plugins = ["ciskips", "slowfirst", "umaskguard"]  # see each module


@pytest.fixture(scope="session", autouse=True)
def _remove_test_accounts():
    """The OS accounts the session's platforms made go with the session."""
    yield
    for template in sorted(TEMPLATES):
        remove_accounts(template)


@pytest.fixture
def make_platform(tmp_path):
    started = []

    def make(**kwargs):
        p = Platform(kwargs.pop("data_dir", tmp_path / "data"), **kwargs)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()
    for p in started:
        kill_leftovers(p.data_dir)


@pytest.fixture(scope="module")
def platform(tmp_path_factory, request):
    """A running platform shared by the tests of one module (its pools.json: the module's
    ``POOLS``, if it has one)."""
    data = tmp_path_factory.mktemp("platform") / "data"
    pools = getattr(request.module, "POOLS", None)
    if pools is not None:
        data.mkdir()
        (data / "pools.json").write_text(json.dumps(pools))
    p = Platform(data).start()
    yield p
    p.stop()
    kill_leftovers(p.data_dir)


@pytest.fixture(scope="module")
def alice(platform):
    """alice, with a running server and a token."""
    platform.create_user("alice")
    platform.start_server("alice")
    return platform.user_token("alice")


@pytest.fixture(scope="module")
def bob(platform):
    """bob, with a running server and a token."""
    platform.create_user("bob")
    platform.start_server("bob")
    return platform.user_token("bob")


@pytest.fixture(scope="module")
def users(platform):
    """Tokens of carol (in the hub group physics), dora and erin (in no group)."""
    r = platform.api("POST", "/hub/api/groups/physics")
    assert r.status_code in (201, 409), r.text
    tokens = {name: (platform.create_user(name), platform.user_token(name))[1] for name in ("carol", "dora", "erin")}
    r = platform.api("POST", "/hub/api/groups/physics/users", json={"users": ["carol"]})
    assert r.status_code == 200, r.text
    return tokens


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH sshd on 127.0.0.1 (SFTP), for the whole session."""
    from servers import Sshd

    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3server():
    """A real S3-API server (moto) on 127.0.0.1, for the whole session."""
    import os

    from servers import S3Server

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # botocore insists on some
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = S3Server().start()
    yield server
    server.stop()
