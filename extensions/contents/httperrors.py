"""The federation's exceptions as the HTTP errors jupyter_server expects.

Rules:
- the status and the sentence come from ``skerry.errors.storage_error``'s one table, as
  WebDAV and the data API answer: no second table here;
- an ``HTTPError`` raised inside passes through unchanged;
- our own faults (``InternalError``) are raised as they are: jupyter_server logs the
  traceback and answers 500.
"""

import contextlib

from tornado.web import HTTPError

from skerry.errors import InternalError, storage_error


@contextlib.contextmanager
def http_errors(path: str):
    """The federation's exceptions as the HTTP errors jupyter_server expects (``storage_error``'s table)."""
    try:
        yield
    except HTTPError:
        raise
    except Exception as e:
        error = storage_error(e, path)
        if isinstance(error, InternalError):
            raise  # our own fault: jupyter_server logs the traceback and answers 500
        raise HTTPError(error.status, error.message) from None
