"""The consistency check: a dataset's catalog against its storage, acted on only when it lasts.

``check(name, fs)`` compares; ``_record_problems`` counts each problem's checks in a row
(table ``file_problems``); ``_act`` changes what is due.

Rules:
- a check reports every problem it sees: missing (registered, not in storage), dark (in
  the dataset's ``location``, not registered), mismatched (size, or with ``checksums`` the
  MD5 of the content);
- it acts on one (missing file -> ``MISSING``, size/checksum mismatch -> ``CORRUPT``, dark
  file -> removed from storage only when the caller asks with ``remove_dark=True``: it is
  somebody's data) only once the same problem was seen in ``threshold`` checks in a row:
  an upload in flight or a storage hiccup is reported, never acted on;
- a problem that is gone, or changed, starts its count again; a file found again, and
  right, is ``AVAILABLE`` again;
- storage is read outside any transaction (it may be slow); a dark file that cannot be
  removed is reported in ``actions`` and tried again at the next check.
"""

import hashlib

from sqlalchemy import delete, select, update

from ...errors import ConfigError
from ..models import File, FileProblem
from .datasets import dataset_row
from .engine import Database
from .errors import CatalogError
from .inputs import federation_path
from .values import ConsistencyReport, Mismatch

__all__ = ["Consistency", "CHECK_THRESHOLD"]

CHECK_THRESHOLD = 2  # checks in a row that must see a problem before it is acted on
HASH_BLOCK = 8 * 1024 * 1024


class Consistency(Database):
    """The consistency check of the catalog's datasets (module docstring)."""

    def __init__(self, url: str, *, check_threshold: int = CHECK_THRESHOLD):
        super().__init__(url)
        if type(check_threshold) is not int or check_threshold < 1:
            raise ConfigError(f"check_threshold must be a whole number >= 1, got {check_threshold!r}")
        self.check_threshold = check_threshold  # the default ``threshold`` of ``check``

    def check(self, name: str, fs, *, threshold: int | None = None, checksums: bool = True,
              remove_dark: bool = False, owner: str | None = None) -> ConsistencyReport:
        """Compare a dataset's catalog with storage (``fs``: an fsspec filesystem of ``skerry://`` paths).

        Missing: registered but not in storage. Dark: in the dataset's ``location`` but not
        registered. Mismatch: sizes differ, or (``checksums``) the MD5 of the content differs
        from the registered one. Each problem is acted on once seen in ``threshold`` checks
        in a row (default: the catalog's ``check_threshold``); dark files are removed from
        storage then only with ``remove_dark`` (by default they are reported, never deleted).
        """
        threshold = self.check_threshold if threshold is None else threshold
        if type(threshold) is not int or threshold < 1:
            raise CatalogError(f"threshold must be a whole number >= 1, got {threshold!r}")
        with self.session() as s:
            dataset = dataset_row(s, name, owner)
            dataset_id, location = dataset.id, dataset.location
            catalog = {r.uri: r for r in s.execute(
                select(File.id, File.uri, File.size, File.checksum, File.state)
                .where(File.dataset_id == dataset_id, File.state != "DELETED"))}
        report = ConsistencyReport(name, checked=len(catalog))
        listing = _listing(fs, location)
        problems, back = {}, []
        for uri, row in catalog.items():
            problem = _compare(fs, row, listing.get(uri), location, checksums, report)
            if problem:
                problems[uri] = problem
            elif row.state != "AVAILABLE":
                back.append(uri)  # found again, and right: available again
        for uri in listing.keys() - catalog.keys():
            report.dark.append(uri)
            problems[uri] = "dark"
        report.missing.sort()
        report.dark.sort()
        due = self._record_problems(dataset_id, problems, threshold, report)
        if not remove_dark:
            due = {uri: problem for uri, problem in due.items() if problem != "dark"}
        self._act(name, dataset_id, due, back, fs, report)
        return report

    def _record_problems(self, dataset_id: int, problems: dict[str, str], threshold: int,
                         report: ConsistencyReport) -> dict[str, str]:
        """Count each problem's checks in a row; the ones due for action (seen >= threshold)."""
        due = {}
        with self.writing() as s:
            rows = s.execute(select(FileProblem).where(FileProblem.dataset_id == dataset_id)).scalars()
            known = {p.uri: p for p in rows}
            for uri, p in known.items():
                if problems.get(uri) != p.problem:
                    s.delete(p)  # gone, or a different problem now: the count starts again
            s.flush()
            for uri, problem in problems.items():
                p = known.get(uri)
                if p is not None and p.problem == problem:
                    p.seen += 1
                else:
                    p = FileProblem(dataset_id=dataset_id, uri=uri, problem=problem, seen=1)
                    s.add(p)
                if p.seen >= threshold:
                    due[uri] = problem
                else:
                    report.pending[uri] = p.seen
        return due

    def _act(self, name: str, dataset_id: int, due: dict[str, str], back: list[str], fs,
             report: ConsistencyReport) -> None:
        removed = []
        for uri in sorted(u for u, p in due.items() if p == "dark"):
            try:
                fs.rm_file(federation_path(uri))
            except FileNotFoundError:
                pass
            except OSError as e:  # a read-only adaptor, a permission: reported, tried again next check
                report.actions.append(f"could not remove dark file {uri}: {e.strerror or e}")
                continue
            removed.append(uri)
            report.actions.append(f"removed dark file {uri} from storage")
        with self.writing() as s:
            for uri, problem in sorted(due.items()):
                if problem == "dark":
                    continue
                state = "MISSING" if problem == "missing" else "CORRUPT"
                changed = s.execute(update(File).where(File.dataset_id == dataset_id, File.uri == uri,
                                                       File.state != state).values(state=state)).rowcount
                if changed:
                    report.actions.append(f"marked {uri} {state}")
            for uri in back:
                s.execute(update(File).where(File.dataset_id == dataset_id, File.uri == uri).values(state="AVAILABLE"))
                report.actions.append(f"marked {uri} AVAILABLE (found again)")
            if removed:
                s.execute(delete(FileProblem).where(FileProblem.dataset_id == dataset_id,
                                                    FileProblem.uri.in_(removed)))


def _listing(fs, location: str | None) -> dict[str, dict]:
    """The files in storage under a dataset's ``location``, by ``skerry://`` URI (none without one)."""
    if not location:
        return {}
    try:
        found = fs.find(federation_path(location), detail=True)
    except FileNotFoundError:
        found = {}
    return {"skerry://" + p.strip("/"): info for p, info in found.items() if info.get("type") == "file"}


def _compare(fs, row, info: dict | None, location: str | None, checksums: bool,
             report: ConsistencyReport) -> str | None:
    """One catalog file against storage (``info``: its listing entry, if listed); its problem, told
    in ``report`` (``"missing"``, ``"mismatch"``), or None."""
    uri = row.uri
    if info is None and not _under(uri, location):
        try:
            info = fs.info(federation_path(uri))
        except FileNotFoundError:
            info = None
    if info is None or info.get("type") == "directory":
        report.missing.append(uri)
        return "missing"
    size = info.get("size")
    if size != row.size:
        report.mismatched.append(Mismatch(uri, "size", row.size, size))
        return "mismatch"
    if checksums and row.checksum and (digest := _md5(fs, uri)) != row.checksum:
        report.mismatched.append(Mismatch(uri, "checksum", row.checksum, digest))
        return "mismatch"
    return None


def _under(uri: str, location: str | None) -> bool:
    return bool(location) and uri.startswith(location + "/")


def _md5(fs, uri: str) -> str:
    digest = hashlib.md5()
    with fs.open(federation_path(uri), "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
