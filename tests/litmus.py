"""litmus, the WebDAV compliance suite, run against a URL: every test of every suite must pass.

Both WebDAV test modules (the in-process endpoint and the running platform) use this, so the
suites run and the number of tests each must pass are written once.
"""

import os
import re
import subprocess

# the suites run and how many tests each has (litmus 0.13): all must run and pass
COUNTS = {"basic": 16, "copymove": 13, "props": 30, "locks": 41, "http": 4}


def run_litmus(url: str, cwd, *credentials: str) -> dict[str, tuple[int, int]]:
    """``{suite: (tests run, tests passed)}`` of litmus against ``url`` (``cwd`` gets its
    debug.log); ``credentials``: user and password, litmus's own arguments."""
    done = subprocess.run(["litmus", url, *credentials], env=dict(os.environ, TESTS=" ".join(COUNTS)),
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    summary = re.findall(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed", done.stdout)
    return {suite: (int(run), int(passed)) for suite, run, passed, _ in summary}, done.stdout


def all_passed() -> dict[str, tuple[int, int]]:
    """What :func:`run_litmus` answers when every test of every suite passed."""
    return {suite: (n, n) for suite, n in COUNTS.items()}
