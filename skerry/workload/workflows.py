"""Workflows: steps over modules, wired output -> input, checked when they are loaded.

A workflow spec (a mapping, e.g. parsed JSON/YAML)::

    name: checksums
    mask: "raw.run-*"             # optional: a dataset whose name matches starts a run
    steps:
      - name: checksum
        module: md5@1             # name@version (or a name with one known version)
        inputs: {input: dataset}  # "dataset" is the run's input dataset
      - name: collect
        module: concat@1
        inputs: {files: checksum.checksum}   # <step>.<output pin>
        params: {separator: "\\n"}
        mode: barrier             # optional: stream | barrier (derived from the pins)
        chunk: 100                # optional: at most 100 files per job (a multiple pin)
        output: "{dataset}.collect"          # optional: the step's output dataset name

The rules, enforced by ``load_workflow`` (each refusal is a ConfigError with a sentence):
step names are unique identifiers; modules exist; parameters are known, of the right type,
and the required ones given; inputs name real pins and sources (``dataset`` or an earlier
step's output pin); an output's data type fits the input's (``any`` fits all); every
required input pin is wired; some step reads the dataset; the wiring has no cycle (the
cycle is named, ``a -> b -> a``).

How a step consumes its inputs (``mode``):

- ``stream``: file to file; a job starts for each input file as soon as it is there
  (registered in the dataset, or written by an upstream job), before upstream finishes.
  Only for a step whose wired inputs are one ``single`` pin.
- ``barrier``: the step waits until the whole upstream (every upstream task, or the
  closed dataset) is done; then a ``multiple`` pin gets all files in one job (or chunks
  of ``chunk`` files) and a ``single`` pin one job per file.

``chunk`` (only for a step with one wired ``multiple`` pin) caps the files per job; such a
step may stream, a job starting as each chunk fills (the last one, partial, when upstream
is done). By default a step streams when its wired inputs are one single pin or one
chunked multiple pin, else it is a barrier.

The loaded :class:`Workflow` gives the step ``order`` (upstream first, declaration order
among equals), each step's ``upstream`` steps, ``pinned()`` (the spec with every module
as ``name@version``, as the catalog stores it), and ``matches(dataset_name)`` for the mask
(a shell glob, ``fnmatch`` rules, case-sensitive); ``matching_workflows`` picks the
workflows a newly registered or closed dataset starts.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skerry.errors import ConfigError

from .modules import ModuleRegistry, ModuleSpec, Pin

__all__ = [
    "DATASET",
    "StepSpec",
    "WorkflowSpec",
    "Source",
    "Step",
    "Workflow",
    "load_workflow",
    "matching_workflows",
]

DATASET = "dataset"  # the source name of the run's input dataset
_STEP = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_STEP)
    module: str = Field(min_length=1)
    inputs: dict[str, str] = {}
    params: dict[str, Any] = {}
    mode: Literal["stream", "barrier"] | None = None
    chunk: int | None = Field(default=None, ge=1)
    output: str | None = None


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    version: str = "1"
    description: str = ""
    mask: str | None = Field(default=None, min_length=1)
    steps: list[StepSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Source:
    """Where an input pin's files come from: the dataset, or a step's output pin."""

    step: str | None  # None: the run's input dataset
    pin: str | None

    def __str__(self) -> str:
        return DATASET if self.step is None else f"{self.step}.{self.pin}"


@dataclass(frozen=True)
class Step:
    """A checked step: its module, resolved parameters, wired inputs and mode."""

    name: str
    module: ModuleSpec
    params: dict[str, Any]
    inputs: dict[str, Source]
    mode: Literal["stream", "barrier"]
    upstream: tuple[str, ...]
    output: str
    chunk: int | None = None

    @property
    def streaming(self) -> bool:
        return self.mode == "stream"

    def output_dataset(self, dataset: str) -> str:
        """The name of the dataset this step's outputs go to, for a run over ``dataset``."""
        return self.output.format(dataset=dataset, step=self.name)


class Workflow:
    """A loaded, checked workflow (see the module docstring)."""

    def __init__(self, spec: WorkflowSpec, steps: dict[str, Step], order: list[str]):
        self.spec = spec
        self.steps = steps
        self.order = order

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mask(self) -> str | None:
        return self.spec.mask

    @property
    def upstream(self) -> dict[str, list[str]]:
        """step -> the steps it reads from (empty for steps reading only the dataset)."""
        return {s: list(self.steps[s].upstream) for s in self.order}

    @property
    def downstream(self) -> dict[str, list[str]]:
        down: dict[str, list[str]] = {s: [] for s in self.order}
        for s in self.order:
            for u in self.steps[s].upstream:
                down[u].append(s)
        return down

    def pinned(self) -> dict:
        """The spec with every step's module named ``name@version``: stored so that modules
        added later (a newer version, another user's module of the same name) never change
        or break what this workflow runs."""
        data = self.spec.model_dump(mode="json", exclude_unset=True)
        for step in data["steps"]:
            step["module"] = self.steps[step["name"]].module.ref
        return data

    def matches(self, dataset_name: str) -> bool:
        """Whether registering/closing ``dataset_name`` starts a run of this workflow."""
        return self.mask is not None and fnmatch.fnmatchcase(dataset_name, self.mask)

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={self.order}>"


def matching_workflows(workflows: Iterable[Workflow], dataset_name: str) -> list[Workflow]:
    """The workflows whose mask matches ``dataset_name``, in the order given."""
    return [w for w in workflows if w.matches(dataset_name)]


def _refuse(wf: str, step: str | None, sentence: str) -> ConfigError:
    where = f"Workflow {wf!r}" + (f", step {step!r}" if step else "")
    return ConfigError(f"{where}: {sentence}")


def _lower(sentence: str) -> str:
    return sentence[:1].lower() + sentence[1:]


def _parse_source(text: str) -> Source:
    if text == DATASET:
        return Source(None, None)
    step, dot, pin = text.partition(".")
    if not dot or not step or not pin:
        raise ValueError(f"source {text!r} is neither {DATASET!r} nor '<step>.<output pin>'")
    return Source(step, pin)


def _find_cycle(edges: dict[str, list[str]], order: list[str]) -> list[str] | None:
    """A cycle in ``edges`` (step -> upstream steps) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for u in edges[n]:
            if state.get(u) == 1:
                cyc = path[path.index(u):] + [u]
                return list(reversed(cyc))  # in the direction the data flows
            if u not in state and (found := visit(u)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in order:
        if n not in state and (found := visit(n)):
            return found
    return None


def _check_step(wf: str, s: StepSpec, module: ModuleSpec,
                declared: dict[str, StepSpec], registry: ModuleRegistry) -> Step:
    try:
        params = module.resolve_params(s.params)
    except ConfigError as e:
        raise _refuse(wf, s.name, _lower(e.message)) from None
    inputs: dict[str, Source] = {}
    for pin_name, text in s.inputs.items():
        pin = module.input(pin_name)
        if pin is None:
            known = ", ".join(p.name for p in module.inputs) or "none"
            raise _refuse(wf, s.name, f"module {module.ref} has no input pin {pin_name!r} (it has: {known}).")
        try:
            src = _parse_source(text)
        except ValueError as e:
            raise _refuse(wf, s.name, f"input {pin_name!r}: {e}.") from None
        if src.step is not None:
            if src.step not in declared:
                raise _refuse(wf, s.name, f"input {pin_name!r} reads from unknown step {src.step!r}.")
            up_module = registry.get(declared[src.step].module)
            out: Pin | None = up_module.output(src.pin)
            if out is None:
                known = ", ".join(p.name for p in up_module.outputs) or "none"
                raise _refuse(wf, s.name, f"input {pin_name!r} reads {src}, but module "
                              f"{up_module.ref} has no output pin {src.pin!r} (it has: {known}).")
            if not pin.fits(out):
                raise _refuse(wf, s.name, f"input {pin_name!r} takes data of type {pin.type!r} but "
                              f"{src} gives {out.type!r}.")
        inputs[pin_name] = src
    for pin in module.inputs:
        if not pin.optional and pin.name not in inputs:
            raise _refuse(wf, s.name, f"required input pin {pin.name!r} of {module.ref} is not wired.")
    wired = [module.input(p) for p in inputs]
    if s.chunk is not None and not (len(wired) == 1 and wired[0].kind == "multiple"):
        raise _refuse(wf, s.name, "chunk splits the files of one wired input pin of kind 'multiple' "
                      "into jobs: this step has none.")
    can_stream = len(wired) == 1 and (wired[0].kind == "single" or s.chunk is not None)
    mode = s.mode or ("stream" if can_stream else "barrier")
    if mode == "stream" and not can_stream:
        raise _refuse(wf, s.name, "mode 'stream' maps file to file: it needs exactly one wired "
                      "input pin of kind 'single' (or 'multiple' with a chunk).")
    upstream = tuple(dict.fromkeys(src.step for src in inputs.values() if src.step))
    output = s.output or "{dataset}.{step}"
    try:
        output.format(dataset="d", step="s")
    except (KeyError, IndexError, ValueError) as e:
        raise _refuse(wf, s.name, f"output {output!r} may use only {{dataset}} and {{step}} ({e}).") from None
    return Step(s.name, module, params, inputs, mode, upstream, output, s.chunk)


def load_workflow(data: dict[str, Any] | WorkflowSpec, registry: ModuleRegistry) -> Workflow:
    """A checked :class:`Workflow` from a spec, its modules looked up in ``registry``."""
    if isinstance(data, WorkflowSpec):
        spec = data
    else:
        if not isinstance(data, dict):
            raise ConfigError(f"A workflow spec is a mapping, not {type(data).__name__}.")
        try:
            spec = WorkflowSpec.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "(spec)"
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"Workflow {data.get('name', '?')!r}: field {field}: {msg}.") from None
    wf = spec.name
    declared: dict[str, StepSpec] = {}
    for s in spec.steps:
        if s.name in declared:
            raise _refuse(wf, None, f"step name {s.name!r} is used twice.")
        declared[s.name] = s
    modules: dict[str, ModuleSpec] = {}
    for s in spec.steps:
        try:
            modules[s.name] = registry.get(s.module)
        except ConfigError as e:
            raise _refuse(wf, s.name, _lower(e.message)) from None
    steps = {s.name: _check_step(wf, s, modules[s.name], declared, registry) for s in spec.steps}
    names = [s.name for s in spec.steps]
    edges = {n: list(steps[n].upstream) for n in names}
    cycle = _find_cycle(edges, names)
    if cycle:
        raise _refuse(wf, None, f"the steps form a cycle: {' -> '.join(cycle)}.")
    if not any(src.step is None for st in steps.values() for src in st.inputs.values()):
        raise _refuse(wf, None, f"no step reads the {DATASET!r}: nothing would start the run.")
    # Kahn's order, declaration order among steps that are ready together
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = next(n for n in names if n not in done and all(u in done for u in edges[n]))
        order.append(ready)
        done.add(ready)
    return Workflow(spec, steps, order)
