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

The rules, checked by ``check_workflow`` and enforced by ``load_workflow``: step names are
unique identifiers; modules exist; parameters are known, of the right type, and the
required ones given; inputs name real pins and sources (``dataset`` or an earlier step's
output pin); an output's data type fits the input's (``any`` fits all); every required
input pin is wired; some step reads the dataset; the wiring has no cycle (the cycle is
named, ``a -> b -> a``). Every problem is found at once, each a :class:`Problem` on its
field (``name``, ``mask``, ``steps``, ``steps.<step>.module|name|chunk|mode|output``,
``steps.<step>.inputs.<pin>``, ``steps.<step>.params.<parameter>``; a cycle is on the input
pin that closes it). ``load_workflow`` refuses with ``WorkflowInvalid`` (a ConfigError):
its sentence is the first problem, naming the workflow and step, and ``problems`` all of
them. This is the one validator: the API and the pipeline builder both use it.

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
from typing import Any, Literal, NamedTuple
from collections.abc import Iterable

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
    "check_workflow",
    "Problem",
    "WorkflowInvalid",
    "field",
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


class Problem(NamedTuple):
    """One problem of a workflow spec: the field it is about (see ``field``) and a sentence."""

    field: str
    message: str


class WorkflowInvalid(ConfigError):
    """A refused workflow: ``message`` is its first problem, naming the workflow (and the
    step), as ``load_workflow`` always said it; ``problems`` holds every one."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


def field(step: str | None = None, *parts: str) -> str:
    """The field path of a step's part: ``field("sum", "inputs", "input")`` is
    ``steps.sum.inputs.input``; ``field()`` is ``steps`` (the whole workflow)."""
    return ".".join(["steps"] + ([step] if step is not None else []) + list(parts))


def _lower(sentence: str) -> str:
    return sentence[:1].lower() + sentence[1:]


def _capital(sentence: str) -> str:
    sentence = sentence[:1].upper() + sentence[1:]
    return sentence if sentence.endswith((".", "?", "!", ")")) else sentence + "."


class _Found:
    """The problems met so far, each kept with the step it is about (for the refusal's sentence)."""

    def __init__(self, wf: str):
        self.wf = wf
        self.items: list[tuple[Problem, str | None]] = []
        self.refusal: str | None = None  # the refusal's sentence, where it is not the first problem's

    def add(self, where: str, step: str | None, sentence: str) -> None:
        self.items.append((Problem(where, _capital(sentence)), step))

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> WorkflowInvalid:
        first, step = self.items[0]
        where = f"Workflow {self.wf!r}" + (f", step {step!r}" if step else "")
        return WorkflowInvalid(self.refusal or f"{where}: {_lower(first.message)}", [p for p, _ in self.items])


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


def _check_inputs(found: _Found, s: StepSpec, module: ModuleSpec, modules: dict[str, ModuleSpec | None],
                  declared: dict[str, StepSpec]) -> dict[str, Source]:
    """The step's wired inputs that are sound; a problem for each one that is not."""
    inputs: dict[str, Source] = {}
    for pin_name, text in s.inputs.items():
        here = field(s.name, "inputs", pin_name)
        pin = module.input(pin_name)
        if pin is None:
            known = ", ".join(p.name for p in module.inputs) or "none"
            found.add(here, s.name, f"module {module.ref} has no input pin {pin_name!r} (it has: {known}).")
            continue
        try:
            src = _parse_source(text)
        except ValueError as e:
            found.add(here, s.name, f"input {pin_name!r}: {e}.")
            continue
        if src.step is not None:
            if src.step not in declared:
                found.add(here, s.name, f"input {pin_name!r} reads from unknown step {src.step!r}.")
                continue
            up_module = modules[src.step]
            if up_module is None:  # the upstream step's unknown module is its own problem
                continue
            out: Pin | None = up_module.output(src.pin)
            if out is None:
                known = ", ".join(p.name for p in up_module.outputs) or "none"
                found.add(here, s.name, f"input {pin_name!r} reads {src}, but module "
                          f"{up_module.ref} has no output pin {src.pin!r} (it has: {known}).")
                continue
            if not pin.fits(out):
                found.add(here, s.name, f"input {pin_name!r} takes data of type {pin.type!r} but "
                          f"{src} gives {out.type!r}.")
                continue
        inputs[pin_name] = src
    return inputs


def _check_step(found: _Found, s: StepSpec, module: ModuleSpec, modules: dict[str, ModuleSpec | None],
                declared: dict[str, StepSpec]) -> Step | None:
    """The checked step, or None with its problems added to ``found``."""
    before = len(found.items)
    for name, sentence in module.param_problems(s.params):
        found.add(field(s.name, "params", name), s.name, _lower(sentence))
    inputs = _check_inputs(found, s, module, modules, declared)
    for pin in module.inputs:
        if not pin.optional and pin.name not in s.inputs:
            found.add(field(s.name, "inputs", pin.name), s.name,
                      f"required input pin {pin.name!r} of {module.ref} is not wired.")
    wired = [module.input(p) for p in s.inputs if module.input(p) is not None]
    if s.chunk is not None and not (len(wired) == 1 and wired[0].kind == "multiple"):
        found.add(field(s.name, "chunk"), s.name, "chunk splits the files of one wired input pin of kind "
                  "'multiple' into jobs: this step has none.")
    can_stream = len(wired) == 1 and (wired[0].kind == "single" or s.chunk is not None)
    mode = s.mode or ("stream" if can_stream else "barrier")
    if mode == "stream" and not can_stream:
        found.add(field(s.name, "mode"), s.name, "mode 'stream' maps file to file: it needs exactly one "
                  "wired input pin of kind 'single' (or 'multiple' with a chunk).")
    output = s.output or "{dataset}.{step}"
    try:
        output.format(dataset="d", step="s")
    except (KeyError, IndexError, ValueError) as e:
        found.add(field(s.name, "output"), s.name, f"output {output!r} may use only {{dataset}} and {{step}} ({e}).")
    if len(found.items) > before:
        return None
    upstream = tuple(dict.fromkeys(src.step for src in inputs.values() if src.step))
    return Step(s.name, module, module.resolve_params(s.params), inputs, mode, upstream, output, s.chunk)


def _spec_problems(data: dict[str, Any], e: ValidationError) -> _Found:
    """Every field pydantic refused; a step's field by the step's name where it has one."""
    found = _Found(data.get("name", "?"))
    steps = data.get("steps")
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        where = loc[0] if loc else "steps"
        if loc[:1] == ["steps"]:
            where = "steps"
            if len(loc) > 1 and loc[1].isdigit() and isinstance(steps, list) and int(loc[1]) < len(steps):
                named = steps[int(loc[1])]
                name = named.get("name") if isinstance(named, dict) else None
                if isinstance(name, str) and name:
                    where = field(name, *loc[2:])
        if not found:  # the refusal names the field as pydantic does (``steps.1.chunk``)
            found.refusal = f"Workflow {found.wf!r}: field {'.'.join(loc) or '(spec)'}: {msg}."
        found.add(where, None, msg)
    return found


def _cycle_field(cycle: list[str], declared: dict[str, StepSpec]) -> str:
    """The input pin of the cycle's first step that reads from the step before it."""
    first = declared[cycle[0]]
    for pin, src in first.inputs.items():
        if "." in src and src.partition(".")[0] == cycle[-2]:
            return field(first.name, "inputs", pin)
    return field(first.name)


def check_workflow(data: dict[str, Any] | WorkflowSpec, registry: ModuleRegistry
                   ) -> tuple[Workflow | None, list[Problem]]:
    """(the checked workflow, []) or (None, every problem found, each on its field)."""
    workflow, found = _check(data, registry)
    return workflow, [p for p, _ in found.items]


def _check(data, registry) -> tuple[Workflow | None, _Found]:
    if isinstance(data, WorkflowSpec):
        spec = data
    else:
        if not isinstance(data, dict):
            found = _Found("?")
            found.add("steps", None, f"a workflow spec is a mapping, not {type(data).__name__}.")
            found.refusal = found.items[0][0].message
            return None, found
        try:
            spec = WorkflowSpec.model_validate(data)
        except ValidationError as e:
            return None, _spec_problems(data, e)
    found = _Found(spec.name)
    declared: dict[str, StepSpec] = {}
    for s in spec.steps:
        if s.name in declared:
            found.add(field(s.name, "name"), None, f"step name {s.name!r} is used twice.")
        declared.setdefault(s.name, s)
    if found:  # the steps' fields would be ambiguous
        return None, found
    modules: dict[str, ModuleSpec | None] = {}
    for s in spec.steps:
        try:
            modules[s.name] = registry.get(s.module)
        except ConfigError as e:
            modules[s.name] = None
            found.add(field(s.name, "module"), s.name, _lower(e.message))
    steps = {s.name: _check_step(found, s, modules[s.name], modules, declared)
             for s in spec.steps if modules[s.name] is not None}
    names = [s.name for s in spec.steps]
    edges = {s.name: list(dict.fromkeys(src.partition(".")[0] for src in s.inputs.values()
                                        if "." in src and src.partition(".")[0] in declared)) for s in spec.steps}
    cycle = _find_cycle(edges, names)
    if cycle:
        found.add(_cycle_field(cycle, declared), None, f"the steps form a cycle: {' -> '.join(cycle)}.")
    if not any(src == DATASET for s in spec.steps for src in s.inputs.values()):
        found.add(field(), None, f"no step reads the {DATASET!r}: nothing would start the run.")
    if found:
        return None, found
    # Kahn's order, declaration order among steps that are ready together
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = next(n for n in names if n not in done and all(u in done for u in edges[n]))
        order.append(ready)
        done.add(ready)
    return Workflow(spec, steps, order), found


def load_workflow(data: dict[str, Any] | WorkflowSpec, registry: ModuleRegistry) -> Workflow:
    """A checked :class:`Workflow` from a spec, its modules looked up in ``registry``;
    ``WorkflowInvalid`` (a ConfigError) with every problem if it has any."""
    workflow, found = _check(data, registry)
    if workflow is None:
        raise found.error()
    return workflow
