"""The WebDAV application over a user's storage (wsgidav, class 1 and 2).

``make_dav_app(provider, mount_path, authenticator)`` builds a WSGI app that serves a
wsgidav provider (a folder, or the federation: ``davprovider.FederationProvider``) at the
URL path ``mount_path``, with locks and dead properties kept in memory. Authentication
is not wsgidav's: the caller passes a wsgidav middleware class that sets ``wsgidav.auth.user_name`` or answers
401/403 itself, so this module knows nothing of JupyterHub.

PROPFIND on a folder with ``Depth: infinity``, or with no Depth header (which RFC 4918
reads as infinity), is refused with 403 and the ``propfind-finite-depth`` precondition
(RFC 4918 9.1): walking a whole federation (HPC file systems, buckets) in one request is
not something one client may ask for. On a file, infinity means the same as 0 and is
answered (webdav4, for one, sends PROPFIND without Depth to ask whether a path is a file).
"""

import io
import itertools
import os
import threading
from urllib.parse import unquote, urlsplit

from wsgidav.dav_error import HTTP_FORBIDDEN, PRECONDITION_CODE_PropfindFiniteDepth, DAVError
from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.error_printer import ErrorPrinter
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.lock_man.lock_storage import LockStorageDict
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from .davprovider import DeadProperties
from .fastfiles import FastFiles

# wsgidav reads and writes in blocks of this size: 8 KiB (its default) is 2-5x slower
BLOCK_SIZE = 1024 * 1024


def make_dav_app(provider, mount_path: str, authenticator, extra_config: dict | None = None,
                 lock_flag: str | None = None):
    """WsgiDAVApp serving ``provider`` (or a folder, given as a str) at ``mount_path``
    (e.g. ``/dav/alice``), behind ``authenticator``; ``lock_flag``: ``LockStore``'s."""
    if isinstance(provider, str):
        provider = FilesystemProvider(provider, readonly=False)
    config = {
        "mount_path": mount_path.rstrip("/") or None,
        "provider_mapping": {"/": provider},
        "middleware_stack": [ErrorPrinter, authenticator, RefuseInfiniteDepth, FastListing, FastFiles,
                             WsgiDavDirBrowser, RequestResolver],
        "lock_storage": LockStore(lock_flag),
        "property_manager": DeadProperties(),  # in memory, as wsgidav's own
        "block_size": BLOCK_SIZE,
        "verbose": 1,
        "logging": {"enable": False},
        "suppress_version_info": True,
        "dir_browser": {"enable": True, "response_trailer": False, "show_user": True},
        # the authenticator middleware replaces wsgidav's; this only silences its start-up check
        "simple_dc": {"user_mapping": {"*": True}},
    }
    config.update(extra_config or {})
    return refuse_dot_segments(serialize_conditional_writes(WsgiDAVApp(config)))


class LockStore(LockStorageDict):
    """wsgidav's locks, in memory; a look for a path's locks while no lock exists at all is
    answered at once.

    Every write asks for the locks of its path and of each parent (wsgidav's lock manager,
    in its write transaction), each look under the store's own lock: a sixth of a small
    PUT's Python (profiled), where almost always no lock exists. The shortcut reads the
    store without its lock: a lock is only made under the manager's lock, which every
    write's check holds.

    ``flag``: a file kept while any lock exists (made before the first lock is, removed once
    none is left), for a front that answers plain writes itself (``hub.userserver.davfront``).
    """

    def __init__(self, flag: str | None = None):
        super().__init__()
        self.flag = flag

    def get_lock_list(self, path, *, include_root, include_children, token_only):
        if not self._dict:  # None before ``open``, {} with no lock
            return []
        return super().get_lock_list(path, include_root=include_root, include_children=include_children,
                                     token_only=token_only)

    def create(self, path, lock):
        self._lock.acquire_write()  # re-entrant for a writer: the flag and the lock change as one
        try:
            if self.flag:
                with open(self.flag, "a"):
                    pass
            return super().create(path, lock)
        finally:
            self._lock.release()

    def delete(self, token):
        self._lock.acquire_write()
        try:
            return super().delete(token)
        finally:
            self._drop_flag()
            self._lock.release()

    def clear(self):
        self._lock.acquire_write()
        try:
            return super().clear()
        finally:
            self._drop_flag()
            self._lock.release()

    def _drop_flag(self) -> None:
        if self.flag and self._dict is not None and not self._dict:
            try:
                os.unlink(self.flag)
            except FileNotFoundError:
                pass


class RefuseInfiniteDepth(BaseMiddleware):
    """403 ``propfind-finite-depth`` for PROPFIND on a folder with Depth infinity or none.

    Runs after authentication, so that a stranger still gets 401, not a hint.
    """

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "PROPFIND":
            depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()
            if depth == "infinity" and self._is_folder(environ):
                # ErrorPrinter answers with the <DAV:error><propfind-finite-depth/> body
                raise DAVError(HTTP_FORBIDDEN, context_info="PROPFIND with Depth: infinity is refused: use 0 or 1",
                               err_condition=PRECONDITION_CODE_PropfindFiniteDepth)
        return self.next_app(environ, start_response)

    @staticmethod
    def _is_folder(environ) -> bool:
        provider = environ.get("wsgidav.provider")
        res = provider.get_resource_inst(environ["PATH_INFO"], environ) if provider else None
        return res is not None and res.is_collection  # a missing path gets wsgidav's 404


class FastListing(BaseMiddleware):
    """PROPFIND Depth 1 answered by the provider's ``propfind_listing(environ, body)``
    when it has one and it answers (an iterable of bytes); otherwise wsgidav answers, with
    the body handed on untouched.

    An answer of one piece goes with its length; a longer one (a big folder's) is sent
    piece by piece as it is written (chunked), so the transfer runs beside the writing.
    """

    def __call__(self, environ, start_response):
        provider = environ.get("wsgidav.provider")
        listing = getattr(provider, "propfind_listing", None)
        length = environ.get("CONTENT_LENGTH") or "0"
        if (environ.get("REQUEST_METHOD") != "PROPFIND" or listing is None or environ.get("HTTP_DEPTH") != "1"
                or not length.isdigit() or int(length) > 64 * 1024):
            return self.next_app(environ, start_response)
        body = environ["wsgi.input"].read(int(length)) if int(length) else b""
        answer = listing(environ, body)
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self.next_app(environ, start_response)
        pieces = iter(answer)
        first = next(pieces, b"")
        second = next(pieces, None)
        headers = [("Content-Type", "application/xml; charset=utf-8")]
        if second is None:
            start_response("207 Multi-Status", [*headers, ("Content-Length", str(len(first)))])
            return [first]
        start_response("207 Multi-Status", headers)
        return itertools.chain((first, second), pieces)


def refuse_dot_segments(app):
    """400 for any path with a '.' or '..' segment, plain or percent-encoded, or an
    encoded slash ('%2F': no name holds a slash; a server may leave it encoded in PATH_INFO).

    Clients send none (they normalise URLs); wsgidav itself hung on some of them.
    """

    def refused(path):
        segments = unquote(unquote(path)).replace("\\", "/").split("/")
        return any(s in (".", "..") for s in segments) or "%2f" in path.lower()

    def guarded(environ, start_response):
        # the Destination of COPY/MOVE names a path too: the same rule applies to it
        destination = urlsplit(environ.get("HTTP_DESTINATION", "")).path
        if refused(environ.get("PATH_INFO", "")) or refused(destination):
            body = b"Paths with '.' or '..' segments or encoded slashes are refused.\n"
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                               ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return guarded


def head_without_body(app):
    """No body for any HEAD response, whichever layer answered it (wsgidav, a refusal, the
    token check): the server sends what the app returns, and bytes after a HEAD response's
    headers poison a kept-alive connection, so the proxy's next request on it fails (503)."""

    def headless(environ, start_response):
        result = app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "HEAD":
            return result
        try:
            for _ in result:  # run to its end: a generator app calls start_response on its first step
                pass
        finally:
            if hasattr(result, "close"):
                result.close()
        return []

    return headless


_CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF")
_WRITES = {"PUT", "DELETE", "MOVE", "COPY", "PROPPATCH"}


def serialize_conditional_writes(app):
    """Run conditional writes to one path one at a time.

    wsgidav checks ``If-Match`` and then writes; two PUTs with the same ETag could both
    pass the check. Holding a per-path lock over the whole request makes the check and
    the write one step: exactly one wins, the other gets 412.
    """
    locks: dict[str, list] = {}  # path -> [lock, requests holding or waiting for it]
    guard = threading.Lock()

    def serialized(environ, start_response):
        if environ.get("REQUEST_METHOD") not in _WRITES or not any(h in environ for h in _CONDITIONS):
            return app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        with guard:
            entry = locks.setdefault(path, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                # the response is consumed inside the lock: the write is done when it ends
                return list(app(environ, start_response))
        finally:
            with guard:  # the last one out forgets the path: the dict holds only paths in use
                entry[1] -= 1
                if not entry[1]:
                    del locks[path]

    return serialized
