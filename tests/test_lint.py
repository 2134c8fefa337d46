"""ruff, configured in pyproject.toml, finds nothing in the tree."""

import subprocess
import sys

from helpers import REPO

FOLDERS = ["skerry", "hub", "adaptors", "extensions", "kernels", "tests", "bench"]


def test_ruff_is_clean():
    # ruff comes with the test extra
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *FOLDERS], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
