"""What usage reports and metrics measure outside the quota store: jobs and stored bytes.

- Jobs (from the catalog): a job belongs to its run's owner, or its input dataset's owner
  for a task without a run (as ``hub.service.workload`` shows them). ``job_counts`` counts jobs
  by owner and UTC day of creation; ``queued_jobs`` counts the jobs not yet final
  (``defined``, ``queued``, ``running``, ``retrying``, ``lost``) of some owners, plus the
  jobs their running runs' first steps are owed but the scheduler has not created yet (a
  run just started has no job rows: without these, two runs started back to back would
  both pass a quota): what a ``queued_jobs`` quota limits; ``jobs_by_state`` is for the
  metrics.
- ``quota_lock`` is taken, in the catalog transaction that creates a run, before counting:
  on SQLite that transaction's ``BEGIN IMMEDIATE`` already holds the database's write lock
  (nothing to do); on PostgreSQL a transaction advisory lock serialises the run creators.
- ``planned_jobs`` is how many jobs a new run would get now: for each step reading the
  run's dataset, one per file its pin accepts (a ``multiple`` pin: one per chunk). Steps
  reading another step's output get jobs later, as files arrive: they are not counted.
- Stored bytes (``stored_bytes``): the home folder ``DIR/users/<user>`` is measured at
  report time (the apparent size of its files, as ``du -sb``, links not followed); a
  user's other adaptors (SFTP, S3, WebDAV...) are listed as ``"not measured"``.
"""

import os
from collections import defaultdict
from datetime import date, datetime, UTC
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import aliased

from skerry.workload.catalog import Catalog, UnknownDataset
from skerry.workload.models import FINAL_JOB_STATES, JOB_STATES, Dataset, File, Job, Run, Task, Workflow
from skerry.workload.runs import registry_of
from skerry.workload.workflows import load_workflow

NOT_MEASURED = "not measured"
QUOTA_LOCK_KEY = 0x736B6572  # "sker": the one advisory lock of run creation on PostgreSQL


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
    start = datetime(since.year, since.month, since.day, tzinfo=UTC)
    query = query.where(Job.created >= start).group_by(owner, day)
    with catalog.session() as s:
        return {(o or "", str(d)): n for o, d, n in s.execute(query)}


def queued_jobs(catalog: Catalog, owners: list[str] | set[str], *, session=None, registry=None) -> int:
    """The jobs not yet final of ``owners``, plus those owed to their running runs (module
    docstring); in ``session`` when given (a run's creating transaction), with ``registry``
    (default: the catalog's modules) to load the runs' workflows."""
    if not owners:
        return 0
    if session is None:
        with catalog.session() as s:
            return queued_jobs(catalog, owners, session=s, registry=registry)
    query, owner = _owned(lambda owner: (func.count(),))
    query = query.where(Job.state.not_in(FINAL_JOB_STATES), owner.in_(sorted(owners)))
    return session.execute(query).scalar_one() + _owed_jobs(catalog, session, owners, registry)


def _owed_jobs(catalog: Catalog, s, owners, registry) -> int:
    """The jobs the first steps of ``owners``' running runs would get now and do not have yet."""
    runs = s.execute(select(Run).where(Run.state == "running", Run.owner.in_(sorted(owners)))).scalars().all()
    if not runs:
        return 0
    registry = registry or registry_of(catalog)
    owed = 0
    for run in runs:
        tasks = {t.step: t for t in s.execute(select(Task).where(Task.run_id == run.id)).scalars()}
        wf = load_workflow(s.get(Workflow, run.workflow_id).spec, registry)
        for step, count in _first_step_jobs(s, wf, run.input_dataset_id).items():
            task = tasks.get(step)
            if task is not None and task.state not in FINAL_JOB_STATES:
                owed += max(count - task.jobs_total, 0)
    return owed


def quota_lock(session) -> None:
    """Serialise the creators of runs until ``session``'s transaction ends (module docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": QUOTA_LOCK_KEY})


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


def planned_jobs(catalog: Catalog, workflow, dataset: str, *, owner: str | None = None, session=None) -> int:
    """The jobs a run of the loaded ``workflow`` over ``dataset`` (of ``owner``; None: the only
    one by that name) would get now (module docstring)."""
    if session is None:
        with catalog.session() as s:
            return planned_jobs(catalog, workflow, dataset, owner=owner, session=s)
    try:
        ds = catalog.dataset_row(session, dataset, owner).id
    except UnknownDataset:
        return 0
    return sum(_first_step_jobs(session, workflow, ds).values())


def _first_step_jobs(s, workflow, dataset_id: int) -> dict[str, int]:
    """``{step: jobs}`` for the steps of ``workflow`` reading the dataset, from its files now."""
    names = s.execute(select(File.uri).where(File.dataset_id == dataset_id, File.state == "AVAILABLE")).scalars()
    names = [uri.rsplit("/", 1)[-1] for uri in names]
    out = {}
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
            out[name] = files
        else:
            out[name] = -(-files // (step.chunk or files)) if files else 0
    return out


def folder_bytes(path: Path) -> int:
    """The apparent size of the files under ``path`` (links not followed); 0 if it is missing."""
    total = 0
    for root, _dirs, files in os.walk(path, onerror=lambda e: None):
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
