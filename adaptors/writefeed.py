"""What a user's WebDAV endpoint writes, told at once to the find index of the Jupyter server
beside it: a file PUT through WebDAV is found by ``find`` at once, not at the next rescan.

    app = tell_writes(app, fd, mount)     # the WebDAV endpoint: the pipe's write end
    follow_writes(fd, index)              # the Jupyter server: a thread reading the other end

The micro-infrastructure's launcher makes the pipe and hands one end to each of its two
processes (``SKERRY_WRITES_OUT``, ``SKERRY_WRITES_IN``): it is theirs alone, both run as the
user. Rules:

- a line per change, JSON ``{"changed": path}`` or ``{"removed": path}`` with a federation
  path (``adaptor/inner``); a request tells only if it succeeded (2xx), once the work is done
  (wsgidav answers after it);
- a PUT answered by ``fastfiles`` (a local adaptor's file) also tells the file as it wrote
  it, ``"size"`` and ``"mtime"`` (``WRITTEN`` in the request's environ): the index records
  those without looking the file up again (in process: 18-29 us a change, 70-83 with the lookup);
- PUT and COPY tell their target, MOVE both ends, DELETE its path; nothing else writes;
- the endpoint's front (nginx, ``hub.userserver.davfront``), handed the same write end, tells
  the PUTs it answers itself in the same form, size and mtime included;
- telling never blocks or fails a request: the write end is non-blocking, and a line the pipe
  has no room for (a reader far behind) is dropped, for the next rescan to find; a line is
  shorter than ``PIPE_BUF``, so the lines of concurrent requests never interleave;
- the reader looks each changed path up and records it (a folder: its adaptor is rescanned);
  a removed path goes from the index with everything under it.
"""

import json
import logging
import os
import select
import threading
from urllib.parse import unquote, urlsplit

__all__ = ["tell_writes", "follow_writes", "apply_change", "WRITTEN"]

log = logging.getLogger(__name__)

WRITES = {"PUT", "COPY", "MOVE", "DELETE"}
WRITTEN = "skerry.written"  # environ: a PUT's file as ``fastfiles`` wrote it, {"size", "mtime"}
MAX_LINE = select.PIPE_BUF  # one write(2) of at most this much is atomic on a pipe


def _federation_path(url_path: str, mount: str) -> str | None:
    """``adaptor/inner`` of a request path below ``mount`` (``/dav/alice``), or None."""
    mount = mount.rstrip("/")
    if mount and not (url_path == mount or url_path.startswith(mount + "/")):
        return None
    inner = url_path[len(mount):].strip("/")
    return inner or None


def tell_writes(app, fd: int, mount: str):
    """WSGI middleware over the WebDAV app at ``mount``: each successful write is a line on ``fd``."""
    os.set_inheritable(fd, False)  # this process's own: no child of it writes there

    def tell(changes: list[tuple[str, str]], written: dict | None) -> None:
        for kind, path in changes:
            said = {kind: path, **(written or {})}  # ``written``: a PUT's one change, its file
            line = (json.dumps(said) + "\n").encode()
            if len(line) > MAX_LINE:
                continue  # would not be atomic: the rescan finds it
            try:
                os.write(fd, line)
            except OSError:  # full (EAGAIN), or the reader is gone (EPIPE): never the request's problem
                return

    def changes_of(environ) -> list[tuple[str, str]]:
        method = environ["REQUEST_METHOD"]
        here = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        try:  # PEP 3333: the request's bytes as latin-1 (read before wsgidav decodes them in place)
            here = here.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass  # not UTF-8: as the server gave it
        source = _federation_path(here, mount)
        target = None
        if method in ("COPY", "MOVE"):
            target = _federation_path(unquote(urlsplit(environ.get("HTTP_DESTINATION", "")).path), mount)
        found = {"PUT": [("changed", source)], "DELETE": [("removed", source)],
                 "COPY": [("changed", target)], "MOVE": [("removed", source), ("changed", target)]}[method]
        return [(kind, path) for kind, path in found if path]

    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD") not in WRITES:
            return app(environ, start_response)
        try:
            changes = changes_of(environ)
        except Exception:  # never the request's problem: the rescan finds what was missed
            log.exception("WebDAV write feed: a request's paths were not understood")
            changes = []

        def starting(status, headers, exc_info=None):
            if status[:1] == "2":
                tell(changes, environ.get(WRITTEN) if environ["REQUEST_METHOD"] == "PUT" else None)
            return start_response(status, headers, exc_info)

        return app(environ, starting)

    return wrapped


def apply_change(index, change: dict) -> None:
    """One line of the feed, applied to ``index`` (a ``FindIndex``)."""
    if isinstance(change.get("removed"), str):
        index.forget(change["removed"])
        return
    path = change.get("changed")
    if not isinstance(path, str):
        return
    index.fs.invalidate_cache(path)  # the listing caches of this process predate the write
    size, mtime = change.get("size"), change.get("mtime")
    if _number(size) and _number(mtime):  # the file as the endpoint wrote it: no lookup
        index.record(path, {"name": path, "type": "file", "size": size, "mtime": mtime})
        return
    try:
        info = index.fs.info(path)
    except FileNotFoundError:
        index.forget(path)  # gone again already
        return
    if info.get("type") == "directory":  # a folder copied or moved in: list its adaptor again
        index.scan(path.split("/", 1)[0])
    else:
        index.record(path, info)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def follow_writes(fd: int, index) -> threading.Thread:
    """Read the feed on ``fd`` in a daemon thread, applying each change to ``index``, to its end."""
    os.set_inheritable(fd, False)  # not for the kernels and terminals this server starts

    def run():
        with os.fdopen(fd, "rb") as feed:
            for line in feed:
                try:
                    change = json.loads(line)
                    if isinstance(change, dict):
                        apply_change(index, change)
                except Exception:  # one bad line or lookup must not end the feed
                    log.exception("find index: a change from the WebDAV endpoint was not applied")

    thread = threading.Thread(target=run, name="skerry-write-feed", daemon=True)
    thread.start()
    return thread
