"""The contents API's models, built from a backend's metadata and bytes: times, types, content.

A model is jupyter_server's dict of a file, notebook or folder (``name``, ``path``,
``type``, ``last_modified``, ``content``, ``format``, ...). The manager reads the federation
and calls these; the checkpoints use the same encodings.

Rules:
- nothing here reaches a backend: metadata and bytes come in, models and bytes go out;
- times are timezone-aware, whatever each backend names them (``mtime``,
  ``LastModified``, ...); folders without a time of their own (the root, adaptor folders,
  S3 prefixes) show ``STARTED``, the time the server started;
- a listing's entry is a folder, a notebook (``.ipynb``) or a file with a guessed mimetype;
- a file's content is UTF-8 text when it decodes, base64 otherwise; asked for as text, a
  file that is not UTF-8 is a 400, as is saved content that is not a string, not valid
  base64, or in another format;
- hashes are sha256 of the stored bytes; notebooks are read as nbformat 4 and written as
  they are (no conversion).
"""

import base64
import contextlib
import hashlib
import mimetypes
from datetime import datetime, UTC

import nbformat
from tornado.web import HTTPError

from . import paths

# folders without a time of their own (the root, adaptor folders, S3 prefixes) show this one
STARTED = datetime.now(UTC)


def _time(info: dict, *keys: str) -> datetime:
    """A timezone-aware time from backend metadata (names differ per backend); STARTED if none."""
    for key in keys:
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return STARTED


def modified(info: dict) -> datetime:
    return _time(info, "mtime", "LastModified", "last_modified", "modified", "created")


def created(info: dict) -> datetime:
    return _time(info, "created", "ctime", "mtime", "LastModified", "last_modified", "modified")


def base_model(path: str, info: dict, writable: bool) -> dict:
    """The fields every model has, as a file without content."""
    return {
        "name": paths.name(path), "path": path, "type": "file",
        "last_modified": modified(info), "created": created(info),
        "content": None, "format": None, "mimetype": None,
        "size": info.get("size") if info.get("type") != "directory" else None,
        "writable": writable,
        "hash": None, "hash_algorithm": None,
    }


def mimetype(path: str, format: str | None = None) -> str | None:
    """A file's mimetype, guessed from its name; given its content's ``format``, never None."""
    guessed = mimetypes.guess_type(path)[0]
    if guessed or format is None:
        return guessed
    return "text/plain" if format == "text" else "application/octet-stream"


def entry_model(path: str, info: dict, writable: bool) -> dict:
    """A folder listing's entry: a folder, a notebook or a file, without content."""
    model = base_model(path, info, writable)
    if info.get("type") == "directory":
        model["type"] = "directory"
    elif path.endswith(".ipynb"):
        model["type"] = "notebook"
    else:
        model["mimetype"] = mimetype(path)
    return model


def content_hash(data: bytes) -> tuple[str, str]:
    """(hash, hash_algorithm) of a file's bytes."""
    return hashlib.sha256(data).hexdigest(), "sha256"


def file_content(path: str, data: bytes, format: str | None) -> tuple[str, str]:
    """(content, format) of a file's bytes: text if asked or if they decode, base64 otherwise."""
    if format in (None, "text"):
        try:
            return data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            if format == "text":
                raise HTTPError(400, f"{path} is not UTF-8 encoded text") from None
    return base64.b64encode(data).decode("ascii"), "base64"


def file_bytes(path: str, content, format) -> bytes:
    """The bytes of a file model's content (``text`` or ``base64``)."""
    if not isinstance(content, str):
        raise HTTPError(400, f"The content of {path} must be a string")
    if format == "text":
        return content.encode("utf-8")
    if format == "base64":
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except ValueError as e:
            raise HTTPError(400, f"The content of {path} is not valid base64: {e}") from None
    raise HTTPError(400, "The format of the file content must be 'text' or 'base64'")


def read_notebook(data: bytes) -> nbformat.NotebookNode:
    """A notebook from its stored bytes, as nbformat 4."""
    return nbformat.reads(data.decode("utf-8"), as_version=4)


def notebook_bytes(nb) -> bytes:
    """The bytes to store for a notebook, in its own nbformat version."""
    return nbformat.writes(nb, version=nbformat.NO_CONVERT).encode("utf-8")

