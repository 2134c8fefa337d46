"""A test that leaves the test process's umask changed fails (an error at its teardown).

Tests that write files for users' accounts rely on the umask the run started with; one
test changing it (``skerry up`` refusing in-process used to leave 077) made later tests
of the same worker fail far from the cause.
"""

import os

import pytest


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture(autouse=True)
def _umask_kept():
    before = _umask()
    yield
    after = _umask()
    if after != before:
        os.umask(before)  # the tests after it start as the run did
        pytest.fail(f"this test left the process umask at {after:03o} (it was {before:03o})", pytrace=False)
