"""The slowest units of work run first, so that parallel workers (pytest-xdist, one unit per
worker at a time: a module, or a group of modules sharing a platform, ``sharing.py``) do
not end the run waiting on one long unit.

``SLOWEST`` is measured (JUnit times of a fresh-clone ``.ci/run``, summed per unit, every
unit of 20 s or more, slowest first: 2026-12-05); a unit missing from it keeps its place
after them. Order does not change what a test checks: each module starts what it needs.
"""

from sharing import group_of

SLOWEST = [
    "plain", "one-worker", "test_many_users.py", "test_readme_up.py", "no-dask", "test_staging.py",
    "test_platform_runs.py", "test_federation_abstract.py", "test_scheduler.py", "test_spawn_profiles.py",
    "test_identity.py", "test_limits.py", "test_dav_federation.py", "test_restart.py", "test_spawn_failure.py",
    "test_adaptors_api.py", "test_userpools.py", "test_security.py", "test_infrastructure.py",
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST)}
    # stable: the rest keep their order, and so do a group's modules among themselves
    items.sort(key=lambda item: rank.get(group_of(item.path) or item.path.name, len(SLOWEST)))
