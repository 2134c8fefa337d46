"""Under ``CI`` an unexpected skip fails the run (tests/ciskips.py), shown on a planted one."""

import os
import subprocess
import sys
from pathlib import Path

from ciskips import expected_skip

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
    env["PYTHONPATH"] = str(Path(__file__).parent)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "ciskips", "-p", "no:cacheprovider", "-q",
                           "-rA", "test_planted.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_planted_skip_fails_the_run_under_ci(tmp_path):
    done = run_planted(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed" in done.stdout, done.stdout
    assert "unexpected skip under CI: sometool is not installed" in done.stdout, done.stdout


def test_the_same_skip_is_a_skip_outside_ci(tmp_path):
    done = run_planted(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout, done.stdout


def test_only_listed_skips_with_their_reason_are_expected():
    busy = "tests/test_limits.py::test_two_processes_under_cpu_limit_1_get_one_core"
    assert expected_skip(busy, "the machine stayed busy (last: 1.2 of 2 cores used by others)")
    assert not expected_skip(busy, "litmus is not installed")  # the same test, another reason
    assert not expected_skip("tests/test_clients.py::test_rclone_copy_up_and_down", "rclone is not installed")
