"""skerry: a Jupyter-centric data infrastructure.

JupyterHub spawns, for every user, a micro-infrastructure: a Jupyter server and a
WebDAV endpoint over that user's storage. ``skerry up`` runs it all on one machine.

The core package (this folder) imports neither Jupyter nor wsgidav; the components
live in the subpackages ``skerry.hub``, ``skerry.adaptors``, ``skerry.extensions``
and ``skerry.kernels``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
