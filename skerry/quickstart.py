"""Start skerry's processes without imports they never use: ``python -m skerry.quickstart MODULE [ARGS...]``.

jsonschema imports an IRI format checker (``rfc3987_syntax``) when it is first imported,
and that package compiles about 35 Lark parsers as it loads: 1.5-2 s of CPU in every
process that imports nbformat or jupyter_events, which is the hub, every user's Jupyter
server and every papermill run (jsonschema issue #1428). No schema these processes check
uses the ``iri`` formats, so skerry's processes leave the package out; jsonschema then
leaves those two formats unchecked, as it does wherever the package is not installed.
On 2 cores this halves a user's Jupyter server start.

JupyterLab, when its app module is imported, asks yarn for the user's npm registry: a node
process, 0.25 s of CPU at every user server start. Only the PyPI extension manager uses the
registry, and users' servers run the read-only one (extensions come with the platform's
Python, which users cannot write to), so their servers skip the question (``FIXES``).

Rules:

- only a package that is imported at start and never used by skerry's processes is left
  out (``UNUSED``); a program that imports it itself gets a plain ImportError;
- a package already imported is left as it is;
- a fix in ``FIXES`` applies to its module's process only, before the module runs;
- ``MODULE`` runs as ``__main__`` with ``ARGS`` as its arguments, exactly as ``python -m``
  runs it.
"""

import runpy
import sys

__all__ = ["FIXES", "UNUSED", "leave_out_unused", "main", "skip_yarn_registry"]

UNUSED = ("rfc3987_syntax",)  # jsonschema's optional IRI checker: no Jupyter schema uses it


def leave_out_unused() -> None:
    """Make ``import`` of each :data:`UNUSED` package raise ImportError in this process."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # None in sys.modules: import raises ImportError


def skip_yarn_registry() -> None:
    """JupyterLab's ``AppOptions.registry`` defaults to yarn's default registry without
    running yarn (as on a machine without node)."""
    from jupyterlab import commands

    if not hasattr(commands, "_yarn_config"):  # a JupyterLab that no longer has it: nothing to skip
        return
    commands._yarn_config = lambda logger=None: {"yarn config": {}, "npm config": {}}


FIXES = {"jupyterhub.singleuser": (skip_yarn_registry,)}  # {module run: what its process needs first}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m skerry.quickstart MODULE [ARGS...]")
    leave_out_unused()
    for fix in FIXES.get(argv[0], ()):
        fix()
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
