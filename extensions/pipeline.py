"""Pipelines in code: the model behind the builder widget (no widgets here).

    p = skerry.Pipeline("sums")
    p.step("sum", "md5", input="dataset")            # pins wired by keyword
    p.step("again", "md5of", input="sum.checksum")   # <step>.<output pin>
    p.validate(registry)        # [] or [(field, message), ...]
    p.save(client); run_id = p.launch(client, "alice.raw")

A pipeline is a workflow spec being edited (``skerry.workload.workflows``): ``to_workflow()``
gives the spec the REST API takes, ``Pipeline.from_workflow(spec)`` reads one back (a spec,
or the API's workflow JSON with its ``spec``).

Rules:

- validation is the API's own: ``validate`` runs ``check_workflow`` (the one validator,
  what ``POST workflows`` runs), which returns every problem at once, each on its field;
  only a step's pool (no field of the workflow spec) is checked here. A pipeline with no
  problems is one the API accepts;
- a field is a dotted path: ``name``, ``mask``, ``dataset`` (a launch refused over it),
  ``steps`` (the whole pipeline: nothing reads the dataset, no steps),
  ``steps.<step>.name|module|pool|chunk|mode|output``,
  ``steps.<step>.inputs.<pin>``, ``steps.<step>.params.<parameter>`` (see ``field``); a cycle
  is put on the input pin that closes it;
- wiring offers (``compatible_outputs``) the dataset (its files are untyped) and the output
  pins of the other steps whose data type fits the pin (``any`` fits all), leaving out the
  steps downstream of this one (they would close a cycle);
- the pool is the module's: ``gpu`` when its ``resources.gpu`` is above 0, else ``cpu``
  (the platform sends jobs so, ``skerry.workload.runs``). A step's ``pool`` is a choice the
  builder shows and checks, not an override: a CPU module on the gpu pool would hold a GPU
  it does not use, a GPU module on the cpu pool finds none; either is a problem on
  ``steps.<step>.pool``. The workflow spec has no pool field, so ``to_workflow`` drops it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field as _dc_field
from typing import Any, NamedTuple

from skerry.errors import ConfigError
from skerry.workload.builtins import builtin_registry
from skerry.workload.modules import ModuleRegistry, ModuleSpec, check_value, pool_of
from skerry.workload.workflows import DATASET, Problem, check_workflow, field

__all__ = ["Pipeline", "Step", "Problem", "ParamField", "field", "registry_from", "pool_of",
           "module_summary", "parameter_form", "check_param", "parse_param", "problem_of"]

POOLS = ("cpu", "gpu")
_STEP_KEYS = ("name", "module", "inputs", "params", "mode", "chunk", "output")


class ParamField(NamedTuple):
    """What a form shows for one module parameter."""

    name: str
    type: str
    default: Any
    required: bool
    description: str


def registry_from(source=None) -> ModuleRegistry:
    """A module registry: ``source`` itself, the modules a ``Client`` lists, or the built-ins."""
    if source is None:
        return builtin_registry()
    if isinstance(source, ModuleRegistry):
        return source
    registry = ModuleRegistry()
    for m in source.modules():
        try:
            registry.add(m["spec"])
        except ConfigError:
            pass  # one odd stored module must not hide the others
    return registry


@dataclass
class Step:
    """A step: a module over inputs wired to the ``dataset`` or ``<step>.<output pin>``."""

    name: str
    module: str
    inputs: dict[str, str] = _dc_field(default_factory=dict)
    params: dict[str, Any] = _dc_field(default_factory=dict)
    mode: str | None = None
    chunk: int | None = None
    output: str | None = None
    pool: str | None = None  # None: the module's pool

    def to_spec(self) -> dict:
        spec: dict[str, Any] = {"name": self.name, "module": self.module, "inputs": dict(self.inputs)}
        if self.params:
            spec["params"] = dict(self.params)
        for key in ("mode", "chunk", "output"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec

    @classmethod
    def from_spec(cls, spec: dict) -> Step:
        unknown = sorted(set(spec) - set(_STEP_KEYS))
        if unknown:
            raise ConfigError(f"A step has no field {unknown[0]!r} (fields: {', '.join(_STEP_KEYS)}).")
        return cls(spec.get("name", ""), spec.get("module", ""), dict(spec.get("inputs") or {}),
                   dict(spec.get("params") or {}), spec.get("mode"), spec.get("chunk"), spec.get("output"))


class Pipeline:
    """A workflow being built: a name, an optional dataset-name ``mask`` and steps."""

    def __init__(self, name: str, steps: list[Step] | None = None, mask: str | None = None,
                 description: str = ""):
        self.name = name
        self.mask = mask
        self.description = description
        self.steps: list[Step] = list(steps or [])

    # ---- building ----

    def step(self, name: str, module: str, inputs: dict[str, str] | None = None,
             params: dict[str, Any] | None = None, *, mode: str | None = None, chunk: int | None = None,
             output: str | None = None, pool: str | None = None, **pins: str) -> Pipeline:
        """Add a step; pins are wired by ``inputs`` or by keyword (``input="dataset"``). Chains."""
        self.steps.append(Step(name, module, {**(inputs or {}), **pins}, dict(params or {}),
                               mode, chunk, output, pool))
        return self

    def check_new_step(self, name: str) -> str | None:
        """Why a new step may not be called ``name``, or None."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name or ""):
            return f"A step name is a letter or _ then letters, digits, _ or -, not {name!r}."
        if any(s.name == name for s in self.steps):
            return f"There is a step named {name!r} already."
        return None

    def new_step_name(self, module: str) -> str:
        """A free step name after the module: ``md5``, ``md5_2``..."""
        base = re.sub(r"[^A-Za-z0-9_-]", "_", module.partition("@")[0]) or "step"
        base = base if re.match(r"[A-Za-z_]", base) else "_" + base
        name, n = base, 1
        while any(s.name == name for s in self.steps):
            n += 1
            name = f"{base}_{n}"
        return name

    def get(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"pipeline {self.name!r} has no step {name!r} (steps: "
                       f"{', '.join(s.name for s in self.steps) or 'none'})")

    def remove(self, name: str) -> None:
        """Remove a step and unwire the pins that read from it."""
        self.steps.remove(self.get(name))
        for s in self.steps:
            s.inputs = {pin: src for pin, src in s.inputs.items() if src.partition(".")[0] != name}

    def rename(self, old: str, new: str) -> None:
        """Rename a step, rewiring the pins that read from it."""
        self.get(old).name = new
        for s in self.steps:
            s.inputs = {pin: (f"{new}.{src.partition('.')[2]}" if src.partition(".")[0] == old and "." in src
                              else src) for pin, src in s.inputs.items()}

    # ---- the workflow spec ----

    def to_workflow(self) -> dict:
        """The workflow spec the REST API (``POST workflows``) takes."""
        spec: dict[str, Any] = {"name": self.name}
        if self.description:
            spec["description"] = self.description
        if self.mask:
            spec["mask"] = self.mask
        spec["steps"] = [s.to_spec() for s in self.steps]
        return spec

    @classmethod
    def from_workflow(cls, spec: dict) -> Pipeline:
        """A pipeline from a workflow spec, or from the API's workflow JSON (its ``spec``)."""
        if isinstance(spec.get("spec"), dict):
            spec = spec["spec"]
        return cls(spec.get("name", ""), [Step.from_spec(s) for s in spec.get("steps", [])],
                   spec.get("mask"), spec.get("description", ""))

    def __eq__(self, other) -> bool:
        return isinstance(other, Pipeline) and self.to_workflow() == other.to_workflow() and \
            [s.pool for s in self.steps] == [s.pool for s in other.steps]

    def __repr__(self) -> str:
        wiring = ", ".join(f"{s.name}={s.module}" for s in self.steps)
        return f"<Pipeline {self.name!r}: {wiring}>"

    # ---- choices offered ----

    def upstream_of(self, name: str) -> set[str]:
        """The steps ``name`` reads from, directly or not."""
        by_name = {s.name: s for s in self.steps}
        seen: set[str] = set()
        todo = [name]
        while todo:
            s = by_name.get(todo.pop())
            for src in (s.inputs.values() if s else ()):
                up = src.partition(".")[0] if "." in src else None
                if up and up not in seen:
                    seen.add(up)
                    todo.append(up)
        return seen

    def downstream_of(self, name: str) -> set[str]:
        """The steps that read from ``name``, directly or not."""
        return {s.name for s in self.steps if s.name != name and name in self.upstream_of(s.name)}

    def compatible_outputs(self, step: str, pin: str, registry: ModuleRegistry | None = None) -> list[str]:
        """The sources input ``pin`` of ``step`` may be wired to (see the module rules)."""
        registry = registry_from(registry)
        target = _module(registry, self.get(step).module)
        pin_spec = target.input(pin) if target else None
        if pin_spec is None:
            return []
        blocked = self.downstream_of(step) | {step}
        offered = [DATASET]
        for s in self.steps:
            up = _module(registry, s.module)
            if s.name in blocked or up is None:
                continue
            offered += [f"{s.name}.{out.name}" for out in up.outputs if pin_spec.fits(out)]
        return offered

    def pool(self, step: str, registry: ModuleRegistry | None = None) -> str:
        """The step's pool: its choice, else its module's (``cpu`` for an unknown module)."""
        s = self.get(step)
        module = _module(registry_from(registry), s.module)
        return s.pool or (pool_of(module) if module else "cpu")

    # ---- validation ----

    def validate(self, registry: ModuleRegistry | None = None) -> list[Problem]:
        """Every problem found, each on its field; [] exactly when the API accepts the pipeline.
        The workflow's problems are ``check_workflow``'s (what ``POST workflows`` runs); a
        step's pool, which the workflow spec has not, is checked here."""
        registry = registry_from(registry)
        _, problems = check_workflow(self.to_workflow(), registry)
        for s in self.steps:
            module = _module(registry, s.module)
            message = _pool_problem(module, s.pool) if module is not None and s.pool is not None else None
            if message:
                problems.append(Problem(field(s.name, "pool"), message))
        return problems

    # ---- the platform ----

    def save(self, client) -> dict:
        """Add the pipeline as a workflow (``POST workflows``); the API's workflow JSON.
        A refusal raises the client's ``ApiRefused`` (``problem_of`` puts it on its field)."""
        return client.add_workflow(self.to_workflow())

    def saved(self, client) -> dict | None:
        """The platform's workflow of this name, or None."""
        return next((w for w in client.workflows() if w["name"] == self.name), None)

    def launch(self, client, dataset: str, rank: float | None = None) -> int:
        """Start a run over ``dataset`` (saving the workflow first if the platform has none of
        this name); the run's id. A stored workflow of this name with other steps is refused:
        a run must run what the pipeline says."""
        stored = self.saved(client)
        if stored is None:
            self.save(client)
        elif Pipeline.from_workflow(stored).to_workflow() != self.to_workflow():
            raise ConfigError(f"A workflow named {self.name!r} is saved with other steps: give this "
                              f"pipeline another name to run it.")
        return client.run(self.name, dataset, rank)


# ---- module-level helpers (the builder's decisions) ------------------------------


def _module(registry: ModuleRegistry, ref: str) -> ModuleSpec | None:
    try:
        return registry.get(ref)
    except ConfigError:
        return None


def _pool_problem(module: ModuleSpec, pool: str) -> str | None:
    if pool not in POOLS:
        return f"Pool {pool!r} is none of {', '.join(POOLS)}."
    needed = pool_of(module)
    if pool == needed:
        return None
    if needed == "gpu":
        return f"Module {module.ref} needs {module.resources.gpu} GPU(s): its jobs run on the gpu pool."
    return f"Module {module.ref} needs no GPU: its jobs run on the cpu pool."


def module_summary(module: ModuleSpec) -> dict[str, str]:
    """What a module list shows: ref, description, pins, parameters, resources and pool."""
    def pins(ps):
        return ", ".join(f"{p.name}: {p.type}" + (" (multiple)" if p.kind == "multiple" else "")
                         + (" (optional)" if p.optional else "") for p in ps) or "-"

    params = ", ".join(f"{f.name}: {f.type}" + (" (required)" if f.required else f" = {f.default!r}")
                       for f in parameter_form(module)) or "-"
    r = module.resources
    memory = f", memory {r.memory / 2**20:g} MiB" if r.memory else ""
    return {"module": module.ref, "description": module.description, "inputs": pins(module.inputs),
            "outputs": pins(module.outputs), "parameters": params,
            "resources": f"cpu {r.cpu:g}{memory}" + (f", gpu {r.gpu}" if r.gpu else ""), "pool": pool_of(module)}


def parameter_form(module: ModuleSpec) -> list[ParamField]:
    """The module's parameters as form fields, in declaration order."""
    return [ParamField(name, p.type, p.default, p.required, p.description) for name, p in module.parameters.items()]


def check_param(module: ModuleSpec, name: str, value: Any) -> str | None:
    """The API's sentence (``ModuleSpec.resolve_params``) for parameter ``name`` = ``value``, or
    None when it is fine; ``None`` is "not given", a problem only for a required parameter."""
    return module.param_problem(name, value)


def parse_param(type_name: str, text: Any) -> Any:
    """The value a form's text means: ``""`` is None (not given), ``"3"`` an int for an int
    parameter; text that is no such value stays text, for validation to name."""
    if not isinstance(text, str):
        return text
    text = text.strip()
    if text == "":
        return None
    convert = {"int": int, "float": float}.get(type_name)
    if convert is None:
        return text if type_name == "str" else {"true": True, "false": False}.get(text.lower(), text)
    try:
        return check_value(type_name, convert(text))
    except ValueError:
        return text


_STEP_SENTENCE = re.compile(r"^Workflow '(?:[^']|\\')*', step '(?P<step>[^']*)': (?P<rest>.*)$", re.S)
_WORKFLOW_SENTENCE = re.compile(r"^Workflow '(?:[^']|\\')*': (?P<rest>.*)$", re.S)
_STEP_PARTS = [
    (re.compile(r"^(?:unknown module|module '[^']*' has several versions)", re.I), ("module",)),
    (re.compile(r"(?:has no parameter|needs parameter) '(?P<x>[^']*)'", re.I), ("params",)),
    (re.compile(r"^parameter '(?P<x>[^']*)'", re.I), ("params",)),
    (re.compile(r"has no input pin '(?P<x>[^']*)'", re.I), ("inputs",)),
    (re.compile(r"^input '(?P<x>[^']*)'", re.I), ("inputs",)),
    (re.compile(r"^required input pin '(?P<x>[^']*)'", re.I), ("inputs",)),
    (re.compile(r"^chunk ", re.I), ("chunk",)),
    (re.compile(r"^mode ", re.I), ("mode",)),
    (re.compile(r"^output ", re.I), ("output",)),
]


def problem_of(message: str, pipeline: Pipeline | None = None) -> Problem:
    """The field a ``load_workflow`` (or API) refusal is about, with its sentence."""
    m = _STEP_SENTENCE.match(message)
    if m:
        rest = m.group("rest")
        sentence = _sentence(rest)  # beside its field, "Workflow 'w', step 's': " says nothing more
        for pattern, parts in _STEP_PARTS:
            found = pattern.search(rest)
            if found:
                extra = (found.group("x"),) if "x" in pattern.groupindex else ()
                return Problem(field(m.group("step"), *parts, *extra), sentence)
        return Problem(field(m.group("step")), sentence)
    m = _WORKFLOW_SENTENCE.match(message)
    rest = m.group("rest") if m else message
    sentence = _sentence(rest)
    named = re.match(r"^step name '(?P<s>[^']*)' is used twice", rest)
    if named:
        return Problem(field(named.group("s"), "name"), sentence)
    cycle = re.match(r"^the steps form a cycle: (?P<c>.*?)\.?$", rest)
    if cycle:
        return Problem(_cycle_field(cycle.group("c").split(" -> "), pipeline), sentence)
    pyd = re.match(r"^field (?P<f>[\w.]+): ", rest)
    if pyd:
        return Problem(_pydantic_field(pyd.group("f"), pipeline), _sentence(rest[pyd.end():]))
    if re.match(r"^a workflow named '[^']*'", rest, re.I):  # exists, or is saved with other steps
        return Problem("name", sentence)
    if re.search(r"\bdataset\b", rest, re.I) and "'dataset'" not in rest:  # a run refused over its dataset
        return Problem("dataset", sentence)
    return Problem(field(), sentence)


def _cycle_field(cycle: list[str], pipeline: Pipeline | None) -> str:
    """The input pin of the cycle's first step that reads from the step before it."""
    if len(cycle) >= 2 and pipeline is not None:
        try:
            first, before = pipeline.get(cycle[0]), cycle[-2]
        except KeyError:
            return field()
        for pin, src in first.inputs.items():
            if src.partition(".")[0] == before and "." in src:
                return field(first.name, "inputs", pin)
    return field(cycle[0]) if cycle else field()


def _pydantic_field(path: str, pipeline: Pipeline | None) -> str:
    parts = path.split(".")
    if parts[0] != "steps" or len(parts) < 2:
        return parts[0]
    if parts[1].isdigit() and pipeline is not None and int(parts[1]) < len(pipeline.steps):
        return field(pipeline.steps[int(parts[1])].name, *parts[2:])
    return field()


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!", ")")) else text + "."
