"""The catalog: datasets and their files, and the records the scheduler keeps in it.

``Catalog(url)`` opens a database (``sqlite:///path`` or ``postgresql+psycopg://...``;
``Catalog.for_data_dir(dir)`` is the default SQLite file of a platform) and
``upgrade()`` brings its schema to the newest Alembic revision. Then::

    cat.create_dataset("raw.run1", owner="alice", location="skerry://home/raw/run1")
    cat.get_dataset("raw.run1", owner="alice")          # names are per owner (see Rules)
    cat.register_files("raw.run1", [{"uri": "skerry://home/raw/run1/a", "size": 10,
                                     "checksum": "<md5 hex>"}, ...])
    cat.list_files("raw.run1", after=0, limit=1000)     # a page, ``next_after`` for the next
    cat.close_dataset("raw.run1")
    cat.check("raw.run1", fs)                           # catalog against storage
    cat.register_outputs_and_succeed(job_id, outputs)   # a job's outputs, exactly once

For the scheduler: ``add_module``/``get_module``, ``add_workflow``/``get_workflow``,
``create_run``, ``create_task``, ``create_jobs`` (bulk, inputs checked against the task's
input dataset), ``start_attempt``/``end_attempt``, ``job``; ``session()``/``writing()``
for its own queries (indexes: ``ix_jobs_task_state_id`` for the next queued jobs of a
task and jobs by task and state, ``ix_jobs_state_pool``).

``Catalog`` is one class made of one part per concern, each a module of this package
with its own rules:

- ``engine``: the engine (SQLite pragmas, PostgreSQL), the Alembic migrations, ``session()``
  and ``writing()`` (``Database``, the base of every part);
- ``datasets``: datasets, found by name and owner, and their state moves;
- ``files``: files registered in bulk, listed page by page;
- ``consistency``: the consistency check, catalog against storage;
- ``specs``: the specs of modules and workflows;
- ``jobs``: runs, tasks, jobs and their attempts, a job's outputs with its success;
- ``newjobs``: new jobs in bulk, made inside the database (the planner's pages);
- ``inputs``, ``values``, ``errors``: the checks of what callers give, the plain values
  returned, and the errors (drawn as a tree in ``errors``).

Import every name from here (``from skerry.workload.catalog import Catalog, UnknownDataset``).

Rules:
- every change is one transaction: bad input raises a ``CatalogError`` (a
  ``SkerryError``) with a sentence naming what is wrong, and leaves no row behind;
- a dataset's name is unique among its owner's datasets; without ``owner=`` a name must
  be one dataset's only (``datasets``);
- datasets go ``OPEN -> CLOSED -> TO_UPLOAD``, any of those ``-> TO_DELETE -> DELETED``
  (``DATASET_MOVES``, read off the state machine of ``states``); files are registered
  only into an ``OPEN`` dataset;
- URIs are ``skerry://<adaptor>/<path>`` without empty, ``.`` or ``..`` segments;
  checksums are MD5, 32 hex digits (``inputs``);
- on SQLite writing transactions start with ``BEGIN IMMEDIATE``; on PostgreSQL the job
  row is locked (``SELECT ... FOR UPDATE``) (``engine``, ``jobs``);
- the consistency check reports every problem, but acts on one only once it was seen in
  ``threshold`` checks in a row, and removes a dark file only when asked (``consistency``);
- a part reaches another only through the functions it exports (``dataset_row``,
  ``insert_files``, ...), never through ``self``: each part reads alone.
"""

from ..states import DATASET_MOVES
from . import consistency, datasets, files, jobs, specs
from .engine import make_engine
from .errors import (AmbiguousDataset, BadFileEntry, BadMetadata, CatalogError, DatasetExists, DatasetStateError,
                     JobStateError, ModuleExists, UnknownDataset, UnknownJob, UnknownModule)
from .files import PAGE_MAX
from .inputs import check_uri
from .newjobs import insert_jobs, plan_jobs
from .values import ConsistencyReport, DatasetInfo, FileInfo, FilePage, Mismatch

__all__ = [
    "Catalog", "DatasetInfo", "FileInfo", "FilePage", "ConsistencyReport", "Mismatch",
    "CatalogError", "DatasetExists", "UnknownDataset", "DatasetStateError", "BadMetadata", "BadFileEntry",
    "UnknownJob", "JobStateError", "ModuleExists", "UnknownModule", "DATASET_MOVES",
    # also imported from here by the rest of the tree
    "AmbiguousDataset", "PAGE_MAX", "check_uri", "insert_jobs", "plan_jobs", "make_engine",
]



class Catalog(datasets.Datasets, files.Files, consistency.Consistency, specs.Specs, jobs.Jobs):
    """The catalog database: datasets, files, modules, workflows, runs, tasks and jobs.

    ``Catalog(url, *, check_threshold=2)``: ``check_threshold`` is the consistency check's
    default ``threshold``. Thread-safe: every method opens its own transaction. ``session()`` and ``writing()``
    give the scheduler a session of its own for what this API does not cover.
    """
