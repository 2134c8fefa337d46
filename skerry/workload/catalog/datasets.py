"""Datasets: made, found by name and owner, listed, and moved through their states.

``dataset_row(s, name, owner)`` is the one lookup every part of the catalog (and the
scheduler's own queries) uses; ``Datasets`` is the part of ``Catalog`` that owns them.

Rules:
- a dataset's name is unique among its owner's datasets: two users may each hold one
  called ``raw``. Every call that names a dataset takes ``owner=``; without it the name
  must be one dataset's only (else ``AmbiguousDataset``, naming no owner), which is what
  single-user callers and admins who know the name rely on;
- datasets go ``OPEN -> CLOSED -> TO_UPLOAD``, any of those ``-> TO_DELETE -> DELETED``
  (``DATASET_MOVES``, read off the state machine of ``states``); a refused move changes
  nothing and says the state it found;
- a dataset's ``location`` is a ``skerry://`` folder (no trailing ``/``): where its files
  live, which the consistency check lists for dark files;
- purging removes the files from storage first and only then marks them and the dataset
  ``DELETED``: the rows stay, so a purge cut short is purged again.
"""

from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import DATASET_STATES, Dataset, File
from ..states import DATASET_MOVES
from .engine import Database
from .errors import AmbiguousDataset, CatalogError, DatasetExists, DatasetStateError, UnknownDataset
from .inputs import check_metadata, check_name, check_uri, federation_path
from .values import DatasetInfo, dataset_info

__all__ = ["Datasets", "dataset_row"]


def _by_name(owned: bool, lock: bool):
    query = select(Dataset).where(Dataset.name == bindparam("name"))
    if owned:
        query = query.where(Dataset.owner == bindparam("owner"))
    return (query.with_for_update() if lock else query).limit(2)


# built once, not per call (``bulk``): (owner given, locked) -> the lookup
_BY_NAME = {(owned, lock): _by_name(owned, lock) for owned in (False, True) for lock in (False, True)}


def dataset_row(s: Session, name: str, owner: str | None = None, lock: bool = False) -> Dataset:
    """The dataset ``name`` of ``owner`` (None: the only one by that name)."""
    found = s.execute(_BY_NAME[owner is not None, lock], {"name": name, "owner": owner}).scalars().all()
    if not found:
        raise UnknownDataset(f"no dataset named {name!r}")
    if len(found) > 1:
        raise AmbiguousDataset(f"several users hold a dataset named {name!r}: say whose (owner)")
    return found[0]


class Datasets(Database):
    """The datasets of the catalog (module docstring)."""

    dataset_row = staticmethod(dataset_row)

    def create_dataset(self, name: str, *, owner: str = "", metadata: Any = None,
                       location: str | None = None) -> DatasetInfo:
        """A new ``OPEN`` dataset; ``location`` (``skerry://...`` folder) is where its files live."""
        check_name(name, "dataset")
        meta = check_metadata(metadata)
        if not isinstance(owner, str):
            raise CatalogError(f"owner must be a user name, got {owner!r}")
        if location is not None:
            location = check_uri(location.rstrip("/") if isinstance(location, str) else location, "location")
        try:
            with self.writing() as s:
                if s.execute(select(Dataset.id).where(Dataset.name == name, Dataset.owner == owner)).first():
                    raise DatasetExists(f"a dataset named {name!r} already exists")
                dataset = Dataset(name=name, owner=owner, meta=meta, location=location, state="OPEN")
                s.add(dataset)
                s.flush()
                return dataset_info(dataset)
        except IntegrityError:  # created by someone else between our check and our insert
            raise DatasetExists(f"a dataset named {name!r} already exists") from None

    def get_dataset(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        with self.session() as s:
            dataset = dataset_row(s, name, owner)
            files, size = s.execute(select(func.count(File.id), func.coalesce(func.sum(File.size), 0))
                                    .where(File.dataset_id == dataset.id)).one()
            return dataset_info(dataset, files, int(size))

    def list_datasets(self, *, owner: str | None = None, state: str | None = None) -> list[DatasetInfo]:
        query = select(Dataset).order_by(Dataset.id)
        if owner is not None:
            query = query.where(Dataset.owner == owner)
        if state is not None:
            if state not in DATASET_STATES:
                raise CatalogError(f"unknown dataset state {state!r} (states: {', '.join(DATASET_STATES)})")
            query = query.where(Dataset.state == state)
        with self.session() as s:
            return [dataset_info(d) for d in s.execute(query).scalars()]

    def _move(self, name: str, to: str, only_from: str | None = None, owner: str | None = None) -> DatasetInfo:
        with self.writing() as s:
            dataset = dataset_row(s, name, owner, lock=True)
            if to not in DATASET_MOVES[dataset.state] or only_from not in (None, dataset.state):
                raise DatasetStateError(f"dataset {name!r} is {dataset.state} and cannot become {to}"
                                        + (f" (only from {only_from})" if only_from else ""))
            dataset.state = to
            s.flush()
            return dataset_info(dataset)

    def close_dataset(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """``OPEN -> CLOSED``: complete; no more files are registered into it."""
        return self._move(name, "CLOSED", only_from="OPEN", owner=owner)

    def mark_for_upload(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """``CLOSED -> TO_UPLOAD``: to be copied to external storage."""
        return self._move(name, "TO_UPLOAD", owner=owner)

    def mark_uploaded(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """``TO_UPLOAD -> CLOSED``: the upload is done."""
        return self._move(name, "CLOSED", only_from="TO_UPLOAD", owner=owner)

    def delete_dataset(self, name: str, *, owner: str | None = None) -> DatasetInfo:
        """Mark for deletion (``TO_DELETE``); ``purge_dataset`` removes the files."""
        return self._move(name, "TO_DELETE", owner=owner)

    def purge_dataset(self, name: str, fs, *, owner: str | None = None) -> DatasetInfo:
        """Remove a ``TO_DELETE`` dataset's files from storage (``fs``), then mark it ``DELETED``.

        Files already gone count as removed; the rows stay, in state ``DELETED``.
        """
        with self.session() as s:
            dataset = dataset_row(s, name, owner)
            if dataset.state != "TO_DELETE":
                raise DatasetStateError(f"dataset {name!r} is {dataset.state}: delete it first (TO_DELETE)")
            uris = s.execute(select(File.uri).where(File.dataset_id == dataset.id,
                                                    File.state != "DELETED")).scalars().all()
        for uri in uris:
            try:
                fs.rm_file(federation_path(uri))
            except FileNotFoundError:
                pass
        with self.writing() as s:
            dataset = dataset_row(s, name, owner, lock=True)
            s.execute(update(File).where(File.dataset_id == dataset.id).values(state="DELETED"))
            dataset.state = "DELETED"
            s.flush()
            return dataset_info(dataset)
