"""The failure report of a test shows what a running platform's hub logged during it
(``platformlogs``), and a passing test's report shows nothing of it."""

pytest_plugins = ["pytester"]

INNER = '''
import pytest
from helpers import Platform

@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A platform as the plugin sees one: running, with a hub log (no process: the log is the point)."""
    p = Platform(tmp_path_factory.mktemp("p") / "data")
    (p.data_dir / "run").mkdir(parents=True)
    (p.data_dir / "run" / "hub.log").write_text("written before the tests\\n")
    Platform.running.append(p)
    yield p
    Platform.running.remove(p)

def _log(p, line):
    with open(p.data_dir / "run" / "hub.log", "a") as f:
        f.write(line + "\\n")

def test_passes(hub):
    _log(hub, "200 GET /hub/api/users/alice: fine")

def test_fails(hub):
    _log(hub, "500 POST /hub/api/users/alice/server: Traceback (most recent call last)")
    assert False, "the server did not start"
'''


def test_a_failed_test_shows_the_hub_log_lines_written_during_it(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "platformlogs", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "hub log of" in out and "during this test" in out
    assert "500 POST /hub/api/users/alice/server: Traceback" in out
    # only what the failing test's time added: not the log from before it, nor what the passing test logged
    assert "written before the tests" not in out and "200 GET /hub/api/users/alice: fine" not in out
