"""The contents API's paths: a file's folder and name, a name in a folder, hidden names.

Rules:
- a path is ``/``-separated and relative to the federation's root (``home/sub/a.txt``),
  its outer slashes already stripped; the root is ``""``;
- these are string operations only: nothing here checks a path or reaches a backend (the
  manager checks the federation's path rules);
- a name starting with ``.`` is hidden, but for the folder of job logs (``.skerry-logs``):
  the run monitor and the CLI link the output notebooks in it.
"""

from skerry.workload.loglinks import LOG_FOLDER


def parent(path: str) -> str:
    """The folder of a path (``""``: the root)."""
    return path.rpartition("/")[0]


def name(path: str) -> str:
    """The last segment of a path."""
    return path.rpartition("/")[2]


def join(folder: str, name: str) -> str:
    """A name in a folder (the root included)."""
    return f"{folder}/{name}" if folder else name


def hidden(name: str) -> bool:
    return name.startswith(".") and name != LOG_FOLDER
