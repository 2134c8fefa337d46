"""Where a job's log opens: its location, as the API gives it (``log``), made a link.

    log_href("skerry://home/out/.skerry-logs/7.ipynb", "/user/alice/")
    # -> "/user/alice/lab/tree/out/.skerry-logs/7.ipynb"

Used by the run monitor (links relative to the user's Jupyter server) and the CLI (absolute,
from the platform's URL and the run's owner). Rules:

- ``skerry://home/<path>`` opens in the owner's Jupyter server under ``prefix`` (default
  ``$JUPYTERHUB_SERVICE_PREFIX``: the server this runs in): ``lab/tree/<path>`` for a
  notebook (the output notebook of a notebook step), ``files/<path>`` for anything else;
- an http(s) URL is its own link;
- any other location has no link (None): it is shown as text.
"""

from skerry import config

__all__ = ["log_href"]


def log_href(location: str | None, prefix: str | None = None) -> str | None:
    """The link to a job's log for the user's Jupyter server, or None (see the rules)."""
    if not location:
        return None
    if location.startswith(("http://", "https://")):
        return location
    if location.startswith("skerry://home/"):
        prefix = config.HUB_SERVICE_PREFIX.get() if prefix is None else prefix
        path = location.removeprefix("skerry://home/")
        return prefix.rstrip("/") + "/" + ("lab/tree/" if path.endswith(".ipynb") else "files/") + path
    return None
