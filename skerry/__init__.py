"""skerry: a Jupyter-centric data infrastructure.

JupyterHub spawns, for every user, a micro-infrastructure: a Jupyter server and a
WebDAV endpoint over that user's storage. ``skerry up`` runs it all on one machine.

The core package (this folder) imports neither Jupyter nor wsgidav; the components
live in the subpackages ``skerry.hub``, ``skerry.adaptors``, ``skerry.extensions``
and ``skerry.kernels``. ``skerry.Pipeline`` (``skerry.extensions.pipeline``) builds a
workflow in code; it is imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Pipeline"]


def __getattr__(name: str):
    # lazy: ``import skerry`` stays light; ``skerry.Pipeline`` loads the pipeline model on use
    if name == "Pipeline":
        from skerry.extensions.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'skerry' has no attribute {name!r}")
