"""What granian's WSGI needs from an app that PEP 3333 does not ask of it.

``for_granian(app)`` wraps a WSGI app (the WebDAV endpoint's) so that:

- a read of ``wsgi.input`` stops at the body's end (``Content-Length``): granian's
  ``read(n)`` waits for ``n`` bytes, where PEP 3333 lets it return what the body has
  (wsgidav reads a 10 KB body in 1 MiB blocks, and each PUT took a second);
- an app that calls ``start_response`` only when its iterable takes its first step
  (wsgidav answers GET from a generator) is stepped once before granian gets the
  response: granian reads the status when the app returns, and answered such responses
  with 200 and none of their headers (granian issue 845, closed as not planned);
- what the app left unread of the body is read before the answer goes out, as cheroot does
  (RFC 9112 9.6: a server that answers before reading the whole body should not close the
  connection until it has): granian answered a refused PUT (a 412 for a stale ``If-Match``)
  with its 1 MiB body unread, dropped the connection the proxy was still sending on, and
  Traefik answered 502 to a quarter of such PUTs;
- the process's environment is not in a request's environ: granian copies every variable
  of it into each request's (PEP 3333 allows it), and the endpoint's holds its hub API
  token and identity key. The app reads its settings from ``skerry.config``, never from a
  request.

A chunked body (no ``Content-Length``) is otherwise left as granian reads it.
"""

import itertools

from skerry import config


class _BodyOfLength:
    """``wsgi.input`` that ends after ``length`` bytes."""

    def __init__(self, stream, length: int):
        self.stream = stream
        self.left = length

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.stream.read(size)
        self.left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = self.stream.readline(self.left if size is None or size < 0 else min(size, self.left))
        self.left -= len(line)
        return line

    def __iter__(self):
        return iter(self.readline, b"")


# what a request's environ holds of its own (CGI and WSGI names), whatever the process's environment holds
_REQUEST_NAMES = ("HTTP_", "CONTENT_", "SERVER_", "REMOTE_", "REQUEST_", "PATH_INFO", "QUERY_STRING", "SCRIPT_NAME",
                  "GATEWAY_INTERFACE", "wsgi.")


def for_granian(app):
    process_only = [name for name in config.environment() if not name.startswith(_REQUEST_NAMES)]

    def wrapped(environ, start_response):
        for name in process_only:  # granian's copy of the process's environment (its secrets)
            environ.pop(name, None)
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            environ["wsgi.input"] = _BodyOfLength(environ["wsgi.input"], int(length))
        started = []

        def starting(status, headers, exc_info=None):
            started.append(status)
            _drain(environ["wsgi.input"])
            return start_response(status, headers, exc_info)

        result = app(environ, starting)
        if started:
            return result
        steps = iter(result)
        try:
            first = next(steps)
        except StopIteration:
            first = b""
        except BaseException:
            if hasattr(result, "close"):
                result.close()
            raise
        return _Body(itertools.chain([first], steps), result)

    return wrapped


def _drain(stream) -> None:
    """Read what is left of a request body, and drop it."""
    while stream.read(1024 * 1024):
        pass


class _Body:
    """A response body that closes the app's own iterable when the server closes it."""

    def __init__(self, steps, result):
        self.steps = steps
        self.result = result

    def __iter__(self):
        return self.steps

    def close(self):
        if hasattr(self.result, "close"):
            self.result.close()
