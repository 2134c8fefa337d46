"""GET, HEAD and PUT of a plain file on a local adaptor, answered without wsgidav's
generic machinery (a resource object, metadata calls at each step, a generator per body).

``FastFiles`` is a wsgidav middleware placed after authentication. It answers only the
plain case and hands everything else on to wsgidav untouched:

- the path is a file of a local adaptor (GET, HEAD), or a file or a new name in an
  existing folder of a writable local adaptor (PUT, with a ``Content-Length``);
- no conditional header, ``Range``, ``Content-Encoding``, ``Content-Range`` or
  ``X-OC-Mtime``: those rules are wsgidav's;
- anything unexpected (a folder, a link, a missing file, a name the provider hides, an
  unreadable file) goes to wsgidav, which answers it as it always has.

Its answers are wsgidav's own: the same headers (``ETag`` from the provider's rule,
``Last-Modified``, ``Content-Type``, ``Accept-Ranges``, ``Date``), 201 or 204 with the
new ``ETag`` for a PUT. A PUT is one atomic write (``skerry.adaptors.atomic``: a hidden
temporary name in the same folder, renamed into place when the body is whole; a short
body is a 400 and nothing is written) inside wsgidav's lock-manager write transaction,
so a locked file answers 423 as it would there.
"""

import contextlib
import os
from stat import S_ISREG
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import HTTP_CREATED, HTTP_NO_CONTENT
from wsgidav.mw.base_mw import BaseMiddleware

from . import atomic
from .davprovider import CONDITIONS, cut_short, etag_of, http_errors
from .writefeed import WRITTEN

BLOCK_SIZE = 1024 * 1024  # what GET reads and PUT receives at a time: the same as wsgidav's blocks

_FOR_WSGIDAV = (*CONDITIONS, "HTTP_RANGE", "HTTP_CONTENT_ENCODING", "HTTP_CONTENT_RANGE", "HTTP_X_OC_MTIME")


class FastFiles(BaseMiddleware):
    """See the module's rules. Uses the provider's ``local_file(path, write=...)``."""

    def is_disabled(self) -> bool:
        return False

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        if method in ("GET", "HEAD", "PUT") and not any(h in environ for h in _FOR_WSGIDAV):
            provider = environ.get("wsgidav.provider")
            local_file = getattr(provider, "local_file", None)
            found = local_file(environ["PATH_INFO"], write=method == "PUT") if local_file else None
            if found is not None:
                fspath, ospath = found
                if method == "PUT":
                    answer = self._put(environ, start_response, provider, fspath, ospath)
                else:
                    answer = self._get(environ, start_response, provider, fspath, ospath, head=method == "HEAD")
                if answer is not None:
                    return answer
        return self.next_app(environ, start_response)

    def _get(self, environ, start_response, provider, fspath, ospath, head):
        try:  # non-blocking: opening a FIFO with no writer would hold this thread for good
            fd = os.open(ospath, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # missing, a folder, a link (local_file's rule), not readable: wsgidav's answer
            return None
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            os.close(fd)
            return None
        start_response("200 OK", [
            ("Content-Length", str(st.st_size)),
            ("Last-Modified", util.get_rfc1123_time(st.st_mtime)),
            ("Content-Type", provider.content_type(fspath.rpartition("/")[2], environ)),
            ("Date", util.get_rfc1123_time()),
            ("ETag", _etag_header(fspath, st)),
            ("Accept-Ranges", "bytes")])
        if head or st.st_size <= BLOCK_SIZE:
            try:  # plain os calls: a file object would fstat the file again
                return [b""] if head else [_read_all(fd, st.st_size)]
            finally:
                os.close(fd)
        return _blocks(open(fd, "rb", buffering=0), st.st_size)  # closed by the body's end

    def _put(self, environ, start_response, provider, fspath, ospath):
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.isdigit() or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return None
        try:
            existing = os.lstat(ospath)
        except FileNotFoundError:
            existing = None
        except OSError:
            return None
        if existing is not None and not S_ISREG(existing.st_mode):
            return None  # a folder there (405), a link (local_file's rule): wsgidav's answers
        locks = provider.lock_manager
        transaction = (locks.write_transaction(url=quote(environ["PATH_INFO"]), token_list=[],
                                               principal=environ.get("wsgidav.user_name"))
                       if locks else contextlib.nullcontext())
        try:
            with transaction, http_errors():
                try:
                    written = atomic.write_local(ospath, _body(environ["wsgi.input"], int(length)))
                except atomic.NoFolder:
                    written = None
        finally:
            provider.invalidate(fspath)
        if written is None:
            return None  # no folder for it (409): wsgidav's answer, the body still unread
        environ[WRITTEN] = {"size": written.st_size, "mtime": written.st_mtime}  # for the find index's feed
        status = HTTP_CREATED if existing is None else HTTP_NO_CONTENT
        return util.send_status_response(environ, start_response, status,
                                         add_headers=[("ETag", _etag_header(fspath, written))])


def _etag_header(fspath: str, st: os.stat_result) -> str:
    """The ETag header's value: the provider's rule on the same facts its listings hold."""
    return f'"{etag_of({"name": fspath, "size": st.st_size, "mtime": st.st_mtime})}"'


def _body(stream, length: int):
    """The request body, ``length`` bytes in blocks; a 400 if it ends before."""
    left = length
    while left:
        chunk = stream.read(min(left, BLOCK_SIZE))
        if not chunk:  # the client went away half-way
            raise cut_short(length - left, length)
        yield chunk
        left -= len(chunk)


def _read_all(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``fd`` (fewer where the file ended sooner)."""
    data = os.read(fd, size)
    while len(data) < size:  # a read may return less than asked (a file being written)
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


def _blocks(f, size: int):
    """A file's body in blocks, closed at its end (or when the server stops early)."""
    with f:
        left = size
        while left > 0:
            block = f.read(min(left, BLOCK_SIZE))
            if not block:
                break
            yield block
            left -= len(block)
