"""Fixtures that run the real platform (see helpers.py): nothing mocked."""

import itertools
import json

import pytest

from helpers import TEMPLATES, Platform, kill_leftovers, remove_accounts

pytest_plugins = ["ciskips", "platformlogs", "sharing", "slowfirst", "umaskguard"]  # see each module


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


def start_platform(tmp_path_factory, pools: dict | None, name: str = "platform") -> Platform:
    """A platform on a new data dir (its pools.json: ``pools``, if given), started."""
    data = tmp_path_factory.mktemp(name) / "data"
    if pools is not None:
        data.mkdir()
        (data / "pools.json").write_text(json.dumps(pools))
    return Platform(data).start()


def stop_platform(p: Platform) -> None:
    p.stop()
    kill_leftovers(p.data_dir)


@pytest.fixture(scope="session")
def shared_platforms():
    """{group: (pools, platform)} of this test process: the platforms of sharing.SHARED's
    groups, each started when a module of its group first asks for it."""
    platforms = {}
    yield platforms
    for _, p in platforms.values():
        stop_platform(p)


@pytest.fixture(scope="module")
def platform(tmp_path_factory, request, shared_platforms):
    """A running platform for the tests of one module (its pools.json: the module's
    ``POOLS``, if it has one); for a module of a group in ``sharing.SHARED``, the group's
    platform, which the group's other modules used before it and will use after it."""
    from sharing import group_of  # a plugin (pytest_plugins): imported by pytest first, for its asserts

    pools = getattr(request.module, "POOLS", None)
    group = group_of(request.path)
    if group:
        if group not in shared_platforms:
            shared_platforms[group] = pools, start_platform(tmp_path_factory, pools, f"shared-{group}")
        group_pools, p = shared_platforms[group]
        assert pools == group_pools, f"{request.path.name} has other POOLS than its group {group!r}"
        assert p.proc.poll() is None, f"a module before {request.path.name} stopped the shared platform"
        yield p
        return
    p = start_platform(tmp_path_factory, pools)
    yield p
    stop_platform(p)


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


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/postgres.py) for the session; ``create_database(name)``."""
    from postgres import Postgres, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL binaries are missing (apt-get install -y postgresql)")
    server = Postgres().start()
    yield server
    server.stop()


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path):
    """An empty catalog database: a SQLite file, or a new database on the session's
    PostgreSQL server (``parametrize("catalog_url", ["postgresql"], indirect=True)``: only that)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return request.getfixturevalue("postgres").create_database(f"catalog_{next(_databases)}")
