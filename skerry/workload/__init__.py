"""skerry.workload: the catalog, workflows and the partitioned job scheduler (issue 4).

- ``states``: the pure, table-driven state machine of tasks and jobs (no I/O);
- ``catalog``/``models``: the persistent catalog (SQLAlchemy 2, Alembic migrations;
  SQLite in WAL mode by default, PostgreSQL by URL);
- ``modules``/``workflows``/``executors``: computation modules with pins, workflows of
  steps over them, and how a job runs (callable, command, notebook).

The Dask runner, the scheduler and the REST/CLI interfaces build on these.
"""
