"""The pipeline model (``skerry.Pipeline``), without a browser or a platform: building in
code, the workflow spec both ways, wiring offers, parameter forms, pools, and validation
messages on the field they are about, agreeing with the API's ``load_workflow``."""

import subprocess
import sys

import pytest

import skerry
from skerry.errors import ConfigError
from skerry.extensions.pipeline import (Pipeline, Problem, Step, check_param, field, module_summary,
                                        parameter_form, parse_param, problem_of)
from skerry.workload.builtins import builtin_registry
from skerry.workload.workflows import load_workflow

MD5OF = {"name": "md5of", "inputs": [{"name": "input", "type": "md5"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "callable": "skerry.workload.builtins:md5"}
COLLECT = {"name": "collect", "inputs": [{"name": "files", "kind": "multiple", "type": "md5"}],
           "outputs": [{"name": "summary", "type": "text", "file_name": "summary.txt"}],
           "callable": "skerry.workload.builtins:noop"}
SCALE = {"name": "scale", "inputs": [{"name": "input", "type": "file"}],
         "outputs": [{"name": "out", "type": "file", "file_name": "{name}"}],
         "parameters": {"factor": {"type": "int"}, "label": {"type": "str", "default": "x"},
                        "ratio": {"type": "float", "default": 0.5}, "dry": {"type": "bool", "default": False}},
         "callable": "skerry.workload.builtins:noop"}
TRAIN = {"name": "train", "inputs": [{"name": "input", "type": "any"}], "resources": {"gpu": 1, "memory": "1GiB"},
         "callable": "skerry.workload.builtins:noop"}


@pytest.fixture
def registry():
    r = builtin_registry()
    for m in (MD5OF, COLLECT, SCALE, TRAIN):
        r.add(m)
    return r


def sums() -> Pipeline:
    p = skerry.Pipeline("sums")
    p.step("sum", "md5", input="dataset")
    p.step("again", "md5of", input="sum.checksum")
    return p


def problems(p, registry) -> dict[str, str]:
    return dict(p.validate(registry))


def test_skerry_pipeline_is_exported_lazily():
    code = ("import sys, skerry; assert 'skerry.extensions.pipeline' not in sys.modules; "
            "assert 'ipywidgets' not in sys.modules; p = skerry.Pipeline('x'); "
            "assert 'ipywidgets' not in sys.modules; print(type(p).__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "skerry.extensions.pipeline"
    assert "Pipeline" in skerry.__all__


def test_a_pipeline_in_code_is_the_workflow_spec_the_api_takes(registry):
    p = sums()
    assert p.to_workflow() == {"name": "sums", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}},
        {"name": "again", "module": "md5of", "inputs": {"input": "sum.checksum"}}]}
    # the same with the constructor, and chained
    assert Pipeline("sums", [Step("sum", "md5", {"input": "dataset"}),
                             Step("again", "md5of", {"input": "sum.checksum"})]) == p
    assert Pipeline("sums").step("sum", "md5", input="dataset").step("again", "md5of", input="sum.checksum") == p
    assert p.validate(registry) == []
    assert load_workflow(p.to_workflow(), registry).order == ["sum", "again"]


def test_workflow_spec_round_trip(registry):
    p = Pipeline("full", mask="raw.*", description="everything")
    p.step("sum", "md5", input="dataset")
    p.step("all", "collect", files="sum.checksum", chunk=10, mode="stream", output="{dataset}.all")
    p.step("scaled", "scale", input="dataset", params={"factor": 3, "dry": True})
    spec = p.to_workflow()
    assert spec["mask"] == "raw.*" and spec["steps"][1]["chunk"] == 10 and spec["steps"][2]["params"]["factor"] == 3
    assert Pipeline.from_workflow(spec) == p
    assert Pipeline.from_workflow(spec).to_workflow() == spec
    # the API's workflow JSON carries the spec under "spec"
    assert Pipeline.from_workflow({"id": 1, "name": "full", "spec": spec}) == p
    assert p.validate(registry) == []
    with pytest.raises(ConfigError, match="no field 'pool'"):
        Pipeline.from_workflow({"name": "x", "steps": [{"name": "a", "module": "md5", "pool": "gpu"}]})


def test_wiring_offers_only_type_compatible_outputs(registry):
    p = sums()
    p.step("all", "collect")
    p.step("scaled", "scale")
    p.step("check", "noop")
    # md5 reads files: the dataset and scale's file output, no md5 output
    assert p.compatible_outputs("sum", "input", registry) == ["dataset", "scaled.out"]
    # md5of reads md5: sum's and again's outputs fit, scale's file output does not;
    # "again" cannot read itself
    assert p.compatible_outputs("again", "input", registry) == ["dataset", "sum.checksum"]
    assert p.compatible_outputs("all", "files", registry) == ["dataset", "sum.checksum", "again.checksum"]
    assert p.compatible_outputs("scaled", "input", registry) == ["dataset"]  # not its own output
    # an 'any' pin takes every output
    assert p.compatible_outputs("check", "input", registry) == \
        ["dataset", "sum.checksum", "again.checksum", "all.summary", "scaled.out"]
    # an output downstream of the step would close a cycle: not offered
    chain = Pipeline("w").step("a", "md5of", input="dataset").step("b", "md5of", input="a.checksum")
    chain.step("c", "md5of", input="b.checksum").step("d", "md5of")
    assert chain.compatible_outputs("a", "input", registry) == ["dataset", "d.checksum"]
    assert chain.compatible_outputs("d", "input", registry) == ["dataset", "a.checksum", "b.checksum", "c.checksum"]
    assert p.compatible_outputs("sum", "no_such_pin", registry) == []


def test_validation_messages_are_on_the_field_they_are_about(registry):
    # unknown module
    p = Pipeline("w").step("a", "md5", input="dataset").step("x", "nope")
    assert problems(p, registry) == {"steps.x.module": "Unknown module 'nope'."}
    # wrong pin type: md5 reads files, not md5
    p = Pipeline("w").step("a", "md5", input="dataset").step("b", "md5", input="a.checksum")
    assert problems(p, registry) == {
        "steps.b.inputs.input": "Input 'input' takes data of type 'file' but a.checksum gives 'md5'."}
    # a cycle: on the input pin that closes it
    p = Pipeline("w").step("a", "md5of", input="b.checksum").step("b", "md5of", input="a.checksum")
    assert problems(p, registry) == {"steps.a.inputs.input": "The steps form a cycle: a -> b -> a.",
                                     "steps": "No step reads the 'dataset': nothing would start the run."}
    p.step("first", "md5", input="dataset")
    assert problems(p, registry) == {"steps.a.inputs.input": "The steps form a cycle: a -> b -> a."}
    # bad parameter type, missing required parameter, unknown parameter: each on its own field
    p = Pipeline("w").step("s", "sleep", input="dataset", params={"seconds": "fast"})
    p.step("c", "scale", input="dataset", params={"ratio": 1, "nope": 2})
    assert problems(p, registry) == {
        "steps.s.params.seconds": "Parameter 'seconds' of module sleep@1: 'fast' is not of type float.",
        "steps.c.params.nope": "Module scale@1 has no parameter 'nope'.",
        "steps.c.params.factor": "Module scale@1 needs parameter 'factor' (int).",
    }
    # a required pin not wired; nothing reads the dataset; a step name used twice; a bad name
    assert problems(Pipeline("w").step("a", "md5"), registry) == {
        "steps.a.inputs.input": "Required input pin 'input' of md5@1 is not wired.",
        "steps": "No step reads the 'dataset': nothing would start the run."}
    assert problems(Pipeline("w").step("a", "noop"), registry) == {
        "steps": "No step reads the 'dataset': nothing would start the run."}
    p = Pipeline("w").step("a", "md5", input="dataset").step("a", "noop")
    assert problems(p, registry) == {"steps.a.name": "Step name 'a' is used twice."}
    assert list(problems(Pipeline("no good").step("a", "md5", input="dataset"), registry)) == ["name"]
    # several problems at once, each where it belongs
    p = Pipeline("w").step("a", "nope", input="dataset").step("s", "sleep", params={"seconds": True})
    assert set(problems(p, registry)) == {"steps.a.module", "steps.s.params.seconds"}


def test_validate_agrees_with_the_api(registry):
    """No problems exactly when ``load_workflow`` (what ``POST workflows`` runs) accepts it."""
    cases = [
        sums(),
        Pipeline("w").step("a", "md5", input="dataset").step("x", "nope"),
        Pipeline("w").step("a", "md5of", input="b.checksum").step("b", "md5of", input="a.checksum"),
        Pipeline("w").step("s", "sleep", params={"seconds": 1}),
        Pipeline("w").step("c", "scale", input="dataset", params={"factor": 2}),
        Pipeline("w").step("c", "scale", input="dataset"),
        Pipeline("w").step("a", "collect", files="dataset", chunk=5),
        Pipeline("w").step("a", "md5", input="dataset", chunk=5),
        Pipeline("w").step("a", "md5", input="dataset", output="{nope}"),
        Pipeline("w").step("a", "md5", input="dataset", mode="barrier"),
        Pipeline("w").step("a", "md5", input="nowhere.out"),
    ]
    for p in cases:
        found = p.validate(registry)
        try:
            load_workflow(p.to_workflow(), registry)
            accepted = True
        except ConfigError as e:
            accepted = False
            assert problem_of(e.message, p) in found, (p, found)
        assert (found == []) == accepted, (p, found)
    assert problems(Pipeline("w").step("a", "md5", input="dataset", chunk=5), registry) == {
        "steps.a.chunk": "Chunk splits the files of one wired input pin of kind 'multiple' into jobs: "
                         "this step has none."}
    assert problems(Pipeline("w").step("a", "md5", input="dataset").step("b", "md5", input="nowhere.out"),
                    registry) == {"steps.b.inputs.input": "Input 'input' reads from unknown step 'nowhere'."}


def test_pool_is_the_modules_and_a_mismatch_is_a_problem(registry):
    p = Pipeline("w").step("t", "train", input="dataset").step("s", "md5", input="dataset")
    assert p.pool("t", registry) == "gpu" and p.pool("s", registry) == "cpu"
    assert p.validate(registry) == []
    p.get("t").pool, p.get("s").pool = "cpu", "gpu"
    assert problems(p, registry) == {
        "steps.t.pool": "Module train@1 needs 1 GPU(s): its jobs run on the gpu pool.",
        "steps.s.pool": "Module md5@1 needs no GPU: its jobs run on the cpu pool."}
    p.get("t").pool, p.get("s").pool = "gpu", "cpu"
    assert p.validate(registry) == []
    assert "pool" not in str(p.to_workflow())  # the spec has no pool field: the platform derives it
    assert module_summary(registry.get("train"))["pool"] == "gpu"
    assert module_summary(registry.get("train"))["resources"] == "cpu 1, memory 1024 MiB, gpu 1"


def test_parameter_form_check_and_parse(registry):
    scale = registry.get("scale")
    form = parameter_form(scale)
    assert [(f.name, f.type, f.default, f.required) for f in form] == [
        ("factor", "int", None, True), ("label", "str", "x", False),
        ("ratio", "float", 0.5, False), ("dry", "bool", False, False)]
    assert check_param(scale, "factor", 3) is None
    assert check_param(scale, "factor", None) == "Module scale@1 needs parameter 'factor' (int)."
    assert check_param(scale, "factor", "3") == "Parameter 'factor' of module scale@1: '3' is not of type int."
    assert check_param(scale, "factor", True) == "Parameter 'factor' of module scale@1: True is not of type int."
    assert check_param(scale, "ratio", 2) is None and check_param(scale, "label", None) is None
    assert check_param(scale, "nope", 1) == "Module scale@1 has no parameter 'nope'."
    assert parse_param("int", " 3 ") == 3 and parse_param("float", "2.5") == 2.5
    assert parse_param("int", "") is None and parse_param("int", "abc") == "abc"
    assert parse_param("int", "2.5") == "2.5" and parse_param("bool", "true") is True
    assert parse_param("str", " hi ") == "hi" and parse_param("float", 1.5) == 1.5


def test_problem_of_reads_api_refusals():
    p = sums()
    exists = "A workflow named 'sums' already exists."
    assert problem_of(exists, p) == Problem("name", exists)
    assert problem_of("Workflow 'sums', step 'again': unknown module 'x'.", p) == \
        Problem("steps.again.module", "Unknown module 'x'.")
    assert problem_of("No dataset named 'alice.none'.", p) == Problem("dataset", "No dataset named 'alice.none'.")
    assert problem_of("Workflow 'sums': field steps.1.chunk: Input should be greater than or equal to 1.", p) == \
        Problem("steps.again.chunk", "Input should be greater than or equal to 1.")
    assert problem_of("Something else went wrong", p) == Problem("steps", "Something else went wrong.")
    assert field("a", "params", "x") == "steps.a.params.x" and field() == "steps"


def test_editing_steps(registry):
    p = sums()
    assert p.check_new_step("sum") == "There is a step named 'sum' already."
    assert p.check_new_step("1x").startswith("A step name is")
    assert p.new_step_name("md5@1") == "md5" and p.check_new_step("md5") is None
    p.step("md5", "md5", input="dataset")
    assert p.new_step_name("md5") == "md5_2"
    p.rename("sum", "first")
    assert p.get("again").inputs == {"input": "first.checksum"}
    p.remove("first")
    assert p.get("again").inputs == {} and [s.name for s in p.steps] == ["again", "md5"]
    with pytest.raises(KeyError, match="no step 'first'"):
        p.get("first")
