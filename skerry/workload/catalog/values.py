"""What the catalog returns: plain values, no open session behind them.

Rules:
- every value is read whole inside the transaction that found it, so it can be used after
  that transaction ends, from any thread;
- times are in UTC, with their time zone (SQLite keeps none: it is put back here);
- ``metadata`` is a copy: changing it changes nothing in the catalog.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..models import Dataset

__all__ = ["DatasetInfo", "FileInfo", "FilePage", "Mismatch", "ConsistencyReport", "dataset_info", "file_info"]


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    state: str
    owner: str
    location: str | None
    metadata: dict
    created: datetime
    files: int = 0  # files registered (any state)
    size: int = 0  # their total size in bytes


@dataclass(frozen=True)
class FileInfo:
    id: int
    uri: str
    size: int
    checksum: str | None
    state: str
    job_id: int | None = None


@dataclass(frozen=True)
class FilePage:
    files: list[FileInfo]
    next_after: int | None  # pass as ``after`` for the next page; None: this was the last


@dataclass(frozen=True)
class Mismatch:
    uri: str
    what: str  # "size" or "checksum"
    catalog: Any
    storage: Any


@dataclass
class ConsistencyReport:
    """What one check found; ``actions`` lists what it changed (past the threshold)."""

    dataset: str
    checked: int = 0  # catalog files compared with storage
    missing: list[str] = field(default_factory=list)
    dark: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # uri -> checks in a row, below the threshold
    actions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.dark or self.mismatched)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t  # SQLite keeps no time zone


def dataset_info(d: Dataset, files: int = 0, size: int = 0) -> DatasetInfo:
    """A dataset row as a value (``files``, ``size``: its files' count and total size, when asked)."""
    return DatasetInfo(d.id, d.name, d.state, d.owner, d.location, dict(d.meta or {}), _utc(d.created), files, size)


def file_info(f) -> FileInfo:
    """A file row (or a row of its columns) as a value."""
    return FileInfo(f.id, f.uri, f.size, f.checksum, f.state, f.job_id)
