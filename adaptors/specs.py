"""Adaptor specs: what storage a user has, validated when loaded.

An adaptor is one top-level folder of the user's ``skerry://`` federation::

    {"name": "hpc", "type": "sftp", "host": "login.hpc.example", "username": "alice",
     "path": "/scratch/alice", "credentials": "hpc-key", "read_only": false}

``credentials`` names an entry of the user's credential store (never the secret
itself): specs can be shown, logged and returned by APIs; secrets cannot.
"""

import functools
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from skerry.errors import ConfigError

from .types import NAME, SpecBase, adaptor_types

__all__ = ["NAME", "AdaptorSpec", "load_spec", "load_specs"]

AdaptorSpec = SpecBase  # any adaptor spec: the type's own model (``skerry.adaptors.types``)


@functools.cache
def _validators() -> tuple[TypeAdapter, TypeAdapter]:
    """(one spec, a list of specs): the union of every registered type's spec, told apart by ``type``."""
    models = tuple(kind.spec for kind in adaptor_types().values())
    one = Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 (a runtime tuple of models)
    return TypeAdapter(one), TypeAdapter(list[one])


def load_spec(data: dict[str, Any]) -> AdaptorSpec:
    """Validate one adaptor spec; raises ConfigError naming the bad field (never its value)."""
    try:
        return _validators()[0].validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])  # loc[0] is the type tag
        if first["type"].startswith("union_tag"):
            raise ConfigError(f"adaptor spec: 'type' must be one of {', '.join(adaptor_types())}.") from None
        if not where:
            raise ConfigError(f"adaptor spec: {first['msg']}.") from None
        raise ConfigError(f"adaptor spec field {where!r}: {first['msg']}.") from None


def load_specs(data: list[dict[str, Any]]) -> list[AdaptorSpec]:
    """Validate a list of adaptor specs; raises ConfigError naming the first bad field."""
    try:
        specs = _validators()[1].validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"adaptor spec {where}: {first['msg']}") from None
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"adaptor names must be unique: {', '.join(dupes)} appear more than once")
    return specs
