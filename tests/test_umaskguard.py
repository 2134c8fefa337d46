"""A test that leaves the process umask changed fails (tests/umaskguard.py), shown on a planted one;
and ``skerry up`` refusing in-process leaves the umask as it found it."""

import os

from helpers import run_planted_pytest
from skerry.cli import main

PLANTED = '''
import os

def test_leaves_the_umask_changed():
    os.umask(0o077)

def test_after_it():
    mask = os.umask(0o022); os.umask(mask)
    assert mask == 0o022
'''


def test_a_planted_umask_change_fails_that_test_only(tmp_path):
    (tmp_path / "test_planted.py").write_text(PLANTED)
    done = run_planted_pytest(tmp_path, "umaskguard", umask=0o022)
    assert done.returncode == 1, done.stdout
    assert "2 passed, 1 error" in done.stdout, done.stdout
    assert "ERROR at teardown of test_leaves_the_umask_changed" in done.stdout, done.stdout
    assert "this test left the process umask at 077 (it was 022)" in done.stdout, done.stdout


def test_skerry_up_refusing_leaves_the_umask_as_it_was(tmp_path):
    mask = os.umask(0o022)
    try:
        assert main(["up", "--data-dir", str(tmp_path / "d"), "--ip", "203.0.113.7"]) == 2
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(mask)
