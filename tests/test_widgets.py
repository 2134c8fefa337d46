"""The builder and monitor widgets, driven from Python (no browser): widget values set,
buttons clicked with ``click()``, labels read.

The tests marked ``platform`` save, launch and monitor against a real platform (``skerry
up`` with a local Dask cluster): the builtin ``md5`` over 10 files of alice's home reaches
100% in the monitor; a monitor attached later by id sees the same; failed jobs show their
error class; Cancel and Rank act on the task.
"""

import hashlib
import html
import os

import ipywidgets as widgets
import pytest

from helpers import wait_for
from skerry.extensions.builder import Builder
from skerry.extensions.monitor import (Monitor, Throughput, counts, log_href, percent, run_final, run_state,
                                       sparkline)
from skerry.extensions.pipeline import Pipeline
from skerry.workload.builtins import builtin_registry
from skerry.workload.client import Client

API = "/services/skerry/api/v1"
POOLS = {"cpu": {"workers": 1, "threads": 2}, "gpu": None}  # read by conftest's platform fixture
MD5OF = {"name": "md5of", "inputs": [{"name": "input", "type": "md5"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "callable": "skerry.workload.builtins:md5"}
SCALE = {"name": "scale", "inputs": [{"name": "input", "type": "file"}],
         "outputs": [{"name": "out", "type": "file", "file_name": "{name}"}],
         "parameters": {"factor": {"type": "int"}, "label": {"type": "str", "default": "x"},
                        "ratio": {"type": "float", "default": 0.5}, "dry": {"type": "bool", "default": False}},
         "callable": "skerry.workload.builtins:noop"}


@pytest.fixture
def registry():
    r = builtin_registry()
    r.add(MD5OF)
    r.add(SCALE)
    return r


def add(b: Builder, module: str, name: str = "") -> str | None:
    b.new_module.value = module
    b.new_name.value = name
    b.add_button.click()
    return name or (list(b.step_views)[-1] if b.step_views else None)


def offered(dropdown) -> list[str]:
    return [value for _, value in dropdown.options if value]


# ---- the builder, offline -----------------------------------------------------------


def test_building_with_widgets(registry):
    b = Builder(registry=registry)
    assert "md5of@1" in b.modules.value and "factor: int (required)" in b.modules.value  # the module list
    assert b.new_module.options == tuple(m.ref for m in registry)
    add(b, "md5@1", "sum")
    add(b, "md5of@1", "again")
    add(b, "scale@1")
    assert list(b.step_views) == ["sum", "again", "scale"]
    # only type-compatible sources are offered: md5of reads md5, md5 and scale read files
    assert offered(b.step_views["again"].inputs["input"]) == ["dataset", "sum.checksum"]
    assert offered(b.step_views["sum"].inputs["input"]) == ["dataset", "scale.out"]
    b.step_views["sum"].inputs["input"].value = "dataset"
    b.step_views["again"].inputs["input"].value = "sum.checksum"
    # the other dropdowns follow the wiring: scale reads files (sum gives md5), and sum
    # may not read again's output (a cycle; the wrong type too)
    assert offered(b.step_views["scale"].inputs["input"]) == ["dataset"]
    assert offered(b.step_views["sum"].inputs["input"]) == ["dataset", "scale.out"]
    # parameter fields by type, with defaults; a required int without a value is text
    params = b.step_views["scale"].params
    assert [type(params[n]).__name__ for n in ("factor", "label", "ratio", "dry")] == \
        ["Text", "Text", "FloatText", "Checkbox"]
    assert (params["label"].value, params["ratio"].value, params["dry"].value) == ("x", 0.5, False)
    assert params["factor"].placeholder == "int, required"
    params["factor"].value = "abc"  # checked as typed, beside the field
    assert b.error("steps.scale.params.factor") == "Parameter 'factor' of module scale@1: 'abc' is not of type int."
    params["factor"].value = "4"
    assert b.error("steps.scale.params.factor") == ""
    params["dry"].value = True
    b.step_views["scale"].inputs["input"].value = "dataset"
    b.name.value = "mine"
    assert b.pipeline.to_workflow() == {"name": "mine", "steps": [
        {"name": "sum", "module": "md5@1", "inputs": {"input": "dataset"}},
        {"name": "again", "module": "md5of@1", "inputs": {"input": "sum.checksum"}},
        {"name": "scale", "module": "scale@1", "inputs": {"input": "dataset"}, "params": {"factor": 4, "dry": True}}]}
    assert b.validate() == [] and "valid" in b.message.value
    # a taken or bad step name is refused beside the button
    assert add(b, "md5@1", "sum") == "sum" and list(b.step_views) == ["sum", "again", "scale"]
    assert "already" in b.add_error.value
    # removing a step unwires what read from it
    b.step_views["sum"].remove_button.click()
    assert list(b.step_views) == ["again", "scale"] and b.step_views["again"].inputs["input"].value == ""
    assert b.pipeline.get("again").inputs == {}


def test_validation_messages_beside_the_fields(registry):
    p = Pipeline("w")
    p.step("a", "md5", input="dataset")
    p.step("b", "md5", input="a.checksum")  # wrong pin type
    p.step("c", "md5of", input="d.checksum").step("d", "md5of", input="c.checksum")  # a cycle
    p.step("s", "sleep", params={"seconds": "fast"})  # bad parameter type
    p.step("n", "scale", input="dataset")  # missing required parameter
    p.step("x", "nope")  # unknown module
    p.step("g", "md5", input="dataset", pool="gpu")  # a CPU module on the gpu pool
    b = Builder.from_pipeline(p, registry=registry)
    # wired in code to something not offered: still shown as wired, and the check says why
    assert b.step_views["b"].inputs["input"].value == "a.checksum"
    assert "a.checksum" not in b.pipeline.compatible_outputs("b", "input", registry)
    assert isinstance(b.step_views["s"].params["seconds"], widgets.Text)  # "fast" is no float: shown as text
    b.validate_button.click()
    assert b.error("steps.b.inputs.input") == "Input 'input' takes data of type 'file' but a.checksum gives 'md5'."
    assert b.error("steps.c.inputs.input") == "The steps form a cycle: c -> d -> c."
    assert b.error("steps.s.params.seconds") == "Parameter 'seconds' of module sleep@1: 'fast' is not of type float."
    assert b.error("steps.n.params.factor") == "Module scale@1 needs parameter 'factor' (int)."
    assert b.error("steps.x.module") == "Unknown module 'nope'."
    assert b.error_label("steps.x.module") is b.step_views["x"].error  # the step's own label
    assert b.error("steps.g.pool") == "Module md5@1 needs no GPU: its jobs run on the cpu pool."
    assert b.error("steps.a.inputs.input") == ""
    assert "see the fields marked" in b.message.value
    # fixing a field and validating again clears its message
    b.step_views["s"].params["seconds"].value = "2"
    b.step_views["g"].pool.value = "cpu"
    problems = dict(b.validate())
    assert "steps.s.params.seconds" not in problems and b.error("steps.s.params.seconds") == ""
    assert b.error("steps.g.pool") == "" and b.pipeline.get("s").params == {"seconds": 2.0}
    # a pipeline-wide problem goes under the buttons
    b = Builder.from_pipeline(Pipeline("w").step("a", "noop"), registry=registry)
    b.validate_button.click()
    assert "No step reads the &#x27;dataset&#x27;" in b.message.value
    # without a platform, Save and Launch say so
    b.save_button.click()
    assert "No platform" in b.message.value


def test_round_trip_builder_workflow_builder(registry):
    b = Builder(registry=registry)
    b.name.value, b.mask.value = "trip", "raw.*"
    add(b, "md5@1", "sum")
    add(b, "md5of@1", "again")
    add(b, "scale@1", "sc")
    add(b, "sleep@1", "nap")
    b.step_views["sum"].inputs["input"].value = "dataset"
    b.step_views["again"].inputs["input"].value = "sum.checksum"
    b.step_views["sc"].inputs["input"].value = "dataset"
    b.step_views["sc"].params["factor"].value = "7"
    b.step_views["sc"].params["ratio"].value = 1.5
    b.step_views["sc"].params["label"].value = "lbl"
    b.step_views["nap"].params["seconds"].value = 0.25
    assert b.validate() == []
    spec = b.pipeline.to_workflow()
    b2 = Builder.from_pipeline(Pipeline.from_workflow(spec), registry=registry)
    assert b2.pipeline.to_workflow() == spec and b2.pipeline == b.pipeline
    assert (b2.name.value, b2.mask.value) == ("trip", "raw.*")
    assert b2.step_views["again"].inputs["input"].value == "sum.checksum"
    sc = b2.step_views["sc"].params
    assert type(sc["factor"]).__name__ == "IntText" and sc["factor"].value == 7
    assert (sc["ratio"].value, sc["label"].value) == (1.5, "lbl")
    assert b2.step_views["nap"].params["seconds"].value == 0.25
    assert b2.step_views["nap"].inputs["input"].value == ""  # an optional pin left unwired
    # the builder's pipeline is a copy: changing it changes nothing shown
    b2.pipeline.step("more", "noop")
    assert list(b2.step_views) == ["sum", "again", "sc", "nap"]


# ---- the monitor's pieces, offline ------------------------------------------------------


def test_monitor_counts_percent_links_and_plot():
    task = {"jobs": {"by_state": {"defined": 1, "queued": 2, "running": 3, "succeeded": 4, "failed": 1,
                                  "retrying": 1, "cancelled": 1, "lost": 1}}, "state": "running"}
    assert counts(task) == {"succeeded": 4, "running": 3, "failed": 1, "queued": 5, "cancelled": 1, "total": 14}
    run = {"state": "running", "tasks": [task]}
    assert percent(run) == 42  # 6 of 14 ended
    assert percent({"state": "running", "tasks": [{"state": "running", "jobs": {
        "by_state": {"succeeded": 5}}}]}) == 99  # a run going on never shows 100%
    assert percent({"state": "succeeded", "tasks": []}) == 100
    # every task final: the state the platform is about to give the run
    ended = {"state": "running", "tasks": [{"state": "succeeded"}, {"state": "cancelled"}]}
    assert run_state(ended) == "cancelled" and run_final(ended)
    assert run_state({"state": "running", "tasks": [{"state": "failed"}, {"state": "running"}]}) == "running"
    # the server's root holds a folder per adaptor
    assert log_href("skerry://home/out/.skerry-logs/7.ipynb", "/user/alice/") == \
        "/user/alice/lab/tree/home/out/.skerry-logs/7.ipynb"
    assert log_href("skerry://hpc/run 1/.skerry-logs/7.1.log", "/user/alice/") == \
        "/user/alice/files/hpc/run%201/.skerry-logs/7.1.log"
    assert log_href("s3://bucket/x.log") is None and log_href(None) is None
    assert log_href("skerry://home") is None  # an adaptor is no log
    t = Throughput()
    for second, ended_jobs in [(0, 0), (1, 5), (2, 5), (4, 15)]:
        t.add(second, ended_jobs)
    assert t.rates() == [5.0, 0.0, 5.0]
    svg = sparkline(t.rates())
    assert svg.startswith("<svg") and "5.0 jobs/s" in svg and "polyline" in svg
    assert "no throughput yet" in sparkline([])


# ---- on a real platform -------------------------------------------------------------


@pytest.fixture(scope="module")
def alice(platform):
    platform.create_user("alice")
    return Client(platform.url, platform.user_token("alice"))


def dataset(platform, client, name: str, files: int = 10) -> str:
    """``files`` files in alice's home folder ``name``, registered in a CLOSED dataset."""
    folder = platform.data_dir / "users" / "alice" / name
    folder.mkdir(parents=True)
    entries = []
    for i in range(files):
        data = os.urandom(100 + i)
        (folder / f"f{i:02d}.bin").write_bytes(data)
        entries.append({"uri": f"skerry://home/{name}/f{i:02d}.bin", "size": len(data),
                        "checksum": hashlib.md5(data).hexdigest()})
    platform.give(folder, "alice")  # her files, as if she had written them
    client.create_dataset(name, location=f"skerry://home/{name}")
    client.register_files(name, entries)
    client.close_dataset(name)
    return name


def until_final(monitor: Monitor, timeout: float = 120) -> dict:
    return wait_for(lambda: (run := monitor.refresh()) and monitor.final and run, timeout, 0.3,
                    f"run {monitor.run_id} to end")


@pytest.mark.platform
def test_save_launch_and_monitor_to_100_percent(platform, alice):
    dataset(platform, alice, "sums.in")
    b = Builder(alice)
    assert "sums.in" in b.dataset.options and "md5@1" in b.new_module.options  # the user's datasets, the modules
    b.name.value = "widget-sums"
    add(b, "md5@1", "sum")
    b.launch_button.click()  # not wired: refused beside the pin, nothing saved
    assert b.error("steps.sum.inputs.input") == "Required input pin 'input' of md5@1 is not wired."
    assert b.run_id is None and "widget-sums" not in [w["name"] for w in alice.workflows()]
    b.step_views["sum"].inputs["input"].value = "dataset"
    b.save_button.click()
    assert "Saved workflow" in b.message.value
    saved = next(w for w in alice.workflows() if w["name"] == "widget-sums")
    assert Pipeline.from_workflow(saved) == b.pipeline
    b.save_button.click()  # the API's refusal, beside the name
    assert b.error("name") == "A workflow named 'widget-sums' already exists."
    b.dataset.value = "sums.in"
    b.launch_button.click()  # saved already: runs it
    assert b.run_id is not None and b.monitor is not None and b.run_box.children == (b.monitor,)
    until_final(b.monitor)
    b.monitor.stop()
    assert b.monitor.state == "succeeded" and b.monitor.percent == 100 and "100%" in b.monitor.header.value
    row = next(iter(b.monitor.rows.values()))
    assert row.bars["succeeded"].value == row.bars["succeeded"].max == 10
    assert row.bars["failed"].value == row.bars["queued"].value == row.bars["running"].value == 0
    assert row.cancel_button.disabled and "<svg" in b.monitor.plot.value
    # reopened: a new monitor attaches by id and sees the ended run at once, without polling
    again = Monitor(alice, b.run_id)
    assert again.final and again.percent == 100 and not again.polling
    assert again.rows[row.task_id].counts.value.startswith("10 succeeded")
    # launching the same pipeline after changing it is refused beside the name
    b.step_views["sum"].inputs["input"].value = ""
    add(b, "noop@1", "extra")
    b.step_views["extra"].inputs["input"].value = "dataset"
    b.step_views["sum"].inputs["input"].value = "dataset"
    assert b.launch() is None and "saved with other steps" in b.error("name")


@pytest.mark.platform
def test_background_poll_follows_the_run_and_stops(platform, alice):
    dataset(platform, alice, "poll.in")
    p = Pipeline("widgets-poll").step("sum", "md5", input="dataset")
    run_id = p.launch(alice, "poll.in")
    monitor = Monitor(alice, run_id, poll_s=0.2)
    wait_for(lambda: not monitor.polling, 120, 0.2, "the poll to stop")
    assert monitor.final and monitor.percent == 100 and monitor.state == "succeeded"
    monitor.close()


@pytest.mark.platform
def test_failed_jobs_are_listed_with_their_error_class_and_sentence(platform, alice):
    dataset(platform, alice, "fail.in", files=3)
    # bad_input is never retried (the default retry rules): the jobs fail at once
    p = Pipeline("widgets-failing").step("boom", "fail", input="dataset", params={"error": "bad_input"})
    monitor = Monitor(alice, p.launch(alice, "fail.in"), poll_s=None)
    until_final(monitor)
    assert monitor.state == "failed" and monitor.percent == 100
    row = next(iter(monitor.rows.values()))
    assert row.bars["failed"].value == 3
    assert monitor.failed.value.count("<td>bad_input</td>") == 3 and "boom" in monitor.failed.value
    assert [job["error_class"] for _, job in monitor.failed_jobs] == ["bad_input"] * 3
    assert "skerry-monitor" in monitor._dom_classes  # the name pages and browser tests find it by
    assert all(job["error"] and html.escape(job["error"]) in monitor.failed.value for _, job in monitor.failed_jobs)


@pytest.mark.platform
def test_cancel_and_rank_buttons(platform, alice):
    dataset(platform, alice, "slow.in")
    p = Pipeline("widgets-slow").step("nap", "sleep", input="dataset", params={"seconds": 5.0})
    monitor = Monitor(alice, p.launch(alice, "slow.in"), poll_s=None)
    row = next(iter(monitor.rows.values()))
    row.rank.value = 5.0
    row.rank_button.click()
    assert row.message.value == "rank set to 5" and alice.task(row.task_id)["rank"] == 5.0
    assert "rank 5" in row.title.value
    row.cancel_button.click()
    assert row.message.value == "cancelled" and alice.task(row.task_id)["state"] == "cancelled"
    until_final(monitor)
    assert monitor.state == "cancelled" and "cancelled" in monitor.header.value and row.cancel_button.disabled
    assert monitor.percent == 100
    row.cancel_button.click()  # already final: the API's refusal shows beside the button
    assert "color:#c62828" in row.message.value
