"""skerry.workload: the catalog, workflows and the partitioned job scheduler.

``skerry up`` runs the scheduler as the hub service ``skerry-scheduler`` (``manager``).

- ``states``: the pure, table-driven state machine of jobs, tasks and datasets (no I/O),
  the retry policy as data, the rank formula and the fair task selector;
- ``models``/``catalog``/``migrations``: the persistent catalog (SQLAlchemy 2, Alembic;
  SQLite in WAL mode by default, PostgreSQL by URL), bulk registration, the
  consistency check, and outputs registered exactly once with the job's success;
- ``modules``/``builtins``/``executors``: computation modules with pins (callable,
  command or notebook), the built-ins ``noop``, ``sleep``, ``md5``, ``fail``, and how
  one job runs;
- ``workflows``: workflows of steps over modules, validated (pins, cycles), with
  dataset-name masks and streaming or barrier steps;
- ``runs``: a run of a workflow over a dataset (one task per step), the runs that
  registering or closing a dataset starts through workflow masks, and the planner
  that makes jobs as input lands;
- ``scheduler``/``scheduling``/``runner``: the loop that feeds Dask pools a bounded
  window of jobs chosen fairly by rank, with heartbeats, timeouts, retries and recovery
  from the catalog (``scheduling``: its parts, one concern each); ``runner`` is the only
  module that touches ``distributed.Client``;
- ``manager``/``pools``/``owners``: the scheduler process of ``skerry up``, its Dask pools
  (``DIR/pools.json``: a LocalCluster, a GPU pool when there are GPUs, or addresses), and
  each job's view of its owner's storage;
- ``client``: the HTTP client of the CLI (``skerry datasets|workflows|run|status|cancel``).

Import from the submodules (``from skerry.workload.catalog import Catalog``).
"""

__all__: list[str] = []  # import from the modules
