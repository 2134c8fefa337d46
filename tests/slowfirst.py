"""The slowest test modules run first, so that parallel workers (pytest-xdist, one module
per worker at a time: ``--dist loadfile``) do not end the run waiting on one long module.

``SLOWEST`` is measured (JUnit times of a serial run, slowest first); a module missing
from it keeps its place after them. Order does not change what a test checks: each
module starts what it needs.
"""

SLOWEST = [
    "test_many_users.py", "test_federation_abstract.py", "test_clients.py", "test_staging.py",
    "test_papermill.py", "test_spawn_profiles.py", "test_platform_runs.py", "test_restart.py",
    "test_readme_up.py", "test_adaptors_api.py", "test_identity.py", "test_notebooks.py",
    "test_dav_federation.py", "test_jwt.py", "test_scheduler.py", "test_isolation.py",
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST)))  # stable: the rest keep their order
