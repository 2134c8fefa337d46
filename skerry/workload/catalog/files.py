"""Files: registered into a dataset in bulk, and read back page by page.

``insert_files`` and ``duplicate_sentence`` take the caller's session: a job's outputs
(``jobs``) are registered by the same two as a user's files.

Rules:
- files are registered only into an ``OPEN`` dataset, all or none: a batch with one bad
  entry, one URI listed twice or one URI the dataset already has registers none of them,
  and the refusal names that entry;
- a URI is unique within its dataset (a unique constraint says so, also against a
  concurrent registration); rows go in ``BATCH`` at a time;
- a page is the files with ``id > after`` in registration order, at most ``PAGE_MAX``
  (a bad ``limit`` or ``after`` is refused, never clamped); ``next_after`` is None on the
  last page.
"""

from collections.abc import Iterable, Iterator

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..bulk import Bulk
from ..models import File, now
from .datasets import dataset_row
from .engine import Database
from .errors import BadFileEntry, CatalogError, DatasetStateError
from .inputs import file_row
from .values import FileInfo, FilePage, file_info

__all__ = ["Files", "insert_files", "duplicate_sentence", "BATCH", "PAGE_MAX"]

BATCH = 10_000  # rows per INSERT executemany in bulk registration
_FILES = Bulk(insert(File), datetimes=("created",))  # SQLite: the driver's executemany, as it is
PAGE_MAX = 10_000


def insert_files(s: Session, dataset_id: int, rows: list[dict], job_id: int | None = None) -> None:
    """Insert checked rows (``inputs.file_row``) as ``AVAILABLE`` files of a dataset (of a job's outputs)."""
    stamp = now()
    extra = {"dataset_id": dataset_id, "state": "AVAILABLE", "created": stamp, "job_id": job_id}
    conn = s.connection()
    for start in range(0, len(rows), BATCH):
        _FILES.run(conn, [{**row, **extra} for row in rows[start:start + BATCH]])


def duplicate_sentence(s: Session, name: str, owner: str | None, rows: list[dict]) -> str:
    """Which of ``rows`` the dataset already has (after the refused insert was rolled back)."""
    dataset = dataset_row(s, name, owner)
    index = {row["uri"]: i for i, row in enumerate(rows)}
    uris = list(index)
    for start in range(0, len(uris), 500):
        found = s.execute(select(File.uri).where(File.dataset_id == dataset.id,
                                                 File.uri.in_(uris[start:start + 500]))).scalars().first()
        if found:
            return (f"file {index[found]}: dataset {name!r} already has {found}; "
                    f"none of the {len(rows)} files were registered")
    return f"dataset {name!r} refused the files (a concurrent change); none were registered"


class Files(Database):
    """The files of the catalog's datasets (module docstring)."""

    def register_files(self, name: str, files: Iterable[dict], *, owner: str | None = None) -> int:
        """Register ``files`` (``{"uri", "size", "checksum"}``) in an ``OPEN`` dataset: all or none.

        Returns how many were registered. A bad entry, a URI listed twice or a URI the
        dataset already has refuses the whole list (``BadFileEntry`` naming it).
        """
        rows, seen = [], {}
        for i, entry in enumerate(files):
            row = file_row(i, entry)
            first = seen.setdefault(row["uri"], i)
            if first != i:
                raise BadFileEntry(f"file {i}: {row['uri']} is listed twice (also file {first})")
            rows.append(row)
        try:
            with self.writing() as s:
                dataset = dataset_row(s, name, owner, lock=True)
                if dataset.state != "OPEN":
                    raise DatasetStateError(f"dataset {name!r} is {dataset.state}: files are registered only "
                                            f"into an OPEN dataset")
                insert_files(s, dataset.id, rows)
        except IntegrityError:
            with self.session() as s:
                sentence = duplicate_sentence(s, name, owner, rows)
            raise BadFileEntry(sentence) from None
        return len(rows)

    def list_files(self, name: str, *, after: int = 0, limit: int = 1000, state: str | None = None,
                   owner: str | None = None) -> FilePage:
        """A page of a dataset's files in registration order: those with ``id > after``."""
        if type(limit) is not int or not 1 <= limit <= PAGE_MAX:
            raise CatalogError(f"limit must be between 1 and {PAGE_MAX}, got {limit!r}")
        if type(after) is not int or after < 0:
            raise CatalogError(f"after must be a file id >= 0, got {after!r}")
        with self.session() as s:
            dataset = dataset_row(s, name, owner)
            query = (select(File.id, File.uri, File.size, File.checksum, File.state, File.job_id)
                     .where(File.dataset_id == dataset.id, File.id > after).order_by(File.id).limit(limit + 1))
            if state is not None:
                query = query.where(File.state == state)
            rows = s.execute(query).all()
        files = [file_info(r) for r in rows[:limit]]
        return FilePage(files, files[-1].id if len(rows) > limit else None)

    def iter_files(self, name: str, *, state: str | None = None, page: int = PAGE_MAX,
                   owner: str | None = None) -> Iterator[FileInfo]:
        """Every file of a dataset, page by page."""
        after = 0
        while after is not None:
            result = self.list_files(name, after=after, limit=page, state=state, owner=owner)
            yield from result.files
            after = result.next_after
