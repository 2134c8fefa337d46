"""Install the skerry kernel specs where Jupyter looks: ``python -m skerry.kernels.install``.

Inside the platform nothing needs installing: the spawner puts this package's kernel specs
on ``$JUPYTER_PATH``. From a plain shell (papermill on your own machine, with ``SKERRY_URL``
and ``SKERRY_TOKEN`` set), ``-k skerry`` needs them installed once, as ipykernel's own
``python -m ipykernel install`` does for "Python 3".

Rules: ``--user`` (the default) installs into your Jupyter data folder (``~/.local/share/
jupyter`` on Linux), ``--sys-prefix`` into this Python's environment; both specs
(``skerry``, ``skerry-gpu``) are installed, replacing older copies (Jupyter always does); a failure is a sentence
on stderr and exit status 1.
"""

import argparse
import os
import sys

from jupyter_client.kernelspec import KernelSpecManager

from skerry.kernels import JUPYTER_PATH_DIR, KERNELS

__all__ = ["install", "main"]


def install(user: bool = True) -> list[str]:
    """Install every skerry kernel spec; the folders they went to."""
    manager = KernelSpecManager()
    return [manager.install_kernel_spec(os.path.join(JUPYTER_PATH_DIR, "kernels", name), name, user=user,
                                        prefix=None if user else sys.prefix)
            for name in KERNELS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skerry.kernels.install", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="into your Jupyter data folder (the default)")
    where.add_argument("--sys-prefix", action="store_true", help="into this Python's environment")
    args = parser.parse_args(argv)
    try:
        folders = install(user=not args.sys_prefix)
    except OSError as e:
        print(f"skerry: the kernel specs could not be installed: {e.strerror or e} "
              f"({getattr(e, 'filename', None) or 'no file named'})", file=sys.stderr)
        return 1
    for folder in folders:
        print(f"installed {os.path.basename(folder)} in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
