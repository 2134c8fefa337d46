"""The errors skerry raises on purpose, each carrying its code, its HTTP status and a sentence.

    SkerryError                  500  every error skerry raises on purpose
     ├── BadRequest              400  the request or input is wrong; the sentence says how
     │    ├── ConfigError        400  a bad option, flag, spec or data dir
     │    ├── InvalidPath        400  a path with empty, '.' or '..' segments (also a ValueError)
     │    ├── NotAFolder         400  a folder was needed; the path holds a file
     │    └── IsAFolder          400  a file was needed; the path holds a folder
     ├── Forbidden               403  the caller may not do this (a read-only adaptor, another's account)
     ├── NotFound                404  no such thing (a file, a dataset, a profile, a quota, ...)
     ├── Conflict                409  the thing exists already, or its state does not allow this
     ├── StorageFailed           502  an adaptor's storage answered with an error of its own
     ├── Unavailable             503  something skerry needs is not there now; try again later
     │    └── AdaptorUnavailable 503  an adaptor's storage cannot be reached (also a ConnectionError)
     ├── StorageTimeout          504  an adaptor's storage did not answer in time
     ├── SetupError              500  something skerry needs is missing (a program, a port)
     └── ApiError                any  an answer decided where the request is served (status given)

Modules deriving their own errors put a kind of this tree first among the bases (its
status wins) and keep their own ``code``: ``class UnknownDataset(NotFound, CatalogError)``.

Storage errors: ``storage_error(e, path)`` turns what a storage backend raises (Python's
``OSError`` family, ``ValueError``, a ``SkerryError``) into one error of this tree, by the
table ``STORAGE_ERRORS``. WebDAV, the contents manager and the data API all answer with it,
so a storage failure has one status wherever it is seen.

Rules:

- ``code`` is machine-readable and stable (it is the ``"error"`` of JSON answers);
  ``message`` (also ``str(e)``) is a sentence for people; ``status`` is the HTTP status;
- 5xx is for faults that are not the caller's; a 500 from ``storage_error`` never holds
  the exception's text (it may hold anything);
- this module imports nothing of skerry: every layer may raise these.
"""

__all__ = ["STORAGE_ERRORS", "AdaptorUnavailable", "ApiError", "BadRequest", "ConfigError", "Conflict", "Forbidden",
           "InternalError", "InvalidPath", "IsAFolder", "NotAFolder", "NotFound", "SetupError", "SkerryError",
           "StorageFailed", "StorageSetupBroken", "StorageTimeout", "Unavailable", "storage_error"]


class SkerryError(Exception):
    """Base class: ``code`` is machine-readable, ``str(e)`` is a sentence for people, ``status`` HTTP's."""

    code = "skerry_error"
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(SkerryError):
    code = "bad_request"
    status = 400


class ConfigError(BadRequest):
    code = "bad_config"


class InvalidPath(BadRequest, ValueError):
    code = "bad_path"


class NotAFolder(BadRequest):
    code = "not_a_folder"


class IsAFolder(BadRequest):
    code = "is_a_folder"


class Forbidden(SkerryError):
    code = "forbidden"
    status = 403


class NotFound(SkerryError):
    code = "not_found"
    status = 404


class Conflict(SkerryError):
    code = "conflict"
    status = 409


class StorageFailed(SkerryError):
    code = "backend_error"
    status = 502


class Unavailable(SkerryError):
    code = "unavailable"
    status = 503


class AdaptorUnavailable(Unavailable, ConnectionError):
    code = "adaptor_unavailable"


class StorageTimeout(SkerryError):
    code = "storage_timeout"
    status = 504


class SetupError(SkerryError):
    code = "setup_failed"


class ApiError(SkerryError):
    """An answer decided where the request is served: ``status`` and ``code`` given here."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code

    @classmethod
    def of(cls, e: SkerryError, code: str | None = None, status: int | None = None) -> "ApiError":
        """``e`` answered as it says, or with a route's own ``code`` or ``status``."""
        return cls(status or e.status, code or e.code, e.message)


# ---- storage errors ------------------------------------------------------------

class StorageSetupBroken(SkerryError):
    """An adaptor of this server is set up wrong (a ConfigError while serving): not the caller's fault."""

    code = "bad_adaptor"


class InternalError(SkerryError):
    code = "internal_error"


# What a storage backend raises -> the error answered, and its sentence ({what}: the path,
# or the exception's text without one; {detail}: the exception's text). First match wins:
# subclasses (FileNotFoundError, ConnectionError, TimeoutError, ConfigError) before their bases.
STORAGE_ERRORS: tuple[tuple[type[BaseException], type[SkerryError], str], ...] = (
    (PermissionError, Forbidden, "Permission denied: {detail}"),
    (FileNotFoundError, NotFound, "No such file or folder: {what}"),
    (FileExistsError, Conflict, "{what} already exists"),
    (IsADirectoryError, IsAFolder, "{what} is a folder, not a file"),
    (NotADirectoryError, NotAFolder, "{what} is not a folder"),
    (ConnectionError, AdaptorUnavailable, "The storage of {what} cannot be reached now: {detail}"),
    (TimeoutError, StorageTimeout, "The storage of {what} did not answer in time: {detail}"),
    (ConfigError, StorageSetupBroken, "{what}: {detail}"),
    (ValueError, InvalidPath, "Invalid path {what!r}: {detail}"),
    (OSError, StorageFailed, "Storage error on {what}: {detail}"),
)


def storage_error(e: BaseException, path: str = "") -> SkerryError:
    """The error of this tree that a storage backend's exception ``e`` on ``path`` means.

    A ``SkerryError`` the table does not name keeps its own status and code; anything
    else not in the table is a 500 ``internal_error`` whose sentence holds no detail.
    """
    detail = _detail(e)
    what = path or detail
    for raised, answered, sentence in STORAGE_ERRORS:
        if isinstance(e, raised):
            return answered(sentence.format(what=what, detail=detail))
    if isinstance(e, SkerryError):
        return e
    return InternalError(f"The server failed on {what!r}; its log says why." if path
                         else "The server failed on this request; its log says why.")


def _detail(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # OSError(errno, strerror, filename): no "[Errno 2]"
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__
