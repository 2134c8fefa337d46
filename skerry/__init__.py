"""skerry: a Jupyter-centric data infrastructure.

JupyterHub spawns, for every user, a micro-infrastructure: a Jupyter server and a
WebDAV endpoint over that user's storage. ``skerry up`` runs it all on one machine.

The core package (this folder) imports neither Jupyter nor wsgidav; the components
live in the subpackages ``skerry.hub``, ``skerry.adaptors``, ``skerry.extensions``
and ``skerry.kernels``, which register these names in the entry-point group ``skerry.names``
(``pyproject.toml``). Loaded on first use:

- ``skerry.Pipeline`` (a workflow in code), ``skerry.Builder`` (the pipeline builder
  widget), ``skerry.Monitor`` (the run monitor widget), from ``skerry.extensions``;
- in a skerry kernel, its session (``skerry.kernels.session``): ``skerry.session``, and
  its parts ``skerry.fs`` (the ``skerry://`` federation), ``skerry.client`` (a Dask client
  to the kernel's pool), ``skerry.api`` (the workload API as the user), ``skerry.ready()``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Pipeline", "Builder", "Monitor", "session", "fs", "client", "api", "ready"]

# the parts of a kernel's session, each an attribute of the ``session`` entry
_SESSION = ("fs", "client", "api", "ready")
_GROUP = "skerry.names"


def __getattr__(name: str):
    # lazy, and through packaging metadata: ``import skerry`` stays light, and the core never
    # imports the components that provide these names (they register in the entry-point group)
    provider = "session" if name in _SESSION else name
    if provider not in ("session", "Pipeline", "Builder", "Monitor"):
        raise AttributeError(f"module 'skerry' has no attribute {name!r}")
    from importlib.metadata import entry_points

    found = entry_points(group=_GROUP, name=provider)
    if not found:
        raise AttributeError(f"skerry.{name} is provided by the entry point {provider!r} of group {_GROUP!r}, "
                             "which is not installed: reinstall skerry (pip install skerry)")
    value = next(iter(found)).load()
    if provider == "session":
        session = value()
        return session if name == "session" else getattr(session, name)
    return value
