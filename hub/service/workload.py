"""``/services/skerry/api/v1/...``: datasets, modules, workflows, runs, tasks and jobs.

Routes (all JSON, hub tokens, errors ``{"error", "message"}``)::

    GET  datasets                       {"datasets": [...]}: the caller's (an admin: all, ?owner=)
    POST datasets                       {"name", "location"?, "metadata"?, "owner"? (admins)} -> 201,
                                        + "runs", "refused"
    GET  datasets/{name}                the dataset, with its file count and total size
                                        (every datasets/{name} route: ?owner= for admins)
    GET  datasets/{name}/files          ?after=&limit=&state= -> {"files": [...], "next_after"}
    POST datasets/{name}/files          {"files": [{"uri", "size", "checksum"?}, ...]}: all or none
    POST datasets/{name}/close          OPEN -> CLOSED, + "runs", "refused"
    GET  modules                        {"modules": [...]}: the built-ins and the added ones
    POST modules                        a module spec -> 201
    GET  workflows                      {"workflows": [...]}
    POST workflows                      a workflow spec, checked against the known modules -> 201,
                                        owned by the caller, stored with its modules pinned
    GET  runs                           {"runs": [...]}: the caller's (an admin: all)
    POST runs                           {"workflow", "dataset", "rank"?, "owner"? (admins)} -> 201,
                                        the run with its tasks
    GET  runs/{id}                      a run with its tasks; ?wait=S: once it has ended (or S s passed)
    GET  tasks/{id}                     a task with its job counts by state
    POST tasks/{id}/rank                {"rank": n} (n > 0): its share from the next pick on
    POST tasks/{id}/cancel              the task and every job of it that is not final
    GET  jobs                           ?task=&state=&after=&limit= -> {"jobs": [...], "next_after"}
                                        (each with its last attempt's log location and error)

Rules:

- a dataset belongs to its owner (the hub user who created it, or the existing hub user
  an admin names: an unknown one is a 404 ``no_such_user``); a run to the user who
  started it, and a task or job to its run's owner (its input dataset's, without a run).
  Anyone else gets 404, as if it did not exist; admins (an admin user, or a token with
  scope ``admin:users``) see and change everything. Dataset names are per owner: a user's
  ``{name}`` is always among their own datasets, so no answer (not even a 409 on create)
  tells them what another user's datasets are called; an admin names the owner with
  ``?owner=`` (or ``"owner"`` in a run's body) where several users hold the name (else 409
  ``ambiguous_dataset``). Modules and workflows are shared for reading and running; a
  workflow belongs to the user who added it, and its mask starts runs over that user's
  datasets only. A workflow is stored with every module pinned (``name@version``), and a
  run keeps the workflow as it resolved at its start: a module version added later, by
  anyone, never changes or breaks them;
- a bad body (malformed JSON, not an object, unknown fields, a bad spec, an unknown
  module, a cyclic workflow, pins of the wrong type, a duplicate) is a 4xx with a
  sentence, and nothing is written: each change is one catalog transaction;
- bodies are capped (``MAX_BODY``; a file list ``MAX_FILES_BODY``): larger is 413;
- ``POST runs`` is ``skerry.workload.runs.start_run`` (a run over a dataset without a
  location, or whose output datasets exist, is a 400 and writes nothing); the
  scheduler then gives its tasks their jobs. A run whose jobs would pass a ``queued_jobs``
  quota of its owner, or of one of the owner's groups (``hub.stores.quotas``), is a 403
  ``quota_exceeded`` with the quota's sentence, and nothing is created: the jobs counted are
  the owner's (or the group members') jobs not yet final, plus those the run's first steps
  would get from the dataset's files now (``hub.stores.usage.planned_jobs``), the jobs counted
  including those owed to the owners' running runs not yet given them. The count and the
  run's creation are one catalog write transaction (SQLite: ``BEGIN IMMEDIATE``, the
  database's write lock, which also holds off other processes; PostgreSQL: an advisory
  lock, ``hub.stores.usage.quota_lock``): of two runs created at once, a quota admitting one
  admits exactly one;
- creating a dataset and closing it start the runs its name's workflow masks call for
  (``skerry.workload.runs.start_matching_runs``: at rank 1, owned by the dataset's
  owner, once per workflow and dataset; a run's output datasets never start runs); both
  answers carry ``"runs": [ids]``, the runs that call started, and ``"refused"``: the runs
  a ``queued_jobs`` quota refused, not created, each ``{"workflow", "error":
  "quota_exceeded", "message": the quota's sentence}`` (checked as for ``POST runs``). A
  workflow that cannot run over the dataset is skipped (logged) and the dataset is created or closed all the same.
  Adding a workflow with a mask starts nothing over the datasets already there: only
  registering or closing a dataset starts runs;
- catalog calls run in a worker thread, so a large registration does not hold up others.
"""

import asyncio
import time
from collections import defaultdict
from datetime import UTC
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import aliased

from skerry.errors import ConfigError, Conflict, NotFound, SkerryError
from skerry.workload import states
from skerry.workload.builtins import BUILTINS, builtin_registry
from skerry.workload.catalog import PAGE_MAX, Catalog, CatalogError, JobStateError, ModuleExists
from skerry.workload.models import (DATASET_STATES, FILE_STATES, FINAL_JOB_STATES, JOB_STATES, Dataset, Job,
                                    JobAttempt, Module, Run, Task, Workflow, now)
from skerry.workload.modules import ModuleRegistry, ModuleSpec, load_module
from skerry.workload.runs import registry_of, start_matching_runs, start_run
from skerry.workload.workflows import WorkflowSpec, load_workflow

from skerry.hub.stores import usage
from skerry.hub.service.toolkit import (API, ApiError, caller, calling, get_catalog, get_hub, inline_refs, is_admin,
                                       json_body, json_object, request_body, sentence)
from skerry.hub.stores.quotas import QuotaExceeded, check_queued_jobs, shared_store

MAX_BODY = 1024 * 1024  # specs and small requests
WAIT_MAX = 30  # seconds a GET runs/{id}?wait= may hold its answer (below clients' usual time-outs)
MAX_FILES_BODY = 32 * 1024 * 1024  # a file list: about 200,000 entries
PAGE_DEFAULT = 1000


_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
_RANK = {"type": "number", "exclusiveMinimum": 0}
DATASET_BODY = request_body(json_object(
    ["name"], name=_NAME, location={"type": "string", "description": "skerry://adaptor/path"},
    metadata={"type": "object"}, owner={**_NAME, "description": "admins only"}))
FILES_BODY = request_body(json_object(["files"], files={"type": "array", "items": json_object(
    ["uri", "size"], uri={"type": "string"}, size={"type": "integer", "minimum": 0},
    checksum={"type": ["string", "null"], "description": "MD5, 32 hex digits"})}))
MODULE_BODY = request_body(inline_refs(ModuleSpec.model_json_schema()))
WORKFLOW_BODY = request_body(inline_refs(WorkflowSpec.model_json_schema()))
RUN_BODY = request_body(json_object(["workflow", "dataset"], workflow=_NAME, dataset=_NAME, rank=_RANK,
                                    owner={**_NAME, "description": "whose dataset (admins only)"}))
RANK_BODY = request_body(json_object(["rank"], rank=_RANK))


def _refusal(e: SkerryError) -> ApiError:
    """A catalog error in this API's words: its own status; a bad spec is ``bad_spec``; a quota's
    sentence as it is (it may start with a user's name)."""
    if isinstance(e, QuotaExceeded):
        return ApiError.of(e)
    status = e.status if isinstance(e, (NotFound, Conflict)) else 400  # anything else: the body is wrong
    return ApiError(status, "bad_spec" if isinstance(e, ConfigError) else e.code, sentence(str(e)))


_call = calling(_refusal)  # catalog calls in a worker thread, their errors in this API's words


def _fields(body: dict, allowed: set[str], required: set[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "bad_request",
                       f"{what} has no field {unknown[0]!r} (fields: {', '.join(sorted(allowed))}).")
    missing = sorted(required - set(body))
    if missing:
        raise ApiError(400, "bad_request", f"{what} needs the field {missing[0]!r}.")


def _whole(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ApiError(400, "bad_request", f"{what} must be a whole number {limits}, got {value!r}.")
    return value


def _time(t) -> str | None:
    if t is not None and t.tzinfo is None:
        t = t.replace(tzinfo=UTC)  # SQLite keeps no time zone; the catalog writes UTC
    return t.isoformat() if t is not None else None


# ---- plain JSON of catalog records --------------------------------------------


def _dataset_json(d, counts: bool = True) -> dict:
    out = {"id": d.id, "name": d.name, "state": d.state, "owner": d.owner, "location": d.location,
           "metadata": d.metadata, "created": _time(d.created)}
    if counts:  # only a single dataset's answer counts its files
        out.update(files=d.files, size=d.size)
    return out


def _file_json(f) -> dict:
    return {"id": f.id, "uri": f.uri, "size": f.size, "checksum": f.checksum, "state": f.state, "job": f.job_id}


def _module_json(spec: dict, builtin: bool) -> dict:
    return {"name": spec["name"], "version": spec["version"], "ref": f"{spec['name']}@{spec['version']}",
            "builtin": builtin, "spec": spec}


def _job_json(j: Job, last: tuple | None = None) -> dict:
    """A job; with its last attempt's ``(log, error)``: where its log is and what went wrong."""
    log, error = last or (None, None)
    return {"id": j.id, "task": j.task_id, "state": j.state, "attempts": j.attempts, "pool": j.pool,
            "error_class": j.error_class, "error": error, "log": log,
            "created": _time(j.created), "updated": _time(j.updated)}


# a run's view, asked on every run request and wait: built once, not per call (``skerry.workload.bulk``)
_RUN_STATE = select(Run.state, Run.owner).where(Run.id == bindparam("run_id"))
_RUN = select(Run.__table__).where(Run.id == bindparam("run_id"))  # plain rows: the ORM's objects cost more
_RUN_TASKS = select(Task.__table__).where(Task.run_id == bindparam("run_id")).order_by(Task.id)
_WORKFLOW_NAME = select(Workflow.name).where(Workflow.id == bindparam("id"))
_DATASET_NAMES = select(Dataset.id, Dataset.name).where(Dataset.id.in_(bindparam("ids", expanding=True)))
_MODULE_NAMES = select(Module.id, Module.name, Module.version).where(Module.id.in_(bindparam("ids", expanding=True)))
_JOB_COUNTS = (select(Job.task_id, Job.state, func.count()).where(Job.task_id.in_(bindparam("ids", expanding=True)))
               .group_by(Job.task_id, Job.state))


def _names(s, ids: set[int]) -> dict[int, str]:
    """{id: name} of the datasets with these ids, in one query."""
    return dict(s.execute(_DATASET_NAMES, {"ids": list(ids)}).all()) if ids else {}


def _modules(s, ids: set[int]) -> dict[int, str]:
    """{id: "name@version"} of these modules, in one query."""
    rows = s.execute(_MODULE_NAMES, {"ids": list(ids)}).all() if ids else []
    return {i: f"{name}@{version}" for i, name, version in rows}


class Workload:
    """The catalog queries of this router that the Catalog API does not cover."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- modules and workflows --

    def modules(self) -> list[dict]:
        builtins = [_module_json(s.model_dump(mode="json"), True) for s in BUILTINS.values()]
        return builtins + [_module_json(m.spec, False) for m in self._added()]

    def _added(self) -> list[Module]:
        """The modules added to the catalog; not the built-ins (a run stores those it uses)."""
        with self.catalog.session() as s:
            return [m for m in s.execute(select(Module).order_by(Module.id)).scalars() if m.name not in BUILTINS]

    def registry(self) -> ModuleRegistry:
        registry = builtin_registry()
        for m in self._added():
            registry.add(m.spec)
        return registry

    def add_module(self, body: dict) -> dict:
        spec = load_module(body)
        if spec.name in BUILTINS:
            raise ModuleExists(f"{spec.name} is a built-in module: give yours another name")
        stored = spec.model_dump(mode="json")
        self.catalog.add_module(spec.name, spec.version, stored)
        return _module_json(stored, False)

    def workflows(self) -> list[dict]:
        with self.catalog.session() as s:
            return [self._workflow_json(w) for w in s.execute(select(Workflow).order_by(Workflow.id)).scalars()]

    @staticmethod
    def _workflow_json(w: Workflow) -> dict:
        return {"id": w.id, "name": w.name, "owner": w.owner, "mask": w.spec.get("mask"),
                "steps": [s.get("name") for s in w.spec.get("steps", [])], "spec": w.spec,
                "created": _time(w.created)}

    def add_workflow(self, body: dict, owner: str) -> dict:
        loaded = load_workflow(body, self.registry())
        with self.catalog.session() as s:
            if s.execute(select(Workflow.id).where(Workflow.name == loaded.name)).first():
                raise WorkflowExists(f"a workflow named {loaded.name!r} already exists")
        self.catalog.add_workflow(loaded.name, loaded.pinned(), owner=owner)
        return self._workflow_json(self.catalog.get_workflow(loaded.name))

    # -- runs, tasks, jobs --

    @staticmethod
    def task_owner(s, task: Task) -> str:
        if task.run_id is not None:
            return s.get(Run, task.run_id).owner
        if task.input_dataset_id is not None:
            return s.get(Dataset, task.input_dataset_id).owner
        return ""

    def runs(self, owner: str | None) -> list[dict]:
        query = select(Run).order_by(Run.id)
        if owner is not None:
            query = query.where(Run.owner == owner)
        with self.catalog.session() as s:
            return [self._run_json(s, r, tasks=False) for r in s.execute(query).scalars()]

    def run(self, run_id: int, owner: str | None) -> dict:
        with self.catalog.session() as s:
            run = s.execute(_RUN, {"run_id": run_id}).first()
            if run is None or (owner is not None and run.owner != owner):
                raise NotFound(f"no run with id {run_id}")
            return self._run_json(s, run, tasks=True)

    def ended_run(self, run_id: int, owner: str | None) -> dict | None:
        """A run's view once it has ended, else None: its state alone is read first (one row,
        on a plain connection: asked every few ms of a wait); NotFound as ``run`` says it."""
        with self.catalog.engine.connect() as c:
            row = c.execute(_RUN_STATE, {"run_id": run_id}).first()
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound(f"no run with id {run_id}")
        return self.run(run_id, owner) if row.state in states.FINAL_STATES else None

    def _run_json(self, s, run: Run, tasks: bool) -> dict:
        rows = s.execute(_RUN_TASKS, {"run_id": run.id}).all()
        # the names of the run's and its tasks' datasets: one query
        ids = {i for t in rows for i in (t.input_dataset_id, t.output_dataset_id)} | {run.input_dataset_id}
        names = _names(s, ids - {None})
        out = {"id": run.id, "workflow": s.execute(_WORKFLOW_NAME, {"id": run.workflow_id}).scalar_one(),
               "dataset": names.get(run.input_dataset_id),
               "state": run.state, "owner": run.owner, "params": run.params, "created": _time(run.created),
               "jobs": {"total": sum(t.jobs_total for t in rows), "succeeded": sum(t.jobs_succeeded for t in rows),
                        "failed": sum(t.jobs_failed for t in rows)}}
        if tasks:
            counts = defaultdict(dict)  # task -> {state: jobs}, for all the run's tasks at once
            if rows:
                for task_id, state, n in s.execute(_JOB_COUNTS, {"ids": [t.id for t in rows]}):
                    counts[task_id][state] = n
            modules = _modules(s, {t.module_id for t in rows})
            out["tasks"] = [self._task_json(s, t, counts[t.id], names, modules, run.owner) for t in rows]
        return out

    def _task_json(self, s, t: Task, counts: dict | None = None, names: dict | None = None,
                   modules: dict | None = None, owner: str | None = None) -> dict:
        """A task's view; ``counts``, ``names``, ``modules`` and ``owner``: what its run's view
        has read already for all its tasks (read here where not given)."""
        if counts is None:
            counts = dict(s.execute(select(Job.state, func.count()).where(Job.task_id == t.id)
                                    .group_by(Job.state)).all())
        if names is None:
            names = _names(s, {t.input_dataset_id, t.output_dataset_id} - {None})
        if modules is None:
            modules = _modules(s, {t.module_id})
        return {"id": t.id, "run": t.run_id, "step": t.step, "module": modules[t.module_id],
                "state": t.state, "rank": t.rank, "params": t.params, "input_dataset": names.get(t.input_dataset_id),
                "output_dataset": names.get(t.output_dataset_id),
                "owner": owner if owner is not None else self.task_owner(s, t),
                "jobs": {"total": t.jobs_total, "succeeded": t.jobs_succeeded, "failed": t.jobs_failed,
                         "by_state": {state: counts.get(state, 0) for state in JOB_STATES}},
                "created": _time(t.created), "updated": _time(t.updated)}

    def _own_task(self, s, task_id: int, owner: str | None, lock: bool = False) -> Task:
        query = select(Task).where(Task.id == task_id)
        task = s.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        if task is None or (owner is not None and self.task_owner(s, task) != owner):
            raise NotFound(f"no task with id {task_id}")
        return task

    def task(self, task_id: int, owner: str | None) -> dict:
        with self.catalog.session() as s:
            return self._task_json(s, self._own_task(s, task_id, owner))

    def set_rank(self, task_id: int, rank: float, owner: str | None) -> dict:
        with self.catalog.writing() as s:
            task = self._own_task(s, task_id, owner, lock=True)
            if task.state in FINAL_JOB_STATES:
                raise JobStateError(f"task {task_id} is {task.state}: a final task keeps its rank")
            task.rank = float(rank)
            s.flush()
            return self._task_json(s, task)

    def cancel(self, task_id: int, owner: str | None) -> dict:
        """Cancel the task and each of its jobs that is not final, in one transaction.

        A running job's open attempt is ended as cancelled; the scheduler drops its result
        when it comes (a final state never changes).
        """
        with self.catalog.writing() as s:
            task = self._own_task(s, task_id, owner, lock=True)
            states.apply_task(states.Task(task.id, task.state), states.Cancel())  # refuses a final task
            stamp = now()
            live = s.execute(select(Job.id, Job.state).where(Job.task_id == task_id,
                                                               Job.state.not_in(FINAL_JOB_STATES))).all()
            for job_id, state in live:
                states.apply_job(states.Job(job_id, task_id, state), states.Cancel())
            ids = [job_id for job_id, _ in live]
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                s.execute(update(Job).where(Job.id.in_(chunk)).values(state="cancelled", updated=stamp))
                s.execute(update(JobAttempt).where(JobAttempt.job_id.in_(chunk), JobAttempt.ended.is_(None))
                          .values(ended=stamp, error_class="cancelled", error="cancelled by request"))
            task.state = "cancelled"
            s.flush()
            return self._task_json(s, task)

    def jobs(self, *, task: int | None, state: str | None, after: int, limit: int, owner: str | None) -> dict:
        query = select(Job).where(Job.id > after).order_by(Job.id).limit(limit + 1)
        if task is not None:
            query = query.where(Job.task_id == task)
        if state is not None:
            query = query.where(Job.state == state)
        with self.catalog.session() as s:
            if task is not None:
                self._own_task(s, task, owner)
            elif owner is not None:
                input_dataset = aliased(Dataset)
                query = (query.join(Task, Task.id == Job.task_id).outerjoin(Run, Run.id == Task.run_id)
                         .outerjoin(input_dataset, input_dataset.id == Task.input_dataset_id)
                         .where(func.coalesce(Run.owner, input_dataset.owner) == owner))
            rows = s.execute(query).scalars().all()
            last = {}
            ids = [j.id for j in rows[:limit]]
            for start in range(0, len(ids), 500):  # each job's last attempt: its log and error
                for job_id, log, error in s.execute(
                        select(JobAttempt.job_id, JobAttempt.log, JobAttempt.error)
                        .where(JobAttempt.job_id.in_(ids[start:start + 500])).order_by(JobAttempt.number)):
                    last[job_id] = (log, error)
            jobs = [_job_json(j, last.get(j.id)) for j in rows[:limit]]
        return {"jobs": jobs, "next_after": jobs[-1]["id"] if len(rows) > limit else None}

    def check_run_request(self, workflow: str, dataset: str, owner: str | None) -> str:
        """The owner of the run (the dataset's): ``dataset`` among ``owner``'s datasets (None:
        the only one by that name, for admins)."""
        self.catalog.get_workflow(workflow)  # CatalogError: no workflow named ...
        with self.catalog.session() as s:  # the row alone: its files are not counted
            return self.catalog.dataset_row(s, dataset, owner).owner


class WorkflowExists(Conflict, CatalogError):
    code = "exists"


router = APIRouter(prefix=API)
_workloads: dict[int, Workload] = {}  # one per catalog (its queries keep no state of their own)


async def workload(catalog: Catalog = Depends(get_catalog)) -> Workload:
    if id(catalog) not in _workloads:
        _workloads[id(catalog)] = Workload(catalog)
    return _workloads[id(catalog)]


def owner_filter(who: dict) -> str | None:
    """None for admins (everything); else the caller's name (only what they own)."""
    return None if is_admin(who) else who.get("name", "")


async def own_dataset(name: str, who: dict, w: Workload, owner: str | None = None):
    """The caller's dataset ``name`` (an admin: ``owner``'s, or the only one by that name)."""
    return await _call(w.catalog.get_dataset, name, owner=owner if is_admin(who) else who.get("name", ""))


# -- datasets ---------------------------------------------------------------


@router.get("/datasets", tags=["datasets"])
async def list_datasets(owner: str | None = None, state: str | None = None, who: dict = Depends(caller),
                        w: Workload = Depends(workload)):
    """The caller's datasets (an admin: everyone's, or one ``owner``'s), optionally in one ``state``."""
    if state is not None and state not in DATASET_STATES:
        raise ApiError(400, "bad_request",
                       f"Unknown dataset state {state!r} (states: {', '.join(DATASET_STATES)}).")
    if not is_admin(who):
        owner = who.get("name", "")
    found = await _call(w.catalog.list_datasets, owner=owner, state=state)
    return {"datasets": [_dataset_json(d, counts=False) for d in found]}


@router.post("/datasets", status_code=201, tags=["datasets"], openapi_extra=DATASET_BODY)
async def create_dataset(request: Request, who: dict = Depends(caller), w: Workload = Depends(workload),
                         hub=Depends(get_hub)):
    """A new ``OPEN`` dataset owned by the caller. Body: ``{"name", "location"?, "metadata"?}``;
    an admin may give ``"owner"``, an existing hub user (else 404 ``no_such_user``, nothing
    written). 409 if the name is taken. The answer is the dataset with ``"runs"``: the ids of
    the runs its name started (workflows whose ``mask`` matches it; module docstring), and
    ``"refused"``: those a ``queued_jobs`` quota refused, each ``{"workflow", "error", "message"}``."""
    body = await json_body(request, MAX_BODY)
    _fields(body, {"name", "location", "metadata", "owner"}, {"name"}, "A dataset")
    owner = body.get("owner", who.get("name", ""))
    if "owner" in body:
        if not isinstance(owner, str) or not owner:
            raise ApiError(400, "bad_request", f"'owner' must be a hub user name, got {owner!r}.")
        if not is_admin(who) and owner != who.get("name"):
            raise ApiError(403, "forbidden", "Only admins may create datasets for another user.")
        if owner != who.get("name"):
            await hub.user(owner)  # 404 no_such_user: a dataset nobody can see is no use
    info = await _call(w.catalog.create_dataset, body["name"], owner=owner, metadata=body.get("metadata"),
                       location=body.get("location"))
    return JSONResponse({**_dataset_json(info), **await start_masked(w, info, who, hub)}, 201)


@router.get("/datasets/{name}", tags=["datasets"])
async def get_dataset(name: str, owner: str | None = None, who: dict = Depends(caller),
                      w: Workload = Depends(workload)):
    """One dataset with the number of its files and their total size."""
    return _dataset_json(await own_dataset(name, who, w, owner))


@router.get("/datasets/{name}/files", tags=["datasets"])
async def list_files(name: str, after: int = 0, limit: int = PAGE_DEFAULT, state: str | None = None,
                     owner: str | None = None, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """A page of the dataset's files in registration order (ids above ``after``);
    ``next_after`` is the ``after`` of the next page, null on the last."""
    _whole(after, "after", 0)
    _whole(limit, "limit", 1, PAGE_MAX)
    if state is not None and state not in FILE_STATES:
        raise ApiError(400, "bad_request", f"Unknown file state {state!r} (states: {', '.join(FILE_STATES)}).")
    info = await own_dataset(name, who, w, owner)
    page = await _call(w.catalog.list_files, name, after=after, limit=limit, state=state, owner=info.owner)
    return {"files": [_file_json(f) for f in page.files], "next_after": page.next_after}


@router.post("/datasets/{name}/files", tags=["datasets"], openapi_extra=FILES_BODY)
async def register_files(name: str, request: Request, owner: str | None = None, who: dict = Depends(caller),
                         w: Workload = Depends(workload)):
    """Bulk registration into an ``OPEN`` dataset: ``{"files": [{"uri", "size", "checksum"?}]}``.
    All or none: one bad or duplicate entry refuses the whole list (400 naming it)."""
    info = await own_dataset(name, who, w, owner)
    body = await json_body(request, MAX_FILES_BODY)
    _fields(body, {"files"}, {"files"}, "A file registration")
    if not isinstance(body["files"], list):
        raise ApiError(400, "bad_request", "'files' must be a list of {uri, size, checksum} objects.")
    count = await _call(w.catalog.register_files, name, body["files"], owner=info.owner)
    return {"registered": count,
            "dataset": _dataset_json(await _call(w.catalog.get_dataset, name, owner=info.owner))}


@router.post("/datasets/{name}/close", tags=["datasets"])
async def close_dataset(name: str, owner: str | None = None, who: dict = Depends(caller),
                        w: Workload = Depends(workload), hub=Depends(get_hub)):
    """``OPEN -> CLOSED``: the dataset is complete (409 from any other state). The answer is
    the dataset with ``"runs"``: the ids of the runs closing it started (workflows whose
    ``mask`` matches its name and that have no run over it yet; module docstring), and
    ``"refused"`` as for ``POST datasets``."""
    info = await own_dataset(name, who, w, owner)
    await _call(w.catalog.close_dataset, name, owner=info.owner)
    started = await start_masked(w, info, who, hub)
    return {**_dataset_json(await _call(w.catalog.get_dataset, name, owner=info.owner)), **started}


# -- modules and workflows ----------------------------------------------------


@router.get("/modules", tags=["workflows"])
async def list_modules(who: dict = Depends(caller), w: Workload = Depends(workload)):
    """The built-in modules (``noop``, ``sleep``, ``md5``, ``fail``) and the added ones."""
    return {"modules": await _call(w.modules)}


@router.post("/modules", status_code=201, tags=["workflows"], openapi_extra=MODULE_BODY)
async def add_module(request: Request, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """Add a module spec (see ``skerry.workload.modules``); 409 if that name@version exists."""
    body = await json_body(request, MAX_BODY)
    return JSONResponse(await _call(w.add_module, body), 201)


@router.get("/workflows", tags=["workflows"])
async def list_workflows(who: dict = Depends(caller), w: Workload = Depends(workload)):
    """Every workflow, with its steps in order and its dataset name mask."""
    return {"workflows": await _call(w.workflows)}


@router.post("/workflows", status_code=201, tags=["workflows"], openapi_extra=WORKFLOW_BODY)
async def add_workflow(request: Request, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """Add a workflow spec (see ``skerry.workload.workflows``), checked against the known
    modules: unknown modules, pins of the wrong type and cycles are refused (400). It is
    the caller's, stored with each module pinned (``name@version``). A ``mask`` starts runs
    over the caller's datasets registered or closed from now on, not over those already there."""
    body = await json_body(request, MAX_BODY)
    return JSONResponse(await _call(w.add_workflow, body, who.get("name", "")), 201)


# -- runs, tasks, jobs --------------------------------------------------------


async def queued_quota(w: Workload, owner: str, who: dict, hub):
    """The ``check`` for ``start_run`` (None when no ``queued_jobs`` quota limits ``owner``):
    in the run's creating transaction, QuotaExceeded (403) if its jobs would pass a
    ``queued_jobs`` quota of its owner or of one of the owner's groups (the sum over the
    group's members). The hub is asked about groups here, before the lock is taken."""
    if not owner:
        return None
    store = shared_store()
    mine = who.get("kind") == "user" and who.get("name") == owner
    groups = who.get("groups", []) if mine else (await hub.user(owner)).get("groups", [])
    limits = [(k, n) for k, n, q in await _call(store.applying, owner, groups) if "queued_jobs" in q]
    if not limits:
        return None
    members = {}
    for kind, name in limits:
        if kind == "group":
            r = await hub.client.get(f"groups/{quote(name, safe='')}")
            r.raise_for_status()
            members[name] = r.json().get("users", [])
    registry = await _call(registry_of, w.catalog)

    def check(s, loaded, dataset: str) -> None:
        usage.quota_lock(s)  # SQLite: the transaction already holds the write lock
        adding = usage.planned_jobs(w.catalog, loaded, dataset, owner=owner, session=s)
        check_queued_jobs(store, owner, groups, adding, lambda kind, name: usage.queued_jobs(
            w.catalog, [owner] if kind == "user" else members[name], session=s, registry=registry))

    return check


async def start_masked(w: Workload, dataset, who: dict, hub) -> dict:
    """``{"runs": [ids], "refused": [...]}``: the runs ``dataset``'s name starts (module docstring)."""
    check = await queued_quota(w, dataset.owner, who, hub)
    refused: list[dict] = []
    runs = await _call(start_matching_runs, w.catalog, dataset.name, owner=dataset.owner, refused=refused,
                       check=check and (lambda s, loaded: check(s, loaded, dataset.name)))
    if runs:
        await _call(wake_scheduler)
    return {"runs": runs, "refused": refused}


@router.get("/runs", tags=["runs"])
async def list_runs(who: dict = Depends(caller), w: Workload = Depends(workload)):
    """The caller's runs (an admin: all), with their job counts."""
    return {"runs": await _call(w.runs, owner_filter(who))}


@router.post("/runs", status_code=201, tags=["runs"], openapi_extra=RUN_BODY)
async def create_run(request: Request, who: dict = Depends(caller), w: Workload = Depends(workload),
                     hub=Depends(get_hub)):
    """Start a run of a workflow over one of the caller's datasets: ``{"workflow", "dataset",
    "rank"?}`` (an admin may add ``"owner"``: whose dataset). One task per step and one ``OPEN``
    output dataset per step, in one transaction; the scheduler gives the tasks their jobs. The answer is the run.
    403 ``quota_exceeded`` (nothing created) if its jobs would pass a ``queued_jobs`` quota."""
    body = await json_body(request, MAX_BODY)
    _fields(body, {"workflow", "dataset", "rank", "owner"}, {"workflow", "dataset"}, "A run")
    for field in ("workflow", "dataset", "owner"):
        if field in body and (not isinstance(body[field], str) or not body[field]):
            raise ApiError(400, "bad_request", f"{field!r} must be a name.")
    rank = body.get("rank", 1)
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not 0 < rank < float("inf"):
        raise ApiError(400, "bad_request", f"'rank' must be a number > 0, got {rank!r}.")
    whose = body.get("owner") if is_admin(who) else who.get("name", "")
    if not is_admin(who) and body.get("owner", whose) != whose:
        raise ApiError(403, "forbidden", "Only admins may start runs over another user's datasets.")
    mine = who.get("kind") == "user" and not is_admin(who)  # a user's own dataset: checked in the one trip below
    owner = whose if mine else await _call(w.check_run_request, body["workflow"], body["dataset"], whose)
    check = await queued_quota(w, owner, who, hub)

    def started() -> dict:  # one trip to a worker thread: the run checked and made, the scheduler woken, its view
        if mine:
            w.check_run_request(body["workflow"], body["dataset"], owner)
        run_id = start_run(w.catalog, body["workflow"], body["dataset"], rank=rank, owner=owner, dataset_owner=owner,
                           check=check and (lambda s, loaded: check(s, loaded, body["dataset"])))
        wake_scheduler()
        return w.run(run_id, None)

    return JSONResponse(await _call(started), 201)


@router.get("/runs/{run_id}", tags=["runs"])
async def get_run(run_id: int, wait: float = 0, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """A run with each of its tasks (step, state, rank, job counts by state). With ``?wait=S``
    (seconds, at most ``WAIT_MAX``): answered when the run has ended, or after S seconds."""
    if not 0 <= wait <= WAIT_MAX:
        raise ApiError(400, "bad_request", f"'wait' must be a number of seconds from 0 to {WAIT_MAX}, got {wait!r}.")
    owner = owner_filter(who)
    ended = await until_ended(w, run_id, owner, wait) if wait else None
    return ended if ended is not None else await _call(w.run, run_id, owner)


async def until_ended(w: Workload, run_id: int, owner: str | None, wait: float) -> dict | None:
    """The view of run ``run_id`` once it has ended, or None after ``wait`` seconds. Its state
    (one row) is read every 1/50 of the time waited so far, from 1 to 50 ms, and the view in
    the same trip to a worker thread once it is final: a short run is answered a few ms after
    its end, a long wait costs the service at most 20 reads a second (where a client polling
    the whole run costs it a run's view, its jobs counted, each time)."""
    start = time.monotonic()
    while (view := await _call(w.ended_run, run_id, owner)) is None:
        waited = time.monotonic() - start
        if waited >= wait:
            return None
        await asyncio.sleep(min(wait - waited, max(0.001, min(0.05, waited / 50))))
    return view


@router.get("/tasks/{task_id}", tags=["runs"])
async def get_task(task_id: int, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """One task: step, module, datasets, state, rank and job counts by state."""
    return await _call(w.task, task_id, owner_filter(who))


@router.post("/tasks/{task_id}/rank", tags=["runs"], openapi_extra=RANK_BODY)
async def set_rank(task_id: int, request: Request, who: dict = Depends(caller),
                   w: Workload = Depends(workload)):
    """Change a task's rank (``{"rank": n}``, n > 0): its share of the pool from the next pick on."""
    body = await json_body(request, MAX_BODY)
    _fields(body, {"rank"}, {"rank"}, "A rank change")
    rank = body["rank"]
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not 0 < rank < float("inf"):
        raise ApiError(400, "bad_request", f"'rank' must be a number > 0, got {rank!r}.")
    return await _call(w.set_rank, task_id, rank, owner_filter(who))


@router.post("/tasks/{task_id}/cancel", tags=["runs"])
async def cancel_task(task_id: int, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """Cancel a task and its jobs that are not final (409 if the task is already final)."""
    return await _call(w.cancel, task_id, owner_filter(who))


@router.get("/jobs", tags=["runs"])
async def list_jobs(task: int | None = None, state: str | None = None, after: int = 0,
                    limit: int = PAGE_DEFAULT, who: dict = Depends(caller), w: Workload = Depends(workload)):
    """A page of jobs (of one ``task``, in one ``state``) in id order; ``next_after`` as for files.
    Each job carries its last attempt's ``log`` (where its log is, e.g. the output
    notebook of a notebook step) and ``error`` (a sentence), null when there are none."""
    if state is not None and state not in JOB_STATES:
        raise ApiError(400, "bad_request", f"Unknown job state {state!r} (states: {', '.join(JOB_STATES)}).")
    _whole(after, "after", 0)
    _whole(limit, "limit", 1, PAGE_MAX)
    return await _call(w.jobs, task=task, state=state, after=after, limit=limit, owner=owner_filter(who))


def wake_scheduler() -> None:
    """A run was started: the workload manager plans it now, not at its next look."""
    from skerry import config
    from skerry.workload.clusterask import wake

    data_dir = config.DATA_DIR.get()
    if data_dir is not None:  # a service without a platform (its tests): no manager to wake
        wake(data_dir)


def open_catalog(data_dir: str) -> Catalog:
    """The platform's catalog (``DIR/catalog.sqlite``), migrated to the newest schema."""
    catalog = Catalog.for_data_dir(data_dir)
    catalog.upgrade()
    return catalog
