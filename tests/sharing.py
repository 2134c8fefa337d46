"""Test modules that share one platform: ``SHARED`` names each group; its modules run one
after another on one test worker (pytest-xdist: one group is one unit of work, as one
module is under ``--dist loadfile``), on one platform started for the first of them and
stopped when the worker ends (conftest's ``platform`` fixture), instead of one each.

A platform start and stop, with alice's and bob's servers, costs 6-8 s of CPU; the modules
below spent most of their time on them. A module joins a group only if it passes whatever
the others left (it names what it makes uniquely and asserts only on that) and leaves the
hub's settings (profiles, quotas, groups) and every shared server as it found them; every
module of a group has the same ``POOLS``.
"""

from xdist.scheduler import LoadFileScheduling

SHARED = {
    # default pools (a cluster per user on demand)
    "plain": ["test_clients.py", "test_contents.py", "test_dataapi.py", "test_davfront.py", "test_isolation.py",
              "test_jwt.py", "test_login.py", "test_secrets.py", "test_service.py", "test_sftp_keys.py",
              "test_webdav.py"],
    # no Dask: jobs are planned and stand still
    "no-dask": ["test_cli.py", "test_papermill.py", "test_workload_api.py"],
    # one worker of two threads per user: notebooks and widgets run pipelines
    "one-worker": ["test_browser.py", "test_kernels.py", "test_notebooks.py", "test_widgets.py"],
}
GROUP_OF = {module: group for group, modules in SHARED.items() for module in modules}


def group_of(path) -> str | None:
    """The group of the test module at ``path`` (a path or a node id), or None."""
    return GROUP_OF.get(str(path).split("::", 1)[0].rsplit("/", 1)[-1])


class SharedPlatformScheduling(LoadFileScheduling):
    """``--dist loadfile``, with each group's modules as one unit of work."""

    def _split_scope(self, nodeid: str) -> str:
        group = group_of(nodeid)
        return f"shared platform {group}" if group else super()._split_scope(nodeid)


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") == "loadfile":
        return SharedPlatformScheduling(config, log)
    return None
