"""Fixtures that run the real platform (see helpers.py): nothing mocked."""

import pytest

from helpers import Platform, kill_leftovers


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
def platform(tmp_path_factory):
    """A running platform shared by the tests of one module."""
    p = Platform(tmp_path_factory.mktemp("platform") / "data").start()
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
