"""What callers give the catalog, checked before any transaction: names, metadata, file entries, URIs.

Rules:
- a bad value raises a ``CatalogError`` (``BadMetadata``, ``BadFileEntry``) whose sentence
  names the value and where it was (``file 3``, ``location``);
- names are 1-255 letters, digits and ``. _ - @ +``, starting with a letter or digit;
- URIs are ``skerry://<adaptor>/<path>`` without empty, ``.`` or ``..`` segments;
  checksums are MD5, 32 hex digits (stored in lower case); sizes are whole numbers >= 0;
- metadata (and specs, parameters, resources) is a JSON object, stored as exactly what
  reads back: a JSON text is parsed, anything JSON cannot hold is refused.
"""

import json
import re
from typing import Any

from .errors import BadFileEntry, BadMetadata, CatalogError

__all__ = ["check_uri", "check_name", "check_metadata", "file_row", "federation_path"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}")
_URI = re.compile(r"skerry://[A-Za-z0-9][A-Za-z0-9._-]*/[^\x00-\x1f\x7f]+")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_FILE_FIELDS = {"uri", "size", "checksum"}


def check_uri(uri: Any, where: str) -> str:
    """``uri`` if it is a well-formed ``skerry://adaptor/path``, else ``BadFileEntry``."""
    if not isinstance(uri, str) or not _URI.fullmatch(uri):
        raise BadFileEntry(f"{where}: {uri!r} is not a skerry://<adaptor>/<path> URI")
    for part in uri[len("skerry://"):].split("/"):
        if part in ("", ".", ".."):
            raise BadFileEntry(f"{where}: {uri!r} has an empty, '.' or '..' segment")
    return uri


def file_row(i: int, entry: Any) -> dict:
    """Entry ``i`` of a list of files (``{"uri", "size", "checksum"}``) as a row of the files table."""
    where = f"file {i}"
    if not isinstance(entry, dict):
        raise BadFileEntry(f"{where}: expected an object with uri, size and checksum, got {type(entry).__name__}")
    unknown = set(entry) - _FILE_FIELDS
    if unknown:
        raise BadFileEntry(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                           f"(allowed: uri, size, checksum)")
    uri = check_uri(entry.get("uri"), where)
    size = entry.get("size")
    if type(size) is not int or size < 0:  # bool is an int: refused too
        raise BadFileEntry(f"{where} ({uri}): size must be a whole number of bytes >= 0, got {size!r}")
    checksum = entry.get("checksum")
    if checksum is not None:
        if not isinstance(checksum, str) or not _MD5.fullmatch(checksum):
            raise BadFileEntry(f"{where} ({uri}): checksum must be an MD5 of 32 hex digits, got {checksum!r}")
        checksum = checksum.lower()
    return {"uri": uri, "size": size, "checksum": checksum}


def check_metadata(value: Any) -> dict:
    """``value`` (a dict, a JSON text or None) as the JSON object to store."""
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise BadMetadata(f"metadata is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadMetadata(f"metadata must be a JSON object, got {type(value).__name__}")
    try:
        # round trip: what is stored is exactly what is read back
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise BadMetadata(f"metadata must be plain JSON (objects, lists, strings, numbers): {e}") from None


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a valid name of a ``what`` (dataset, module, workflow), else ``CatalogError``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CatalogError(f"{what} name {name!r} is not valid: use 1-255 letters, digits and . _ - @ +, "
                           f"starting with a letter or digit")
    return name


def federation_path(uri: str) -> str:
    """The federation path of a ``skerry://`` URI (what ``SkerryFileSystem`` takes)."""
    return uri[len("skerry://"):] if uri.startswith("skerry://") else uri
