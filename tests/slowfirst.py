"""The slowest test modules run first, so that parallel workers (pytest-xdist, one module
per worker at a time: ``--dist loadfile``) do not end the run waiting on one long module.

``SLOWEST`` is measured (JUnit times per module of a fresh-clone ``.ci/run``, every module
of 20 s or more, slowest first: 2026-12-04); a module missing from it keeps its place after
them. Order does not change what a test checks: each module starts what it needs.
"""

SLOWEST = [
    "test_many_users.py", "test_readme_up.py", "test_papermill.py", "test_staging.py", "test_clients.py",
    "test_platform_runs.py", "test_notebooks.py", "test_browser.py", "test_federation_abstract.py",
    "test_spawn_profiles.py", "test_userpools.py", "test_restart.py", "test_scheduler.py", "test_identity.py",
    "test_dav_federation.py", "test_jwt.py", "test_storage_page.py", "test_limits.py", "test_isolation.py",
    "test_kernels.py", "test_spawn_failure.py", "test_contents.py", "test_adaptors_api.py", "test_infrastructure.py",
    "test_security.py", "test_https.py", "test_secrets.py", "test_workload_api.py", "test_cli.py",
    "test_quotas_api.py", "test_dataapi.py",
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST)))  # stable: the rest keep their order
