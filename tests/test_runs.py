"""Runs and the planner on a real catalog (SQLite, and a real PostgreSQL server), without
Dask: jobs appear as input lands."""

import logging

import pytest
from sqlalchemy import func, select

from skerry.workload.catalog import Catalog
from skerry.workload.models import Dataset, Job, JobInput, Run, Task
from skerry.workload.runs import Planner, RunError, start_matching_runs, start_run

MD5OF = {"name": "md5of", "version": "1", "inputs": [{"name": "input", "type": "md5"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "callable": "skerry.workload.builtins:md5"}
CONCAT = {"name": "concat", "version": "1",
          "inputs": [{"name": "files", "kind": "multiple", "type": "md5"}],
          "outputs": [{"name": "all", "type": "file", "file_name": "all.txt"}],
          "callable": "skerry.workload.builtins:noop"}
GPUSUM = {"name": "gpusum", "version": "1", "inputs": [{"name": "input", "type": "file", "pattern": "*.dat"}],
          "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
          "resources": {"gpu": 1}, "callable": "skerry.workload.builtins:md5"}


@pytest.fixture
def cat(catalog_url):
    c = Catalog(catalog_url)
    c.upgrade()
    for spec in (MD5OF, CONCAT, GPUSUM):
        c.add_module(spec["name"], "1", spec)
    c.create_dataset("raw", location="skerry://home/raw")
    return c


def files(cat, name, names):
    cat.register_files(name, [{"uri": f"skerry://home/{name}/{n}", "size": 1} for n in names])


def counts(cat, model=Task):
    with cat.session() as s:
        return s.execute(select(model.id, model.state)).all()


def jobs_of(cat, step):
    with cat.session() as s:
        rows = s.execute(select(Job.id, JobInput.file_id).join(JobInput, JobInput.job_id == Job.id)
                         .join(Task, Task.id == Job.task_id).where(Task.step == step)
                         .order_by(Job.id, JobInput.position)).all()
    out = {}
    for job, f in rows:
        out.setdefault(job, []).append(f)
    return list(out.values())


def succeed_all(cat, step):
    """What the scheduler does when a job succeeds: its output registered with it."""
    with cat.session() as s:
        rows = s.execute(select(Job.id, Dataset.location).join(Task, Task.id == Job.task_id)
                         .join(Dataset, Dataset.id == Task.output_dataset_id)
                         .where(Task.step == step, Job.state == "queued")).all()
    for job, location in rows:
        cat.start_attempt(job, worker="w")
        cat.register_outputs_and_succeed(job, [{"uri": f"{location}/out{job}.md5", "size": 1}])
    with cat.writing() as s:
        s.execute(Task.__table__.update().where(Task.step == step).values(state="succeeded"))


WORKFLOW = {"name": "sums", "steps": [
    {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}},
    {"name": "again", "module": "md5of", "inputs": {"input": "sum.checksum"}},
    {"name": "all", "module": "concat", "inputs": {"files": "again.checksum"}}]}


def test_a_run_makes_one_task_and_one_output_dataset_per_step(cat):
    cat.add_workflow("sums", WORKFLOW)
    run = start_run(cat, "sums", "raw", rank=3, owner="alice")
    with cat.session() as s:
        tasks = s.execute(select(Task.step, Task.rank, Task.state, Task.input_dataset_id, Task.output_dataset_id)
                          .order_by(Task.id)).all()
        datasets = {d.id: (d.name, d.state, d.location, d.owner) for d in s.execute(select(Dataset)).scalars()}
        params = s.get(Run, run).params
        assert params["pins"] == {"sum": "input", "again": "input", "all": "files"}
        # the workflow as it resolved at the start: every module name@version
        assert [st["module"] for st in params["workflow"]["steps"]] == ["md5@1", "md5of@1", "concat@1"]
    assert [t.step for t in tasks] == ["sum", "again", "all"]
    assert all(t.rank == 3 and t.state == "defined" for t in tasks)
    assert datasets[tasks[0].input_dataset_id][0] == "raw"
    assert tasks[1].input_dataset_id == tasks[0].output_dataset_id
    assert tasks[2].input_dataset_id == tasks[1].output_dataset_id
    assert datasets[tasks[0].output_dataset_id] == ("raw.sum", "OPEN", "skerry://home/raw.sum", "alice")


@pytest.mark.parametrize("why, call, words", [
    ("unknown workflow", lambda c: start_run(c, "nope", "raw"), "no workflow named 'nope'"),
    ("unknown dataset", lambda c: start_run(c, "sums", "nope"), "no dataset named 'nope'"),
    ("bad rank", lambda c: start_run(c, "sums", "raw", rank=0), "rank must be a number > 0"),
    ("bad output location", lambda c: start_run(c, "sums", "raw", output_location="/tmp/x"), "skerry://"),
])
def test_bad_runs_are_refused_and_write_nothing(cat, why, call, words):
    cat.add_workflow("sums", WORKFLOW)
    with pytest.raises(RunError, match=words):
        call(cat)
    assert counts(cat, Run) == [] and counts(cat, Task) == []
    with cat.session() as s:
        assert s.execute(select(Dataset.name)).scalars().all() == ["raw"]


def test_a_second_run_over_the_same_dataset_is_refused_whole(cat):
    cat.add_workflow("sums", WORKFLOW)
    cat.create_dataset("raw.again")  # the second step's output name is taken
    with pytest.raises(RunError, match="output dataset 'raw.again' already exists"):
        start_run(cat, "sums", "raw")
    assert counts(cat, Run) == [] and counts(cat, Task) == []
    with cat.session() as s:
        assert sorted(s.execute(select(Dataset.name)).scalars()) == ["raw", "raw.again"]


def test_a_dataset_without_location_needs_an_output_location(cat):
    cat.add_workflow("sums", WORKFLOW)
    cat.create_dataset("bare")
    with pytest.raises(RunError, match="no location"):
        start_run(cat, "sums", "bare")
    start_run(cat, "sums", "bare", output_location="skerry://home/out")
    with cat.session() as s:
        assert s.execute(select(Dataset.location).where(Dataset.name == "bare.sum")).scalar_one() == \
            "skerry://home/out/bare.sum"


def test_streaming_steps_get_jobs_as_files_land_and_barriers_wait(cat):
    cat.add_workflow("sums", WORKFLOW)
    run = start_run(cat, "sums", "raw")
    planner = Planner(cat)
    files(cat, "raw", ["a.dat", "b.dat"])  # the dataset is still OPEN: the first step streams
    changed = planner.advance()
    assert len(jobs_of(cat, "sum")) == 2 and len(changed) == 1
    files(cat, "raw", ["c.dat"])
    planner.advance()
    assert len(jobs_of(cat, "sum")) == 3  # each file in exactly one job
    assert not planner.complete(min(changed))  # the dataset may still grow
    cat.close_dataset("raw")
    planner.advance()
    assert planner.complete(min(changed))
    # two upstream jobs succeed: the streaming step gets their two outputs, the barrier nothing yet
    with cat.session() as s:
        first_two = s.execute(select(Job.id).join(Task).where(Task.step == "sum").order_by(Job.id)
                              .limit(2)).scalars().all()
    for job in first_two:
        cat.start_attempt(job, worker="w")
        cat.register_outputs_and_succeed(job, [{"uri": f"skerry://home/raw.sum/{job}.md5", "size": 1}])
    planner.advance()
    assert len(jobs_of(cat, "again")) == 2 and jobs_of(cat, "all") == []
    succeed_all(cat, "sum")
    planner.advance()
    assert len(jobs_of(cat, "again")) == 3 and jobs_of(cat, "all") == []
    succeed_all(cat, "again")
    planner.advance()
    assert [len(j) for j in jobs_of(cat, "all")] == [3]  # a multiple pin: all files in one job
    succeed_all(cat, "all")
    assert planner.finish_runs() == [run]
    with cat.session() as s:
        assert s.get(Run, run).state == "succeeded"
        assert set(s.execute(select(Dataset.state).where(Dataset.name != "raw")).scalars()) == {"CLOSED"}


def test_chunks_patterns_and_gpu_pool(cat):
    cat.add_workflow("gpu", {"name": "gpu", "steps": [
        {"name": "sum", "module": "gpusum", "inputs": {"input": "dataset"}},
        {"name": "all", "module": "concat", "inputs": {"files": "sum.checksum"}, "chunk": 2}]})
    start_run(cat, "gpu", "raw")
    files(cat, "raw", ["a.dat", "b.dat", "notes.txt", "c.dat"])
    planner = Planner(cat)
    planner.advance()
    with cat.session() as s:
        pools = s.execute(select(Job.pool, func.count()).group_by(Job.pool)).all()
    assert pools == [("gpu", 3)]  # the pattern leaves notes.txt out; gpu: 1 sends it to the gpu pool
    with cat.session() as s:
        jobs = s.execute(select(Job.id).order_by(Job.id)).scalars().all()
    for job in jobs[:3]:
        cat.start_attempt(job, worker="w")
        cat.register_outputs_and_succeed(job, [{"uri": f"skerry://home/raw.sum/{job}.md5", "size": 1}])
    planner.advance()
    assert [len(j) for j in jobs_of(cat, "all")] == [2]  # a full chunk streams; the partial one waits
    cat.close_dataset("raw")
    with cat.writing() as s:
        s.execute(Task.__table__.update().where(Task.step == "sum").values(state="succeeded"))
    planner.advance()
    assert [len(j) for j in jobs_of(cat, "all")] == [2, 1]


MASKED = {**WORKFLOW, "name": "masked", "mask": "raw.run-*"}
EVERYTHING_RAW = {"name": "greedy", "mask": "raw*", "steps": [  # its outputs (raw.run-1.total) match it too
    {"name": "total", "module": "md5", "inputs": {"input": "dataset"}}]}


def runs_of(cat):
    with cat.session() as s:
        return s.execute(select(Run.id, Run.workflow_id, Run.owner, Run.state).order_by(Run.id)).all()


def test_a_dataset_whose_name_matches_a_mask_starts_a_run_owned_by_its_owner(cat):
    cat.add_workflow("masked", MASKED, owner="alice")
    cat.add_workflow("sums", {**WORKFLOW, "mask": None}, owner="alice")  # no mask: never started by a name
    cat.create_dataset("raw.run-1", owner="alice", location="skerry://home/raw.run-1")
    started = start_matching_runs(cat, "raw.run-1")
    assert len(started) == 1
    with cat.session() as s:
        run = s.get(Run, started[0])
        assert (run.owner, run.state, s.get(Dataset, run.input_dataset_id).name) == ("alice", "running", "raw.run-1")
        tasks = s.execute(select(Task.step, Task.rank).where(Task.run_id == run.id).order_by(Task.id)).all()
    assert tasks == [("sum", 1.0), ("again", 1.0), ("all", 1.0)]


def test_a_name_no_mask_matches_starts_nothing(cat):
    cat.add_workflow("masked", MASKED)
    cat.create_dataset("raw.other", location="skerry://home/raw.other")
    assert start_matching_runs(cat, "raw.other") == []
    assert start_matching_runs(cat, "raw") == []  # the fixture's dataset: no mask matches it either
    assert runs_of(cat) == []
    with pytest.raises(RunError, match="no dataset named 'nope'"):
        start_matching_runs(cat, "nope")


def test_registering_then_closing_starts_each_run_once(cat):
    cat.add_workflow("masked", MASKED)
    cat.add_workflow("greedy", EVERYTHING_RAW)
    cat.create_dataset("raw.run-2", location="skerry://home/raw.run-2")
    first = start_matching_runs(cat, "raw.run-2")  # as the API does on registration
    assert len(first) == 2
    cat.close_dataset("raw.run-2")
    assert start_matching_runs(cat, "raw.run-2") == []  # and on close
    with cat.writing() as s:  # a run in any state counts, a final one too
        s.execute(Run.__table__.update().values(state="cancelled"))
    assert start_matching_runs(cat, "raw.run-2") == []
    assert [r.id for r in runs_of(cat)] == first


def test_a_runs_output_datasets_never_start_runs(cat):
    cat.add_workflow("greedy", EVERYTHING_RAW)
    cat.create_dataset("raw.run-3", location="skerry://home/raw.run-3")
    [run] = start_matching_runs(cat, "raw.run-3")
    with cat.session() as s:
        outputs = s.execute(select(Dataset.name).join(Task, Task.output_dataset_id == Dataset.id)).scalars().all()
    assert outputs == ["raw.run-3.total"]  # matches "raw*"
    assert start_matching_runs(cat, "raw.run-3.total") == []
    cat.close_dataset("raw.run-3.total")
    assert start_matching_runs(cat, "raw.run-3.total") == []
    assert [r.id for r in runs_of(cat)] == [run]


def test_a_workflow_that_cannot_run_is_skipped_with_a_warning(cat, caplog):
    cat.add_workflow("wrongpins", {"name": "wrongpins", "mask": "raw.*", "steps": [  # md5 reads files
        {"name": "a", "module": "md5", "inputs": {"input": "dataset"}},
        {"name": "b", "module": "md5", "inputs": {"input": "a.checksum"}}]})
    cat.add_workflow("masked", MASKED)
    cat.create_dataset("raw.run-4", location="skerry://home/raw.run-4")
    cat.create_dataset("raw.run-5")  # no location: nowhere for a run's outputs
    with caplog.at_level(logging.WARNING, logger="skerry.workload"):
        started = start_matching_runs(cat, "raw.run-4")
        assert start_matching_runs(cat, "raw.run-5") == []
    assert len(started) == 1 and runs_of(cat)[0].id == started[0]  # the runnable workflow still ran
    warnings = [r.getMessage() for r in caplog.records if r.name == "skerry.workload"]
    assert any("'wrongpins'" in m and "'raw.run-4'" in m and "takes data of type 'file'" in m for m in warnings)
    assert any("'masked'" in m and "'raw.run-5'" in m and "no location" in m for m in warnings)
    with cat.session() as s:
        assert s.execute(select(Dataset.state).where(Dataset.name == "raw.run-5")).scalar_one() == "OPEN"
        assert s.execute(select(func.count()).select_from(Task)).scalar() == 3  # masked's three steps only


# ---- runs execute their owner's choices only ----


def test_a_mask_starts_runs_over_its_owners_datasets_only(cat):
    """Alice's mask matches bob's new dataset names: it starts nothing over them (it would run
    her code with his storage); bob's own workflow with the same mask does."""
    cat.add_workflow("alice-grab", {**MASKED, "name": "alice-grab", "mask": "*"}, owner="alice")
    cat.create_dataset("raw.run-9", owner="bob", location="skerry://home/raw.run-9")
    assert start_matching_runs(cat, "raw.run-9", owner="bob") == []
    assert runs_of(cat) == []
    cat.add_workflow("bob-sums", {**MASKED, "name": "bob-sums"}, owner="bob")
    [run] = start_matching_runs(cat, "raw.run-9", owner="bob")
    with cat.session() as s:
        started = s.get(Run, run)
        assert started.owner == "bob" and cat.get_workflow("bob-sums").id == started.workflow_id
    # alice's own dataset of the same name is hers alone, and her mask starts over it
    cat.create_dataset("raw.run-9", owner="alice", location="skerry://home/raw.run-9")
    [mine] = start_matching_runs(cat, "raw.run-9", owner="alice")
    with cat.session() as s:
        assert s.get(Run, mine).owner == "alice"
        outputs = s.execute(select(Dataset.name, Dataset.owner).join(Task, Task.output_dataset_id == Dataset.id)
                            .where(Task.run_id == mine)).all()
    assert {owner for _, owner in outputs} == {"alice"}  # her outputs, beside bob's of the same names


def test_a_run_keeps_the_module_versions_it_started_with(cat):
    """Bob's workflow names ``bob-mod`` without a version; alice then adds ``bob-mod@2``: his
    running run keeps version 1, and a later run of his stored workflow too."""
    bob_mod = {**MD5OF, "name": "bob-mod"}
    cat.add_module("bob-mod", "1", bob_mod)
    wf = {"name": "bobs", "steps": [{"name": "s", "module": "bob-mod", "inputs": {"input": "dataset"}}]}
    from skerry.workload.runs import registry_of
    from skerry.workload.workflows import load_workflow

    cat.add_workflow("bobs", load_workflow(wf, registry_of(cat)).pinned(), owner="bob")
    assert cat.get_workflow("bobs").spec["steps"][0]["module"] == "bob-mod@1"
    files(cat, "raw", ["a.md5"])
    run = start_run(cat, "bobs", "raw", owner="bob")
    cat.add_module("bob-mod", "2", {**bob_mod, "version": "2", "resources": {"gpu": 1}})  # alice's
    planner = Planner(cat)
    planner.advance()
    with cat.session() as s:
        pools = s.execute(select(Job.pool).join(Task, Task.id == Job.task_id).where(Task.run_id == run)).all()
    assert pools == [("cpu",)]  # version 1's resources, not version 2's GPU
    cat.create_dataset("raw2", owner="bob", location="skerry://home/raw2")
    again = start_run(cat, "bobs", "raw2", owner="bob", dataset_owner="bob")
    with cat.session() as s:
        assert s.get(Run, again).params["workflow"]["steps"][0]["module"] == "bob-mod@1"


def test_the_kept_module_registry_knows_a_module_added_after_it_was_read(cat):
    """``registry_of`` keeps a catalog's registry while its modules stay the same: one added
    since is there the next time, and a workflow naming it starts a run."""
    from skerry.workload.runs import registry_of

    first = registry_of(cat)
    assert registry_of(cat) is first and "md5of@1" in first and "later@1" not in first
    cat.add_module("later", "1", {**MD5OF, "name": "later"})
    assert "later@1" in registry_of(cat) and "later@1" not in first
    cat.add_workflow("laters", {"name": "laters", "steps": [{"name": "s", "module": "later",
                                                              "inputs": {"input": "dataset"}}]})
    files(cat, "raw", ["a.md5"])
    run = start_run(cat, "laters", "raw")
    with cat.session() as s:
        assert s.get(Run, run).params["workflow"]["steps"][0]["module"] == "later@1"


def test_a_big_task_is_planned_a_page_at_a_time_each_file_once_and_whole_only_after_all(cat, monkeypatch):
    """The scheduler dispatches between pages: the first jobs exist before the last are
    planned. A page skipped by the step's pattern is passed over, not waited on."""
    import skerry.workload.runs as runs

    monkeypatch.setattr(runs, "PLAN_STEP", 10)
    cat.add_workflow("gpusums", {"name": "gpusums", "steps": [
        {"name": "sum", "module": "gpusum", "inputs": {"input": "dataset"}}]})
    names = [f"n{i:03d}.txt" for i in range(12)] + [f"f{i:03d}.dat" for i in range(23)]  # a first page of no .dat
    files(cat, "raw", names)
    cat.close_dataset("raw")
    start_run(cat, "gpusums", "raw")
    planner = Planner(cat)
    [task] = [t for t, _ in counts(cat)]
    calls, sizes = 0, []
    while True:
        changed = planner.advance()
        calls += 1
        sizes.append(len(jobs_of(cat, "sum")))
        if not planner.behind:
            break
        assert not planner.complete(task)  # more may come
        assert calls < 10
    assert sizes == [0, 8, 18, 23]  # 10 files a page: the first all .txt, the pattern's leaves out
    assert planner.complete(task) and task in changed
    jobs = jobs_of(cat, "sum")
    with cat.session() as s:
        dat = set(s.execute(select(runs.File.id).where(runs.File.uri.like("%.dat"))).scalars())
    assert sorted(f for [f] in jobs) == sorted(dat)  # each .dat file in exactly one job, nothing else
    assert [f for [f] in jobs] == sorted(dat)  # the jobs' ids follow their files' order
    assert planner.advance() == set() and len(jobs_of(cat, "sum")) == 23  # nothing planned twice


def test_a_paged_task_whose_input_closes_mid_pass_is_whole_only_after_a_pass_from_the_first_file(cat, monkeypatch):
    import skerry.workload.runs as runs

    monkeypatch.setattr(runs, "PLAN_STEP", 10)
    cat.add_workflow("one", {"name": "one", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]})
    files(cat, "raw", [f"a{i:02d}" for i in range(15)])
    start_run(cat, "one", "raw")  # md5 streams: jobs come while the dataset is open
    planner = Planner(cat)
    [task] = [t for t, _ in counts(cat)]
    planner.advance()
    assert len(jobs_of(cat, "sum")) == 10 and planner.behind
    files(cat, "raw", ["late"])
    cat.close_dataset("raw")  # closed in the middle of a pass
    planner.advance()  # the pass ends: it began while the dataset was open
    assert len(jobs_of(cat, "sum")) == 16 and not planner.complete(task)
    planner.advance()  # a pass that began once it was closed
    assert planner.complete(task) and len(jobs_of(cat, "sum")) == 16


def test_a_planner_taking_over_a_half_planned_task_plans_each_file_once(cat, monkeypatch):
    """A restarted scheduler's planner knows nothing of the pages planned before: it reads
    from the catalog which files the task's jobs hold, and plans the rest, each once."""
    import skerry.workload.runs as runs

    monkeypatch.setattr(runs, "PLAN_STEP", 10)
    cat.add_workflow("one", {"name": "one", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]})
    files(cat, "raw", [f"a{i:02d}" for i in range(25)])
    start_run(cat, "one", "raw")
    first = Planner(cat)
    first.advance()
    first.advance()
    assert len(jobs_of(cat, "sum")) == 20 and first.behind
    files(cat, "raw", ["late"])  # above every file planned so far
    cat.close_dataset("raw")
    after = Planner(cat)  # the scheduler restarted
    [task] = [t for t, _ in counts(cat)]
    for _ in range(10):
        after.advance()
        if after.complete(task):
            break
    jobs = [f for [f] in jobs_of(cat, "sum")]
    assert len(jobs) == 26 and len(set(jobs)) == 26  # every file in exactly one job
    assert jobs == sorted(jobs)  # the jobs' ids follow their files' order


@pytest.mark.parametrize("catalog_url", ["sqlite", "postgresql"], indirect=True)
def test_a_cancel_while_a_page_is_planned_leaves_no_job_of_the_task_queued(cat, monkeypatch):
    """Her cancel (the REST API's transaction, in another process) that comes while the
    planner plans a page of her task either waits for the page and cancels its jobs too, or
    comes first and the page makes none: a cancelled task never keeps a queued job. The
    cancel is sent from another connection after the planner has read the run's tasks and
    before it writes the page's jobs."""
    import threading

    import skerry.workload.runs as runs
    from skerry.hub.service.workload import Workload

    cat.add_workflow("one", {"name": "one", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]})
    files(cat, "raw", [f"a{i:02d}" for i in range(30)])
    cat.close_dataset("raw")
    start_run(cat, "one", "raw")
    [(task, _)] = counts(cat)
    cancelled, plan_jobs = [], runs.plan_jobs
    cancel = threading.Thread(target=lambda: cancelled.append(Workload(cat).cancel(task, None)))

    def page_with_a_cancel_beside(*args, **kwargs):
        if cancel.ident is None:  # at the first page
            cancel.start()
            cancel.join(1)  # it ends here, or waits for the page's transaction
        return plan_jobs(*args, **kwargs)

    monkeypatch.setattr(runs, "plan_jobs", page_with_a_cancel_beside)
    Planner(cat).advance()
    cancel.join(30)
    assert cancelled and cancelled[0]["state"] == "cancelled"
    with cat.session() as s:
        states = dict(s.execute(select(Job.state, func.count()).where(Job.task_id == task).group_by(Job.state)).all())
    assert "queued" not in states, f"jobs of the cancelled task: {states}"
