"""What usage reports and metrics measure outside the quota store: jobs and stored bytes.

- Jobs (from the catalog): a job belongs to its run's owner, or its input dataset's owner
  for a task without a run (as ``hub.api_workload`` shows them). ``job_counts`` counts jobs
  by owner and UTC day of creation; ``queued_jobs`` counts the jobs not yet final
  (``defined``, ``queued``, ``running``, ``retrying``, ``lost``) of some owners: what a
  ``queued_jobs`` quota limits; ``jobs_by_state`` is for the metrics.
- ``planned_jobs`` is how many jobs a new run would get now: for each step reading the
  run's dataset, one per file its pin accepts (a ``multiple`` pin: one per chunk). Steps
  reading another step's output get jobs later, as files arrive: they are not counted.
- Stored bytes (``stored_bytes``): the home folder ``DIR/users/<user>`` is measured at
  report time (the apparent size of its files, as ``du -sb``, links not followed); a
  user's other adaptors (SFTP, S3, WebDAV...) are listed as ``"not measured"``.
"""

import os
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from skerry.workload.catalog import Catalog
from skerry.workload.models import FINAL_JOB_STATES, JOB_STATES, Dataset, File, Job, Run, Task

NOT_MEASURED = "not measured"


def _owned(columns):
    """A select of ``columns`` over jobs joined to their owner, and the owner expression (the
    run's owner, else the input dataset's); ``columns`` is a function of that expression."""
    input_dataset = aliased(Dataset)
    owner = func.coalesce(Run.owner, input_dataset.owner)
    query = (select(*columns(owner)).select_from(Job).join(Task, Task.id == Job.task_id)
             .outerjoin(Run, Run.id == Task.run_id).outerjoin(input_dataset, input_dataset.id == Task.input_dataset_id))
    return query, owner


def job_counts(catalog: Catalog, since: date) -> dict[tuple[str, str], int]:
    """``{(owner, "YYYY-MM-DD"): jobs created that day}`` from ``since`` on."""
    day = func.date(Job.created)
    query, owner = _owned(lambda owner: (owner, day, func.count()))
    start = datetime(since.year, since.month, since.day, tzinfo=timezone.utc)
    query = query.where(Job.created >= start).group_by(owner, day)
    with catalog.session() as s:
        return {(o or "", str(d)): n for o, d, n in s.execute(query)}


def queued_jobs(catalog: Catalog, owners: list[str] | set[str]) -> int:
    """The jobs not yet final of ``owners``."""
    if not owners:
        return 0
    query, owner = _owned(lambda owner: (func.count(),))
    query = query.where(Job.state.not_in(FINAL_JOB_STATES), owner.in_(sorted(owners)))
    with catalog.session() as s:
        return s.execute(query).scalar_one()


def jobs_by_state(catalog: Catalog) -> dict[str, int]:
    """``{state: jobs}`` for every job state (0 where none)."""
    with catalog.session() as s:
        found = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    return {state: found.get(state, 0) for state in JOB_STATES}


def jobs_by_owner(catalog: Catalog) -> dict[str, int]:
    """``{owner: jobs ever created}``."""
    query, owner = _owned(lambda owner: (owner, func.count()))
    with catalog.session() as s:
        return {o or "": n for o, n in s.execute(query.group_by(owner))}


def planned_jobs(catalog: Catalog, workflow, dataset: str) -> int:
    """The jobs a run of the loaded ``workflow`` over ``dataset`` would get now (module docstring)."""
    with catalog.session() as s:
        ds = s.execute(select(Dataset).where(Dataset.name == dataset)).scalar_one_or_none()
        if ds is None:
            return 0
        names = s.execute(select(File.uri).where(File.dataset_id == ds.id, File.state == "AVAILABLE")).scalars()
        names = [uri.rsplit("/", 1)[-1] for uri in names]
    total = 0
    for name in workflow.order:
        step = workflow.steps[name]
        if len(step.inputs) != 1:
            continue  # start_run refuses it
        pin_name, source = next(iter(step.inputs.items()))
        if source.step is not None:
            continue  # fed by another step: its jobs come later
        pin = step.module.input(pin_name)
        files = sum(1 for n in names if pin.accepts(n))
        if pin.kind == "single":
            total += files
        elif files:
            chunk = step.chunk or files
            total += -(-files // chunk)
    return total


def folder_bytes(path: Path) -> int:
    """The apparent size of the files under ``path`` (links not followed); 0 if it is missing."""
    total = 0
    for root, dirs, files in os.walk(path, onerror=lambda e: None):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed meanwhile
            total += st.st_size
    return total


def stored_bytes(data_dir: str | os.PathLike, users: list[str] | set[str],
                 adaptors: dict[str, list[str]] | None = None) -> dict[str, dict[str, int | str]]:
    """``{user: {"home": bytes, "<other adaptor>": "not measured"}}`` for ``users``;
    ``adaptors`` names each user's other adaptors."""
    base = Path(data_dir) / "users"
    out: dict[str, dict[str, int | str]] = defaultdict(dict)
    for user in sorted(users):
        out[user]["home"] = folder_bytes(base / user)
        for name in (adaptors or {}).get(user, []):
            if name != "home":
                out[user][name] = NOT_MEASURED
    return dict(out)
