"""skerry: a Jupyter-centric data infrastructure.

JupyterHub spawns, for every user, a micro-infrastructure: a Jupyter server and a
WebDAV endpoint over that user's storage. ``skerry up`` runs it all on one machine.

The core package (this folder) imports neither Jupyter nor wsgidav; the components
live in the subpackages ``skerry.hub``, ``skerry.adaptors``, ``skerry.extensions``
and ``skerry.kernels``. Loaded on first use:

- ``skerry.Pipeline`` (a workflow in code), ``skerry.Builder`` (the pipeline builder
  widget), ``skerry.Monitor`` (the run monitor widget), from ``skerry.extensions``;
- in a skerry kernel, its session (``skerry.kernels.session``): ``skerry.session``, and
  its parts ``skerry.fs`` (the ``skerry://`` federation), ``skerry.client`` (a Dask client
  to the kernel's pool), ``skerry.api`` (the workload API as the user), ``skerry.ready()``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Pipeline", "Builder", "Monitor", "session", "fs", "client", "api", "ready"]

_WIDGETS = {"Pipeline": "skerry.extensions.pipeline", "Builder": "skerry.extensions.builder",
            "Monitor": "skerry.extensions.monitor"}
_SESSION = ("fs", "client", "api", "ready")


def __getattr__(name: str):
    # lazy: ``import skerry`` stays light; each name loads its module on first use
    if name in _WIDGETS:
        import importlib

        return getattr(importlib.import_module(_WIDGETS[name]), name)
    if name == "session" or name in _SESSION:
        from skerry.kernels.session import current

        return current() if name == "session" else getattr(current(), name)
    raise AttributeError(f"module 'skerry' has no attribute {name!r}")
