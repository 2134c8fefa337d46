"""skerry.kernels: the kernels "Python 3 (skerry)" and "Python 3 (skerry, GPU)".

Every micro-infrastructure has both: the spawner puts ``JUPYTER_PATH_DIR`` (this
package's ``share/jupyter``, holding ``kernels/skerry`` and ``kernels/skerry-gpu``) first
on ``$JUPYTER_PATH``. A kernel of either starts as ``python -m skerry.kernels.launch
--pool cpu|gpu -f CONNECTION_FILE``: an ipykernel whose namespace holds ``skerry``, the
user's ready session (``skerry.kernels.session``):

- ``skerry.fs``: the ``skerry://`` federation of the user's adaptors;
- ``skerry.client``: a ``distributed.Client`` to the kernel's Dask pool;
- ``skerry.api``: the platform's workload API as the user (the server's hub token).

The session connects in background threads from the first instant of the kernel's
process; the kernel waits for it (a little: ``launch.FIRST_S`` at most) before loading
ipykernel, and a part still connecting after that is waited for only when it is used.
"""

import os

__all__ = ["JUPYTER_PATH_DIR", "KERNELS"]

JUPYTER_PATH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "share", "jupyter")
# kernel spec name -> the Dask pool it connects to
KERNELS = {"skerry": "cpu", "skerry-gpu": "gpu"}
