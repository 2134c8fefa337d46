"""The table of adaptor types: one class per type, registered in the entry-point group
``skerry.adaptor_types``, read here and nowhere else.

A type answers every question the rest of skerry asks about it:

- ``spec``: its options, a pydantic model with ``type: Literal["<name>"]`` (subclass of
  ``SpecBase``), validated when an adaptor is loaded (``skerry.adaptors.specs``);
- ``module`` and ``package``: the fsspec backend module that must import, and the
  package to install when it does not (the install hint);
- ``object_store``: a write appears whole only when it completes, so it is written in
  place (no temporary name), and an empty folder is a ``folder/`` object;
- ``needs_parents``: the backend cannot write a file into a missing folder;
- ``local``: its files are folders of the machine the server runs on;
- ``credential_kinds``: the kinds of stored credential its adaptors may use;
- ``key_setup``: a password may be used once to install a key of skerry's on its host
  (credential body ``sftp-key-setup``, from the adaptor's host, port and username);
- ``filesystem(spec, secrets)``: the configured fsspec filesystem and its root folder.

Adding a type (three steps): subclass ``AdaptorType`` and set the attributes above;
write ``filesystem``; register the class in ``pyproject.toml``::

    [project.entry-points."skerry.adaptor_types"]
    gcs = "mypackage.gcs:GcsType"

Rules:
- the table is read once, on first use; an entry point whose class names another type
  is refused (``ConfigError``), and so is an empty table (skerry is not installed);
- ``memory`` is no object store: its rename is atomic and its folders are real, so it
  behaves as a local disk does.
"""

import functools
import importlib
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import ClassVar
from collections.abc import Mapping

from fsspec.implementations.dirfs import DirFileSystem
from pydantic import BaseModel, ConfigDict, Field

from skerry.errors import ConfigError

__all__ = ["GROUP", "NAME", "SpecBase", "AdaptorType", "adaptor_types", "adaptor_type"]

GROUP = "skerry.adaptor_types"
NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class SpecBase(BaseModel):
    """What every adaptor spec has; a type's ``spec`` adds ``type: Literal[...]`` and its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME, description="top-level folder name in skerry://")
    read_only: bool = False
    credentials: str | None = Field(None, description="name of an entry in the credential store")


class AdaptorType:
    """One adaptor type. A subclass sets the class attributes and writes ``filesystem``."""

    name: ClassVar[str] = ""
    spec: ClassVar[type[SpecBase]] = SpecBase
    module: ClassVar[str] = ""
    package: ClassVar[str] = ""
    object_store: ClassVar[bool] = False
    needs_parents: ClassVar[bool] = False
    local: ClassVar[bool] = False
    credential_kinds: ClassVar[frozenset[str]] = frozenset()
    key_setup: ClassVar[bool] = False

    def backend(self, module: str | None = None):
        """The backend module (or ``module``, one its package brings), imported now; a
        ConfigError naming the package to install if it cannot be imported."""
        try:
            return importlib.import_module(module or self.module)
        except ImportError as e:
            # skerry depends on every built-in backend: a missing one is a broken or partial install
            raise ConfigError(f"Install {self.package} to use {self.name} adaptors: pip install {self.package} "
                              f"(skerry depends on it; this Python cannot import it: {e})") from None

    def filesystem(self, spec: SpecBase, secrets: dict) -> tuple[object, str]:
        """(fsspec filesystem, root folder in it) of one adaptor; ``secrets``: its credential entry."""
        raise NotImplementedError(f"adaptor type {self.name!r} must write filesystem(spec, secrets)")

    def rooted(self, fs, root: str) -> DirFileSystem:
        """The adaptor's filesystem: ``fs`` seen from ``root``."""
        return DirFileSystem(path=root, fs=fs)

    def check_credential(self, credential: str, entry: dict) -> None:
        """Refuse (ConfigError) a stored credential ``entry`` (``kind``, ``public``) this type cannot use."""
        if entry["kind"] not in self.credential_kinds:
            kinds = " or ".join(sorted(self.credential_kinds)) or "none"
            raise ConfigError(f"credential {credential!r} is of kind {entry['kind']!r}; "
                              f"{self.name} adaptors take {kinds}.")


@functools.cache
def adaptor_types() -> Mapping[str, AdaptorType]:
    """{type name: type}, from the entry-point group, sorted by name."""
    found = {}
    for ep in entry_points(group=GROUP):
        kind = ep.load()()
        if kind.name != ep.name:
            raise ConfigError(f"entry point {ep.name!r} of {GROUP} names {ep.value}, whose type is {kind.name!r}")
        found[ep.name] = kind
    if not found:
        raise ConfigError(f"no adaptor types are registered ({GROUP}): is skerry installed (pip install -e .)?")
    return MappingProxyType(dict(sorted(found.items())))


def adaptor_type(name: str) -> AdaptorType:
    """The type called ``name``; ConfigError naming the known ones if there is none."""
    kinds = adaptor_types()
    if name not in kinds:
        raise ConfigError(f"unknown adaptor type {name!r} (types: {', '.join(kinds)})")
    return kinds[name]
