"""A test that fails (or errs in its set-up) shows what the hub logged meanwhile: for each
platform of this test process that is running (``helpers.Platform.running``), the lines
its ``run/hub.log`` gained since the test's set-up began (the last ``TAIL`` characters),
as a section of the failure's report.

Why: a platform a group of modules shares (``sharing.py``) logs into pytest's temporary
folders, which later runs rotate away; a CI run where a shared hub answered 500 to every
server start left no log to read.
"""

import pytest

from helpers import Platform

TAIL = 8000  # characters of each log shown: the hub's traceback and what led to it
_STARTS = pytest.StashKey[dict]()  # a test's: id(platform) -> its log's size when the test's set-up began


def _log(platform: Platform):
    return platform.data_dir / "run" / "hub.log"


def _size(platform: Platform) -> int:
    try:
        return _log(platform).stat().st_size
    except OSError:
        return 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_STARTS] = {id(p): _size(p) for p in Platform.running}  # platforms started later: from 0
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    starts = item.stash.get(_STARTS, {})
    for platform in list(Platform.running):
        try:
            with open(_log(platform), "rb") as log:
                log.seek(starts.get(id(platform), 0))
                gained = log.read()
        except OSError:
            continue
        if gained:
            text = gained[-TAIL:].decode(errors="replace")
            report.sections.append((f"hub log of {platform.data_dir} during this test (last {TAIL} characters)",
                                    text))
