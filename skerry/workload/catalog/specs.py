"""Modules and workflows: their specs, stored by name and read back.

The specs are checked elsewhere (``skerry.workload.modules``, ``skerry.workload.workflows``);
here they are records.

Rules:
- a module is unique by name and version (``ModuleExists``); without a version, the
  module added last is the one read back;
- a workflow's name is unique in the whole catalog (not per owner);
- a spec is stored as the JSON object that reads back (``inputs.check_metadata``); what
  is read back is detached from any session.
"""

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from ..models import Module, Workflow
from .engine import Database
from .errors import CatalogError, ModuleExists, UnknownModule
from .inputs import check_metadata, check_name

__all__ = ["Specs"]

_WORKFLOW = select(Workflow).where(Workflow.name == bindparam("name"))  # built once (``bulk``)


class Specs(Database):
    """The modules and workflows of the catalog (module docstring)."""

    def add_module(self, name: str, version: str, spec: dict) -> int:
        """Store a module's spec (validated by ``skerry.workload.modules``); its id."""
        check_name(name, "module")
        if not isinstance(version, str) or not version or len(version) > 64:
            raise CatalogError(f"module {name!r}: version must be a non-empty string, got {version!r}")
        spec = check_metadata(spec)
        try:
            with self.writing() as s:
                if s.execute(select(Module.id).where(Module.name == name, Module.version == version)).first():
                    raise ModuleExists(f"module {name} {version} already exists")
                module = Module(name=name, version=version, spec=spec)
                s.add(module)
                s.flush()
                return module.id
        except IntegrityError:
            raise ModuleExists(f"module {name} {version} already exists") from None

    def get_module(self, name: str, version: str | None = None) -> Module:
        """A module at ``version`` (default: the one added last), detached from any session."""
        query = select(Module).where(Module.name == name).order_by(Module.id.desc())
        if version is not None:
            query = query.where(Module.version == version)
        with self.session() as s:
            module = s.execute(query).scalars().first()
        if module is None:
            raise UnknownModule(f"no module named {name!r}" + (f" at version {version!r}" if version else ""))
        return module

    def add_workflow(self, name: str, spec: dict, *, owner: str = "") -> int:
        """Store a workflow's spec (checked by ``skerry.workload.workflows``) for ``owner``; its id."""
        check_name(name, "workflow")
        spec = check_metadata(spec)
        try:
            with self.writing() as s:
                if s.execute(select(Workflow.id).where(Workflow.name == name)).first():
                    raise CatalogError(f"a workflow named {name!r} already exists")
                workflow = Workflow(name=name, owner=owner, spec=spec)
                s.add(workflow)
                s.flush()
                return workflow.id
        except IntegrityError:
            raise CatalogError(f"a workflow named {name!r} already exists") from None

    def get_workflow(self, name: str) -> Workflow:
        """A workflow by name, detached from any session."""
        with self.session() as s:
            workflow = s.execute(_WORKFLOW, {"name": name}).scalar_one_or_none()
        if workflow is None:
            raise CatalogError(f"no workflow named {name!r}")
        return workflow
