"""Under ``CI`` an unexpected skip fails the run (tests/ciskips.py), shown on a planted one."""

import getpass
import os
import subprocess
import tempfile
from pathlib import Path

from ciskips import expected_skip
from helpers import open_for_accounts, run_planted_pytest

PLANTED = '''
import pytest

def test_needs_a_missing_tool():
    pytest.skip("sometool is not installed")

def test_runs():
    assert True
'''


def run_planted(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_planted.py").write_text(PLANTED)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return run_planted_pytest(tmp_path, "ciskips", env)


def test_a_planted_skip_fails_the_run_under_ci(tmp_path):
    done = run_planted(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed" in done.stdout, done.stdout
    assert "unexpected skip under CI: sometool is not installed" in done.stdout, done.stdout


def test_the_same_skip_is_a_skip_outside_ci(tmp_path):
    done = run_planted(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout, done.stdout


def test_a_planted_run_takes_none_of_this_runs_options_and_leaves_the_shared_temporary_folder_open(
        tmp_path, monkeypatch):
    # pytest choosing its own temporary folder (as its workers' parent does under -n) sets
    # /tmp/pytest-of-<user> to 0700: every platform's accounts would lose the way to their homes
    shared = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    open_for_accounts(tmp_path)
    assert shared.stat().st_mode & 0o001
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 2")  # as a developer's run of the suite might have it
    done = run_planted(tmp_path, ci=False)
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    assert shared.stat().st_mode & 0o001, f"{shared} was closed to the accounts"


def test_only_listed_skips_with_their_reason_are_expected():
    busy = "tests/test_limits.py::test_two_processes_under_cpu_limit_1_get_one_core"
    assert expected_skip(busy, "the machine stayed busy (last: 1.2 of 2 cores used by others)")
    assert not expected_skip(busy, "litmus is not installed")  # the same test, another reason
    assert not expected_skip("tests/test_clients.py::test_rclone_copy_up_and_down", "rclone is not installed")
