"""Runs: a workflow over a dataset becomes one task per step, and the tasks get jobs.

    run_id = start_run(catalog, "checksums", "raw.run1")   # one transaction
    started = start_matching_runs(catalog, "raw.run2")      # the runs its name's masks start
    planner = Planner(catalog)                              # the scheduler calls advance()

``start_run`` checks everything first (the workflow against the modules, the dataset,
the output datasets' names) and then writes, in one transaction: the modules the
workflow uses (built-ins are added on first use), the run, one ``OPEN`` output dataset
per step (``<output_location>/<dataset name>``; by default beside the input dataset's
folder), owned by the run's owner, and one task per step. Bad input raises a
``RunError`` and writes nothing. The run keeps the workflow as it resolved then (every
module ``name@version``, in its ``params``): versions added later never change a run.
``check(session, workflow)``, when given, is called in that writing transaction before
anything is written (on SQLite it holds the database's write lock: a quota counted there
cannot change before the run exists); whatever it raises refuses the run, nothing written.

``start_matching_runs`` is what registering (creating) or closing a dataset calls: it
starts, at rank 1 and owned by the dataset's owner, a run of every workflow *of that
owner* whose ``mask`` matches the dataset's name and that has no run over that dataset
yet (another user's mask never starts anything over it, as it runs their code with this
owner's storage and credentials; a run in
any state counts, so registering then closing starts each run once). A dataset that is
a run's output never starts runs (no chains of runs over outputs). A workflow that
cannot run over the dataset (a ``RunError``, e.g. no location or pins of the wrong type)
is skipped with a warning on the ``skerry.workload`` logger naming it and why; the
dataset is not affected. A run its ``check`` refuses (any other ``SkerryError``, e.g. a
quota) is not created and is added to ``refused`` as ``{"workflow", "error", "message"}``.

``Planner.advance()`` gives jobs to the tasks of running runs (SPD task generation):
- a step reading the run's dataset takes its files (those its input pin's ``pattern``
  accepts); a step reading an upstream step takes the files registered in that step's
  output dataset (each registered with its job's success);
- a ``stream`` step gets a job per file as soon as the file is there, before upstream
  finishes (a chunked step a job per full chunk, the last partial chunk when upstream
  is done); a ``barrier`` step gets its jobs only when upstream is done (its task final,
  or the dataset no longer ``OPEN``): one per file for a single pin, all files (or chunks)
  in one job for a multiple pin;
- every file goes to exactly one job of a task (files already in a job are skipped; the
  planner is the one writer of a run's jobs, so it keeps, per task, the largest file id
  it has looked at, and files above it are not looked up among the task's jobs: a
  100,000-file run's first pass looks up none, read from the catalog once per task after
  a restart);
- a task is *complete* (``complete(task)``: no job will be added) once upstream is done
  and every file it will take has a job; the scheduler derives the task's state with it;
- a step of one file per job is planned ``PLAN_STEP`` files at a time, ``PLAN_FIRST``
  while its task has no job yet (``behind`` says more are waiting, and the scheduler plans
  again at its next step, dispatching the jobs already made in between): a 100,000-file
  run's first jobs run before its last exist;
- a run's tasks are locked while their jobs are planned (``SELECT ... FOR UPDATE`` on
  PostgreSQL; on SQLite the writing transaction holds the file): a cancel from the REST
  API waits for the page and cancels its jobs too, or comes first and the page makes
  none, so a cancelled task never keeps a queued job;
- ``finish_runs()`` ends a run once all its tasks are final (``failed`` if any failed,
  else ``cancelled`` if any was, else ``succeeded``) and closes its output datasets.

A job needs a GPU when its module's ``resources.gpu`` is above 0: it goes to pool
``gpu``, every other to pool ``cpu``.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import weakref
from collections import defaultdict

from sqlalchemy import bindparam, exists, func, select, update

from ..errors import BadRequest, ConfigError, SkerryError
from .builtins import BUILTINS
from .catalog import CatalogError, check_uri, plan_jobs
from .models import Dataset, File, Job, JobInput, Module, Run, Task, Workflow
from .modules import ModuleRegistry, pool_of
from .states import DATASET_READABLE, FINAL, run_outcome
from .workflows import load_workflow, matching_workflows

__all__ = ["start_run", "start_matching_runs", "Planner", "RunError", "registry_of", "pool_of"]

log = logging.getLogger("skerry.workload")


class RunError(BadRequest):
    """A run that cannot start over its dataset; the sentence says why (the REST API answers 400)."""

    code = "bad_run"


_MODULES_SEEN = select(func.count(), func.max(Module.id))
_MODULE_SPECS = select(Module.spec).order_by(Module.id)
_registries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # catalog -> ((count, largest id), registry)


def registry_of(catalog) -> ModuleRegistry:
    """The modules a workflow may use: the built-ins and every module in the catalog. Kept
    per catalog while its modules stay the same (they are only ever added: a name and
    version is never stored twice); callers read it, never add to it."""
    with catalog.session() as s:
        seen = tuple(s.execute(_MODULES_SEEN).one())
        kept = _registries.get(catalog)
        if kept is not None and kept[0] == seen:
            return kept[1]
        registry = ModuleRegistry(list(BUILTINS.values()))
        for spec in s.execute(_MODULE_SPECS).scalars():
            try:
                registry.add(spec)
            except ConfigError:
                pass  # a built-in's name and version stored with another spec: the catalog's wins below
    _registries[catalog] = (seen, registry)
    return registry


def start_run(catalog, workflow: str, dataset: str, *, rank: float = 1.0, owner: str = "",
              dataset_owner: str | None = None, output_location: str | None = None,
              registry: ModuleRegistry | None = None, check=None) -> int:
    """Start a run of ``workflow`` over ``dataset`` (see the module docstring); its id.

    ``owner`` owns the run and its output datasets; ``dataset_owner`` says whose dataset
    ``dataset`` is (None: the only dataset by that name)."""
    if isinstance(rank, bool) or not isinstance(rank, int | float) or not 0 < rank < float("inf"):
        raise RunError(f"a run's rank must be a number > 0, not {rank!r}")
    registry = registry or registry_of(catalog)
    try:
        row = catalog.get_workflow(workflow)
    except CatalogError as e:
        raise RunError(e.message) from None
    with catalog.session() as s:
        try:
            ds = catalog.dataset_row(s, dataset, dataset_owner)
        except CatalogError as e:
            raise RunError(e.message) from None
    if ds.state not in DATASET_READABLE:
        raise RunError(f"dataset {dataset!r} is {ds.state}: a run reads an OPEN or CLOSED dataset")
    try:
        wf = load_workflow(row.spec, registry)
    except ConfigError as e:
        raise RunError(e.message) from None
    base = output_location or (posixpath.dirname(ds.location) if ds.location else None)
    if not base:
        raise RunError(f"dataset {dataset!r} has no location: give output_location for the run's outputs")
    try:
        check_uri(base.rstrip("/") + "/x", "output_location")
    except SkerryError:
        raise RunError(f"output location {base!r} is not a skerry://<adaptor>/<path> folder") from None
    pins, outputs = {}, {}
    for name in wf.order:
        step = wf.steps[name]
        if len(step.inputs) != 1:
            raise RunError(f"step {name!r} of workflow {workflow!r} reads {len(step.inputs)} input pins: "
                           f"a run feeds exactly one pin per step")
        pins[name] = next(iter(step.inputs))
        outputs[name] = step.output_dataset(dataset)
    with catalog.writing() as s:
        taken = s.execute(_TAKEN, {"owner": owner, "names": list(outputs.values())}).scalars().all()
        if taken:
            raise RunError(f"output dataset {taken[0]!r} already exists: run {workflow!r} over "
                           f"{dataset!r} once, or name the step outputs differently")
        if check is not None:
            check(s, wf)
        run = Run(workflow_id=row.id, input_dataset_id=ds.id, params={"pins": pins, "workflow": wf.pinned()},
                  owner=owner, state="running")
        s.add(run)
        s.flush()
        made = {}
        for name in wf.order:
            step = wf.steps[name]
            module = s.execute(_MODULE, {"name": step.module.name, "version": step.module.version}).scalar_one_or_none()
            if module is None:
                module = Module(name=step.module.name, version=step.module.version,
                                spec=step.module.model_dump(mode="json", exclude_defaults=True))
                s.add(module)
            out = Dataset(name=outputs[name], owner=owner, state="OPEN",
                          location=f"{base.rstrip('/')}/{outputs[name]}")
            s.add(out)
            s.flush()
            made[name] = out
            source = step.inputs[pins[name]]
            input_id = ds.id if source.step is None else made[source.step].id
            s.add(Task(run_id=run.id, step=name, module_id=module.id, input_dataset_id=input_id,
                       output_dataset_id=out.id, state="defined", rank=float(rank), params=step.params))
        return run.id


def start_matching_runs(catalog, dataset_name: str, *, owner: str | None = None,
                        registry: ModuleRegistry | None = None, check=None,
                        refused: list[dict] | None = None) -> list[int]:
    """Start the runs that ``dataset_name``'s mask-matching workflows owe it (module docstring).

    The ids of the runs started now, in workflow order, each owned by the dataset's owner;
    ``owner`` says whose dataset it is (None: the only one by that name). Raises
    ``RunError`` only for an unknown dataset. ``check`` is passed to ``start_run``; the runs
    it refuses are appended to ``refused`` (module docstring).
    """
    with catalog.session() as s:
        try:
            ds = catalog.dataset_row(s, dataset_name, owner)
        except CatalogError as e:
            raise RunError(e.message) from None
        if s.execute(select(Task.id).where(Task.output_dataset_id == ds.id).limit(1)).first():
            return []  # a run's output: a mask matching it would chain runs without end
        mine = select(Workflow).where(Workflow.owner == ds.owner).order_by(Workflow.id)
        masked = [(w.name, w.spec) for w in s.execute(mine).scalars()
                  if isinstance(w.spec, dict) and isinstance(w.spec.get("mask"), str)
                  and fnmatch.fnmatchcase(dataset_name, w.spec["mask"])]  # load only those that match
    if not masked:
        return []
    registry = registry or registry_of(catalog)
    loaded = []
    for name, spec in masked:
        try:
            loaded.append(load_workflow(spec, registry))
        except ConfigError as e:
            log.warning("workflow %r does not start a run over dataset %r: %s", name, dataset_name, e.message)
    started = []
    for wf in matching_workflows(loaded, dataset_name):
        if _has_run(catalog, wf.name, ds.id):
            continue
        try:
            started.append(start_run(catalog, wf.name, dataset_name, rank=1, owner=ds.owner,
                                     dataset_owner=ds.owner, registry=registry, check=check))
        except RunError as e:
            if not _has_run(catalog, wf.name, ds.id):  # else a concurrent call started it: nothing to say
                log.warning("workflow %r does not start a run over dataset %r: %s", wf.name, dataset_name,
                            e.message)
        except SkerryError as e:  # refused by ``check``
            if refused is None:
                raise
            log.warning("workflow %r does not start a run over dataset %r: %s", wf.name, dataset_name, e.message)
            refused.append({"workflow": wf.name, "error": e.code, "message": e.message})
    return started


def _has_run(catalog, workflow: str, dataset_id: int) -> bool:
    with catalog.session() as s:
        return s.execute(select(Run.id).join(Workflow, Workflow.id == Run.workflow_id)
                         .where(Workflow.name == workflow, Run.input_dataset_id == dataset_id)
                         .limit(1)).first() is not None


# a run's start and the planner's pass: built once, not per call (``bulk``)
_TAKEN = select(Dataset.name).where(Dataset.owner == bindparam("owner"),
                                    Dataset.name.in_(bindparam("names", expanding=True)))
_MODULE = select(Module).where(Module.name == bindparam("name"), Module.version == bindparam("version"))
_RUNNING = select(func.count(), func.max(Run.id)).where(Run.state == "running")
_RUNS = select(Run).where(Run.state == "running").order_by(Run.id)
# locked while their jobs are planned (the module docstring): a cancel read before the page was written
_TASKS = select(Task).where(Task.run_id == bindparam("run")).order_by(Task.id).with_for_update()
_TASK_STATES = select(Task.run_id, Task.state).join(Run, Run.id == Task.run_id).where(Run.state == "running")
_END_RUN = update(Run).where(Run.id == bindparam("run")).values(state=bindparam("b_state"))
_CLOSE_OUTPUTS = (update(Dataset).where(Dataset.id.in_(select(Task.output_dataset_id)
                                                       .where(Task.run_id == bindparam("run"))),
                                        Dataset.state == "OPEN")
                  .values(state="CLOSED"))


def _page(untaken: bool, limited: bool, named: bool):
    """A page of a task's input files after a file id: only those in none of its jobs
    (``untaken``), at most ``limit`` (``limited``), with their URIs (``named``)."""
    query = select(File.id).where(File.dataset_id == bindparam("dataset"), File.state == "AVAILABLE",
                                  File.id > bindparam("after")).order_by(File.id)
    if untaken:
        query = query.where(~exists().where(JobInput.file_id == File.id, JobInput.job_id == Job.id,
                                            Job.task_id == bindparam("task")))
    if limited:
        query = query.limit(bindparam("limit"))
    return query.add_columns(File.uri) if named else query


_PAGES = {(u, lim, n): _page(u, lim, n) for u in (False, True) for lim in (False, True) for n in (False, True)}
PLAN_STEP = 25_000  # files planned per pass (about 0.13 s on SQLite): the scheduler dispatches between passes
PLAN_FIRST = 1_000  # ... while a task has no job: its first jobs are dispatched while the rest are planned


class Planner:
    """Adds the jobs whose input is ready, for every running run (module docstring)."""

    def __init__(self, catalog, registry: ModuleRegistry | None = None):
        self.catalog = catalog
        self.registry = registry
        self._workflows: dict[int, object] = {}
        self._complete: set[int] = set()
        self._after: dict[int, int] = {}  # task -> the last file id a paged call looked at
        self._pass_done: dict[int, bool] = {}  # task -> whether its input was done when this pass began
        self._high: dict[int, int] = {}  # task -> no file above this id is in one of its jobs
        self.behind = False  # the last advance left files for the next one
        self._seen: tuple = (0, None)  # (count, largest id) of the running runs at the last advance

    def complete(self, task_id: int) -> bool:
        return task_id in self._complete

    def news(self) -> bool:
        """Whether the running runs changed since the last ``advance`` (one small query):
        the scheduler plans at once for a new run instead of at its next interval."""
        with self.catalog.session() as s:
            now = tuple(s.connection().execute(_RUNNING).one())
        return now != self._seen

    def _workflow(self, run: Run):
        wf = self._workflows.get(run.id)
        if wf is None:
            spec = run.params.get("workflow")  # as it resolved when the run started
            if spec is None:  # a run started before runs kept their workflow
                with self.catalog.session() as s:
                    spec = s.get(Workflow, run.workflow_id).spec
            wf = load_workflow(spec, self.registry or registry_of(self.catalog))
            self._workflows[run.id] = wf
        return wf

    def advance(self) -> set[int]:
        """Create the jobs now ready, at most ``PLAN_STEP`` files' worth per task (``behind``
        then says more are waiting); the ids of the tasks that got jobs or became complete."""
        changed: set[int] = set()
        self.behind = False
        with self.catalog.session() as s:
            runs = s.execute(_RUNS).scalars().all()
        self._seen = (len(runs), runs[-1].id if runs else None)
        for run in runs:
            wf = self._workflow(run)
            with self.catalog.writing() as s:
                tasks = s.execute(_TASKS, {"run": run.id}).scalars().all()
                by_output = {t.output_dataset_id: t for t in tasks}
                for task in tasks:
                    if task.state in FINAL or task.id in self._complete:
                        continue
                    step = wf.steps[task.step]
                    upstream = by_output.get(task.input_dataset_id)
                    if upstream is not None:
                        done = upstream.state in FINAL
                    else:
                        done = s.get(Dataset, task.input_dataset_id).state != "OPEN"
                    added, more, whole = self._add_jobs(s, task, step, run, done)
                    if added:
                        changed.add(task.id)
                    if done and whole:
                        self._complete.add(task.id)
                        self._high.pop(task.id, None)
                        changed.add(task.id)
                    self.behind |= more
        return changed

    def _add_jobs(self, s, task: Task, step, run: Run, done: bool) -> tuple[int, bool, bool]:
        """(jobs added, whether files are left for the next call, whether every file the
        task will ever take now has its job). A step of one file per job looks at a page of
        ``PLAN_STEP`` files from where the last call stopped (``_after``); a pass over the
        files ends at the last one, and the next starts from the first again. The task is
        whole at the end of a pass that started once its input was ``done`` (nothing can
        land behind such a pass). A chunked step looks at every file each call (its chunks
        must not be cut by a page)."""
        if not (step.streaming or done):
            return 0, False, False
        pin = step.module.input(run.params["pins"][step.name])
        size = 1 if pin.kind == "single" else step.chunk  # None: every file in one job
        limit = (PLAN_STEP if task.jobs_total else min(PLAN_FIRST, PLAN_STEP)) if size == 1 else None
        after = self._after.pop(task.id, 0)
        if after == 0:  # a new pass
            self._pass_done[task.id] = done
        high = self._high_water(s, task)
        # with files this task may have taken ahead (after < high), each is looked up among its jobs
        files = _PAGES[after < high, limit is not None, pin.pattern is not None]
        params = {"dataset": task.input_dataset_id, "after": after, "task": task.id, "limit": limit}
        if pin.pattern is not None:  # the name is tested here: only the files it accepts go to jobs
            rows = s.connection().execute(files, params).all()
            files = [fid for fid, uri in rows if pin.accepts(uri.rsplit("/", 1)[-1])]
        made, seen, last = plan_jobs(s, task.id, files, size=size, whole_only=not done, state="queued",
                                     pool=pool_of(step.module), resources=step.module.resources.model_dump(mode="json"),
                                     params=params)
        if pin.pattern is not None:  # a page counts the files looked at, those the pattern left out too
            seen, last = len(rows), rows[-1][0] if rows else None
        if last is not None:
            self._high[task.id] = max(high, last)
        more = limit is not None and seen == limit
        if more:
            self._after[task.id] = last
        whole = not more and self._pass_done.pop(task.id, False)
        return made, more, whole

    def _high_water(self, s, task: Task) -> int:
        """The largest file id in a job of the task (0: none), from the catalog the first time."""
        high = self._high.get(task.id)
        if high is None:
            high = 0 if not task.jobs_total else s.execute(  # a new task has no job to look in
                select(func.coalesce(func.max(JobInput.file_id), 0))
                .join(Job, Job.id == JobInput.job_id).where(Job.task_id == task.id)).scalar_one()
            self._high[task.id] = high
        return high

    def finish_runs(self, s=None) -> list[int]:
        """End the runs whose tasks are all final; the ids of those ended now. In the
        writing session ``s`` (the one that derived the tasks' states), else in one of its own."""
        if s is None:
            with self.catalog.writing() as s:
                return self.finish_runs(s)
        ended = []
        conn = s.connection()
        states = defaultdict(list)  # the running runs' task states, in one query (a run without tasks never ends)
        for run_id, state in conn.execute(_TASK_STATES):
            states[run_id].append(state)
        for run_id in sorted(states):
            outcome = run_outcome(states[run_id])
            if outcome is None:
                continue
            conn.execute(_END_RUN, {"run": run_id, "b_state": outcome})
            conn.execute(_CLOSE_OUTPUTS, {"run": run_id})
            ended.append(run_id)
            self._workflows.pop(run_id, None)
        return ended
