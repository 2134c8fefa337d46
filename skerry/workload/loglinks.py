"""Where a job's log opens: its location, as the API gives it (``log``), made a link.

    log_href("skerry://home/out/.skerry-logs/7.ipynb", "/user/alice/")
    # -> "/user/alice/lab/tree/home/out/.skerry-logs/7.ipynb"

Used by the run monitor (links relative to the user's Jupyter server) and the CLI (absolute,
from the platform's URL and the run's owner). Rules:

- ``skerry://<adaptor>/<path>`` opens in the owner's Jupyter server under ``prefix``
  (default ``$JUPYTERHUB_SERVICE_PREFIX``: the server this runs in), whose root holds a
  folder per adaptor: ``lab/tree/<adaptor>/<path>`` for a notebook (the output notebook of a
  notebook step), ``files/<adaptor>/<path>`` for anything else;
- an http(s) URL is its own link;
- any other location has no link (None): it is shown as text;
- the logs' folder (``LOG_FOLDER``, beside a step's outputs) has a dot name, kept out of
  listings, yet the server opens what is in it: the links lead there.
"""

from urllib.parse import quote

from skerry import config

__all__ = ["log_href", "LOG_FOLDER"]

LOG_FOLDER = ".skerry-logs"  # a notebook step's output notebooks, beside its outputs


def log_href(location: str | None, prefix: str | None = None) -> str | None:
    """The link to a job's log for the user's Jupyter server, or None (see the rules)."""
    if not location:
        return None
    if location.startswith(("http://", "https://")):
        return location
    path = location.removeprefix("skerry://").strip("/")
    if location.startswith("skerry://") and "/" in path:
        prefix = config.HUB_SERVICE_PREFIX.get() if prefix is None else prefix
        return prefix.rstrip("/") + "/" + ("lab/tree/" if path.endswith(".ipynb") else "files/") + quote(path)
    return None
