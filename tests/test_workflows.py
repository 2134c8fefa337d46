"""Workflow specs: the two-step workflow of issue 4 (md5, then a module consuming its
outputs) loads and runs its steps in order; bad workflows are refused with a sentence;
dataset-name masks; streaming versus barrier steps."""

import sys

import fsspec
import pytest

from skerry.errors import ConfigError
from skerry.workload.builtins import builtin_registry
from skerry.workload.executors import run_job
from skerry.workload.workflows import load_workflow, matching_workflows

# joins every checksum file it gets into one file, in the order given (a real subprocess)
CONCAT = {
    "name": "concat", "version": "1.0",
    "inputs": [{"name": "sums", "kind": "multiple", "type": "md5", "pattern": "*.md5"}],
    "outputs": [{"name": "all", "kind": "single", "type": "md5", "file_name": "{prefix}.md5"}],
    "parameters": {"prefix": {"type": "str"}},
    "command": [sys.executable, "-c",
                "import sys; o, *fs = sys.argv[1:]; open(o, 'wb').write(b''.join(open(f, 'rb').read() for f in fs))",
                "{output}", "{sums}"],
}
# checks one checksum file (single pin: may stream file to file)
VERIFY = {"name": "verify", "inputs": [{"name": "sum", "type": "md5"}],
          "outputs": [{"name": "report", "type": "text", "file_name": "{stem}.ok"}],
          "command": ["cp", "{input}", "{output}"]}
CSVSUM = {"name": "csvsum", "inputs": [{"name": "table", "type": "csv"}], "command": ["true"]}
JOIN2 = {"name": "join2", "inputs": [{"name": "a", "type": "any"}, {"name": "b", "type": "any"}],
         "outputs": [{"name": "out", "type": "any", "kind": "multiple"}], "command": ["true"]}


@pytest.fixture
def registry():
    reg = builtin_registry()
    for m in (CONCAT, VERIFY, CSVSUM, JOIN2):
        reg.add(m)
    return reg


TWO_STEPS = {
    "name": "checksums",
    "mask": "raw.run-*",
    "steps": [
        {"name": "checksum", "module": "md5@1", "inputs": {"input": "dataset"}},
        {"name": "collect", "module": "concat@1.0", "inputs": {"sums": "checksum.checksum"},
         "params": {"prefix": "all"}},
    ],
}


def test_two_step_workflow_validates(registry):
    wf = load_workflow(TWO_STEPS, registry)
    assert wf.order == ["checksum", "collect"]
    assert wf.upstream == {"checksum": [], "collect": ["checksum"]}
    assert wf.downstream == {"checksum": ["collect"], "collect": []}
    md5, collect = wf.steps["checksum"], wf.steps["collect"]
    assert md5.module.ref == "md5@1" and collect.module.ref == "concat@1.0"
    assert str(md5.inputs["input"]) == "dataset" and str(collect.inputs["sums"]) == "checksum.checksum"
    assert collect.params == {"prefix": "all"}
    # md5 maps file to file (streams over the dataset); concat takes all of them at once
    assert md5.mode == "stream" and md5.streaming
    assert collect.mode == "barrier" and not collect.streaming
    assert md5.output_dataset("raw.run-7") == "raw.run-7.checksum"


def test_two_step_workflow_runs_its_steps_in_order(registry, tmp_path):
    """Each step's jobs through the executors, wired as the workflow says."""
    wf = load_workflow(TWO_STEPS, registry)
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(5):
        (raw / f"f{i}.dat").write_bytes(b"x" * i)
    files = {"dataset": [f"file://{p}" for p in sorted(raw.iterdir())]}
    for name in wf.order:
        step = wf.steps[name]
        out = f"file://{tmp_path}/{step.output_dataset('raw.run-1')}"
        [(pin, src)] = step.inputs.items()
        given = files[str(src)]
        if step.streaming:
            results = [run_job(step.module, {pin: [u]}, out, step.params) for u in given]
        else:
            results = [run_job(step.module, {pin: given}, out, step.params)]
        assert all(r.ok for r in results), [r.log for r in results]
        for o in (o for r in results for o in r.outputs):
            files.setdefault(f"{name}.{o.pin}", []).append(o.url)
    assert len(files["checksum.checksum"]) == 5
    [final] = files["collect.all"]
    lines = fsspec.open(final, "rb").open().read().decode().splitlines()
    assert [ln.split()[1] for ln in lines] == [f"f{i}.dat" for i in range(5)]


def test_streaming_and_barrier_flags(registry):
    wf = load_workflow({"name": "w", "steps": [
        {"name": "a", "module": "md5", "inputs": {"input": "dataset"}},
        {"name": "b", "module": "verify", "inputs": {"sum": "a.checksum"}},
        {"name": "c", "module": "verify", "inputs": {"sum": "a.checksum"}, "mode": "barrier"},
        {"name": "d", "module": "concat@1.0", "inputs": {"sums": "a.checksum"}, "params": {"prefix": "p"}},
        {"name": "e", "module": "join2", "inputs": {"a": "b.report", "b": "c.report"}},
    ]}, registry)
    assert {n: s.mode for n, s in wf.steps.items()} == {
        "a": "stream", "b": "stream", "c": "barrier", "d": "barrier", "e": "barrier"}
    assert wf.upstream["e"] == ["b", "c"]
    assert wf.order.index("e") > max(wf.order.index("b"), wf.order.index("c"))
    with pytest.raises(ConfigError) as e:
        load_workflow({"name": "w", "steps": [
            {"name": "a", "module": "md5", "inputs": {"input": "dataset"}},
            {"name": "d", "module": "concat@1.0", "inputs": {"sums": "a.checksum"},
             "params": {"prefix": "p"}, "mode": "stream"}]}, registry)
    assert str(e.value) == ("Workflow 'w', step 'd': mode 'stream' maps file to file: it needs "
                            "exactly one wired input pin of kind 'single' (or 'multiple' with a chunk).")


def test_chunked_steps(registry):
    base = {"name": "w", "steps": [{"name": "a", "module": "md5", "inputs": {"input": "dataset"}}]}
    chunked = {"name": "d", "module": "concat@1.0", "inputs": {"sums": "a.checksum"},
               "params": {"prefix": "p"}, "chunk": 100}
    wf = load_workflow({**base, "steps": base["steps"] + [chunked]}, registry)
    assert (wf.steps["d"].chunk, wf.steps["d"].mode) == (100, "stream")  # chunks go as they fill
    wf = load_workflow({**base, "steps": base["steps"] + [{**chunked, "mode": "barrier"}]}, registry)
    assert (wf.steps["d"].chunk, wf.steps["d"].mode) == (100, "barrier")
    assert wf.steps["a"].chunk is None
    with pytest.raises(ConfigError) as e:
        load_workflow({"name": "w", "steps": [{**base["steps"][0], "chunk": 10}]}, registry)
    assert str(e.value) == ("Workflow 'w', step 'a': chunk splits the files of one wired input pin "
                            "of kind 'multiple' into jobs: this step has none.")
    with pytest.raises(ConfigError, match="field steps.1.chunk"):
        load_workflow({**base, "steps": base["steps"] + [{**chunked, "chunk": 0}]}, registry)


def test_order_puts_upstream_first_whatever_the_declaration_order(registry):
    wf = load_workflow({"name": "w", "steps": [
        {"name": "late", "module": "verify", "inputs": {"sum": "early.checksum"}},
        {"name": "early", "module": "md5", "inputs": {"input": "dataset"}},
    ]}, registry)
    assert wf.order == ["early", "late"]
    assert wf.upstream == {"early": [], "late": ["early"]}


def step(name, module, **inputs):
    return {"name": name, "module": module, "inputs": inputs}


@pytest.mark.parametrize("steps, sentence", [
    ([step("a", "md5", input="dataset"), step("b", "join2", a="c.out", b="a.checksum"),
      step("c", "join2", a="b.out", b="dataset")],
     "Workflow 'w': the steps form a cycle: b -> c -> b."),
    ([step("a", "join2", a="a.out", b="dataset")],
     "Workflow 'w': the steps form a cycle: a -> a."),
    ([step("a", "md5", input="dataset"), step("x", "join2", a="z.out", b="a.checksum"),
      step("y", "join2", a="x.out", b="dataset"), step("z", "join2", a="y.out", b="dataset")],
     "Workflow 'w': the steps form a cycle: x -> y -> z -> x."),
    ([step("a", "md5", input="dataset"), step("b", "csvsum", table="a.checksum")],
     "Workflow 'w', step 'b': input 'table' takes data of type 'csv' but a.checksum gives 'md5'."),
    ([step("a", "md5@7", input="dataset")],
     "Workflow 'w', step 'a': unknown module 'md5@7'."),
    ([step("a", "md5", data="dataset")],
     "Workflow 'w', step 'a': module md5@1 has no input pin 'data' (it has: input)."),
    ([step("a", "md5", input="dataset"), step("b", "verify", sum="a.digest")],
     "Workflow 'w', step 'b': input 'sum' reads a.digest, but module md5@1 has no output pin "
     "'digest' (it has: checksum)."),
    ([step("a", "md5", input="dataset"), step("b", "verify", sum="nowhere.checksum")],
     "Workflow 'w', step 'b': input 'sum' reads from unknown step 'nowhere'."),
    ([step("a", "md5", input="dataset"), step("b", "verify", sum="a")],
     "Workflow 'w', step 'b': input 'sum': source 'a' is neither 'dataset' nor '<step>.<output pin>'."),
    ([step("a", "md5", input="dataset"), step("a", "md5", input="dataset")],
     "Workflow 'w': step name 'a' is used twice."),
    ([step("a", "md5", input="dataset"), step("b", "concat@1.0", sums="a.checksum")],
     "Workflow 'w', step 'b': module concat@1.0 needs parameter 'prefix' (str)."),
    ([step("a", "md5", input="dataset"), {**step("b", "concat@1.0", sums="a.checksum"), "params": {"prefix": 3}}],
     "Workflow 'w', step 'b': parameter 'prefix' of module concat@1.0: 3 is not of type str."),
    ([step("a", "md5")],
     "Workflow 'w', step 'a': required input pin 'input' of md5@1 is not wired."),
    ([step("a", "noop")],
     "Workflow 'w': no step reads the 'dataset': nothing would start the run."),
])
def test_bad_workflows_are_refused_with_a_sentence(registry, steps, sentence):
    with pytest.raises(ConfigError) as e:
        load_workflow({"name": "w", "steps": steps}, registry)
    assert str(e.value) == sentence


@pytest.mark.parametrize("spec, words", [
    ({"name": "w", "steps": []}, "field steps: List should have at least 1 item"),
    ({"name": "w"}, "field steps: Field required"),
    ({"name": "w", "steps": [{"name": "a.b", "module": "md5"}]}, "field steps.0.name"),
    ({"name": "w", "steps": [{"name": "a", "module": "md5", "mode": "fast"}]}, "field steps.0.mode"),
    ({"name": "w", "mask": "", "steps": [{"name": "a", "module": "md5"}]}, "field mask"),
])
def test_malformed_workflow_specs_name_the_field(registry, spec, words):
    with pytest.raises(ConfigError) as e:
        load_workflow(spec, registry)
    assert str(e.value).startswith("Workflow 'w': ") and words in str(e.value)


def test_dataset_mask_matching(registry):
    wf = load_workflow(TWO_STEPS, registry)
    assert wf.matches("raw.run-0042")
    assert not wf.matches("raw.run")  # the '-' is part of the mask
    assert not wf.matches("RAW.run-1")  # case-sensitive
    assert not wf.matches("sim.run-1")
    other = load_workflow({**TWO_STEPS, "name": "sim", "mask": "*.run-[0-9]*"}, registry)
    manual = load_workflow({**TWO_STEPS, "name": "manual", "mask": None}, registry)
    assert not manual.matches("raw.run-1")  # no mask: started only by hand
    found = matching_workflows([wf, other, manual], "raw.run-1")
    assert [w.name for w in found] == ["checksums", "sim"]
    assert [w.name for w in matching_workflows([wf, other, manual], "sim.run-x")] == []
    assert [w.name for w in matching_workflows([wf, other, manual], "sim.run-9")] == ["sim"]
