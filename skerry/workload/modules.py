"""Computation modules: what a job runs, with typed pins (from BalticLSC's modules).

A module spec says, and is validated when it is loaded (``load_module``):

- ``name`` and ``version``: a workflow step names its module as ``name@version``;
- ``inputs`` and ``outputs``: data pins. A pin's ``kind`` is ``single`` (one file per
  execution) or ``multiple`` (a list of files per execution, BalticLSC's token
  multiplicity); its ``type`` is a data type word (``file``, ``files``, ``csv``...; ``any``
  matches every type) that the workflow checks when it wires an output to an input.
  An input pin's ``pattern`` is a glob the file names it accepts must match; a single
  output pin's ``file_name`` is the template of the file it writes (``{name}``, ``{stem}``,
  ``{suffix}`` of the job's first input file, ``{job}``, and the parameters);
- ``parameters``: name -> type (``int``, ``float``, ``str``, ``bool``) and default; one
  without a default is required;
- ``resources``: ``cpu`` (cores), ``memory`` (bytes, or ``"512MiB"``/``"2GB"``), ``gpu``
  (devices): a job needing a GPU runs only on workers that declare one, in pool
  ``gpu`` (``pool_of``; every other job runs in pool ``cpu``);
- how it runs, exactly one of: ``callable`` (``"pkg.mod:func"``, called with a
  :class:`skerry.workload.executors.JobContext`), ``command`` (an argv list, never a
  shell string, with ``{pin}``/``{param}`` placeholders, ``{input}``/``{output}`` for
  the module's only input/output pin; ``{{`` and ``}}`` are literal braces), or
  ``notebook`` (an fsspec URL of a notebook run by papermill, one execution per job).

Every bad spec raises :class:`skerry.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skerry.errors import ConfigError

__all__ = [
    "Pin",
    "Parameter",
    "Resources",
    "ModuleSpec",
    "ModuleRegistry",
    "load_module",
    "pool_of",
    "parse_memory",
    "PLACEHOLDER",
]

_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
# a placeholder in a command argument: {name}; {{ and }} are literal braces
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "str": (str,),
    "bool": (bool,),
}
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}


def parse_memory(value: int | str) -> int:
    """Bytes from ``1048576``, ``"512MiB"``, ``"2GB"``, ``"1.5Gi"``."""
    if isinstance(value, bool):
        raise ValueError("memory must be a number of bytes or a size like '512MiB'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("memory cannot be negative")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size (use bytes or e.g. '512MiB', '2GB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pin(_Spec):
    """A data pin: where files come in (input) or go out (output).

    ``pattern`` (input pins) is how the scheduler picks a dataset's files for the pin
    (:meth:`accepts`; executors take the files they are given); for a ``multiple`` output
    pin of a command or notebook it selects which written files are outputs.
    """

    name: str = Field(pattern=_NAME)
    kind: Literal["single", "multiple"] = "single"
    type: str = Field(default="file", pattern=r"^[a-z][a-z0-9_.-]*$")
    pattern: str | None = None
    file_name: str | None = None
    optional: bool = False

    def accepts(self, file_name: str) -> bool:
        """Whether an input file of this name is for this pin (its glob ``pattern``)."""
        return self.pattern is None or fnmatch.fnmatchcase(file_name, self.pattern)

    def fits(self, upstream: Pin) -> bool:
        """Whether ``upstream``'s data type may flow into this pin."""
        return "any" in (self.type, upstream.type) or self.type == upstream.type


class Parameter(_Spec):
    """A typed module parameter; without a ``default`` it is required."""

    type: Literal["int", "float", "str", "bool"]
    default: Any = None
    description: str = ""

    @model_validator(mode="after")
    def _default_has_type(self) -> Parameter:
        if self.default is not None:
            check_value(self.type, self.default)
        return self

    @property
    def required(self) -> bool:
        return self.default is None


def check_value(type_name: str, value: Any) -> Any:
    """``value`` if it is of parameter type ``type_name``, else ValueError (bool is no int)."""
    ok = isinstance(value, _PARAM_TYPES[type_name]) and (
        type_name == "bool" or not isinstance(value, bool)
    )
    if not ok:
        raise ValueError(f"{value!r} is not of type {type_name}")
    return float(value) if type_name == "float" else value


class Resources(_Spec):
    """What one job of the module needs from a worker."""

    cpu: float = Field(default=1.0, gt=0)
    memory: int = Field(default=0, ge=0)
    gpu: int = Field(default=0, ge=0)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int:
        return parse_memory(v)


class ModuleSpec(_Spec):
    """A computation module (see the module docstring for the rules)."""

    name: str = Field(pattern=_NAME)
    version: str = Field(default="1", pattern=r"^[A-Za-z0-9_.+-]+$")
    description: str = ""
    inputs: list[Pin] = []
    outputs: list[Pin] = []
    parameters: dict[str, Parameter] = {}
    resources: Resources = Resources()
    callable: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    command: list[str] | None = None
    notebook: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("a command is a non-empty argv list, e.g. ['md5sum', '{input}']")
        return v

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"parameter name {name!r} is not an identifier")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModuleSpec:
        ways = [w for w in ("callable", "command", "notebook") if getattr(self, w) is not None]
        if len(ways) != 1:
            raise ValueError(
                "give exactly one of callable, command or notebook"
                + (f" (got {', '.join(ways)})" if ways else "")
            )
        names = [p.name for p in self.inputs + self.outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"pin names must be unique across inputs and outputs: {dup[0]!r}")
        clash = sorted(set(names) & set(self.parameters))
        if clash:
            raise ValueError(f"{clash[0]!r} is both a pin and a parameter")
        for pin in self.outputs:
            if pin.file_name is not None:
                fields = {"name", "stem", "suffix", "job"} | set(self.parameters)
                for m in re.finditer(r"\{([^{}]*)\}", pin.file_name.replace("{{", "").replace("}}", "")):
                    if re.split(r"[:!.\[]", m.group(1))[0] not in fields:  # {job:>08} is fine
                        raise ValueError(
                            f"file_name {pin.file_name!r} of output pin {pin.name!r}: {{{m.group(1)}}} is "
                            f"none of {', '.join(sorted(fields))}"
                        )
        if self.command is not None:
            known = set(names) | set(self.parameters)
            if len(self.inputs) == 1:
                known.add("input")
            if len(self.outputs) == 1:
                known.add("output")
            for arg in self.command:
                for m in PLACEHOLDER.finditer(arg):
                    if m.group(1) and m.group(1) not in known:
                        raise ValueError(
                            f"command placeholder {{{m.group(1)}}} names no pin or parameter "
                            f"(known: {', '.join(sorted(known)) or 'none'})"
                        )
        return self

    @property
    def ref(self) -> str:
        """``name@version``, as workflow steps name it."""
        return f"{self.name}@{self.version}"

    @property
    def runs_as(self) -> str:
        """``callable``, ``command`` or ``notebook``."""
        return "callable" if self.callable else "command" if self.command else "notebook"

    def input(self, name: str) -> Pin | None:
        return next((p for p in self.inputs if p.name == name), None)

    def output(self, name: str) -> Pin | None:
        return next((p for p in self.outputs if p.name == name), None)

    def resolve_params(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The job's parameters: ``given`` checked against the types, defaults filled in.

        Unknown names, wrong types and missing required parameters raise ConfigError
        (the first of ``param_problems``).
        """
        given = dict(given or {})
        for _name, sentence in self.param_problems(given):
            raise ConfigError(sentence)
        return {name: check_value(p.type, given[name]) if given.get(name) is not None else p.default
                for name, p in self.parameters.items()}

    def param_problem(self, name: str, value: Any) -> str | None:
        """The sentence saying what is wrong with parameter ``name`` = ``value``, or None;
        ``None`` is "not given", a problem only for a required parameter."""
        p = self.parameters.get(name)
        if p is None:
            return f"Module {self.ref} has no parameter {name!r}."
        if value is None:
            return f"Module {self.ref} needs parameter {name!r} ({p.type})." if p.required else None
        try:
            check_value(p.type, value)
        except ValueError as e:
            return f"Parameter {name!r} of module {self.ref}: {e}."
        return None

    def param_problems(self, given: dict[str, Any]) -> list[tuple[str, str]]:
        """Every (parameter, sentence) wrong with ``given``: unknown names first, then in declaration order."""
        names = sorted(set(given) - set(self.parameters)) + list(self.parameters)
        found = ((name, self.param_problem(name, given.get(name))) for name in names)
        return [(name, sentence) for name, sentence in found if sentence]


def _field(loc: tuple) -> str:
    return ".".join(str(x) for x in loc) or "(spec)"


def pool_of(module: dict[str, Any] | ModuleSpec) -> str:
    """The pool a module's jobs run in: ``gpu`` when it needs a GPU, else ``cpu``."""
    return "gpu" if load_module(module).resources.gpu > 0 else "cpu"


def load_module(data: dict[str, Any] | ModuleSpec) -> ModuleSpec:
    """A validated :class:`ModuleSpec` from a dict (parsed JSON/YAML); ConfigError names the field."""
    if isinstance(data, ModuleSpec):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"A module spec is a mapping, not {type(data).__name__}.")
    try:
        return ModuleSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        who = data.get("name", "?")
        raise ConfigError(f"Module {who!r}: field {_field(err['loc'])}: {msg}.") from None


class ModuleRegistry:
    """The modules a workflow may use, looked up by ``name@version`` (or ``name`` when one
    version is known)."""

    def __init__(self, modules: list[ModuleSpec | dict] = ()):
        self._by_ref: dict[str, ModuleSpec] = {}
        for m in modules:
            self.add(m)

    def add(self, module: ModuleSpec | dict) -> ModuleSpec:
        spec = load_module(module)
        if spec.ref in self._by_ref and self._by_ref[spec.ref] != spec:
            raise ConfigError(f"Module {spec.ref} is already defined differently.")
        self._by_ref[spec.ref] = spec
        return spec

    def get(self, ref: str) -> ModuleSpec:
        """The module named by ``ref``; ConfigError if it is unknown or ambiguous."""
        if ref in self._by_ref:
            return self._by_ref[ref]
        if "@" not in ref:
            versions = [m for m in self._by_ref.values() if m.name == ref]
            if len(versions) == 1:
                return versions[0]
            if versions:
                refs = ", ".join(sorted(m.ref for m in versions))
                raise ConfigError(f"Module {ref!r} has several versions ({refs}): name one.")
        raise ConfigError(f"Unknown module {ref!r}.")

    def __contains__(self, ref: str) -> bool:
        try:
            self.get(ref)
        except ConfigError:
            return False
        return True

    def __iter__(self):
        return iter(sorted(self._by_ref.values(), key=lambda m: m.ref))

    def __len__(self) -> int:
        return len(self._by_ref)
