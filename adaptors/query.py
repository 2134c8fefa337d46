"""The find index: where does a file of a given name live across a user's adaptors.

``FindIndex(fs).lookup("data.h5")`` answers from memory with every location of that
file name (federation path, adaptor, size, modified time, checksum where the backend
keeps one: the S3 ETag). The index is built and refreshed in a background thread.

Rules:
- the first scan lists each adaptor once; until it has covered every adaptor, answers
  carry ``complete: False`` and hold what is known so far;
- our own writes (finished copies, and what the WebDAV endpoint beside us wrote:
  ``writefeed``) are recorded at once with ``record`` and ``forget``, so a file is findable
  as soon as it is written, and gone as soon as it is deleted, without waiting for a rescan;
- rescans are periodic (``interval`` seconds after the previous one ended) and cheap:
  one adaptor at a time, one recursive listing per adaptor (``find(detail=True)``: one
  LIST request per 1,000 keys on S3, one readdir per folder on SFTP and local disks),
  never a read of file contents or a call per file; checksums come from the listing
  metadata only. A rescan replaces that adaptor's entries in one step, keeping entries
  recorded while it ran;
- an adaptor that fails to list keeps its previous entries; the error (a sentence, no
  secrets) is reported in ``errors``;
- files being written (``atomic.is_hidden``: our copies in flight) are never indexed.
"""

import datetime
import logging
import threading
import time

from . import atomic

log = logging.getLogger(__name__)


def modified_iso(info: dict) -> str | None:
    """The modification time of an fsspec info dict as ISO 8601 UTC, whatever the backend."""
    for key in ("mtime", "LastModified", "modified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            return value.astimezone(datetime.UTC).isoformat()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()
        if isinstance(value, str) and value:
            return value
    return None


def checksum_of(info: dict) -> dict | None:
    """The checksum the backend keeps for a file, if any: ``{"type", "value"}``."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return {"type": "s3-etag", "value": str(etag).strip('"')}
    return None


def entry(adaptor: str, path: str, info: dict) -> dict:
    """One location of a file: ``path`` is the federation path (``adaptor/inner``)."""
    return {"path": path, "url": f"skerry://{path}", "adaptor": adaptor,
            "size": info.get("size"), "modified": modified_iso(info), "checksum": checksum_of(info)}


class FindIndex:
    def __init__(self, fs, interval: float = 300.0, redact=None):
        """``fs``: a ``SkerryFileSystem``; ``interval``: seconds between rescans;
        ``redact(text)`` scrubs secrets from listing errors."""
        self.fs = fs
        self.interval = interval
        self.redact = redact or (lambda text: text)
        self._lock = threading.Lock()
        self._by_adaptor: dict[str, dict[str, dict]] = {}
        self._by_name: dict[str, dict[str, dict]] = {}
        self._recorded: dict[str, dict[str, tuple[float, dict | None]]] = {}
        self._scanned: set[str] = set()
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = None

    # ---- answers ----------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._scanned >= set(self.fs.adaptors)

    def lookup(self, filename: str) -> dict:
        with self._lock:
            found = sorted(self._by_name.get(filename, {}).values(), key=lambda e: e["path"])
        return {"name": filename, "locations": [dict(e) for e in found], "complete": self.complete,
                "errors": dict(self.errors)}

    # ---- updates ----------------------------------------------------------

    def record(self, path: str, info: dict | None) -> None:
        """Our own write of federation path ``path`` (``info`` None: it was removed)."""
        adaptor = path.split("/", 1)[0]
        with self._lock:
            self._recorded.setdefault(adaptor, {})[path] = (time.monotonic(), info)
            self._apply(adaptor, path, info)

    def forget(self, path: str) -> None:
        """Our own removal of federation path ``path``: the file, or a folder and all in it."""
        adaptor, folder = path.split("/", 1)[0], path.rstrip("/") + "/"
        with self._lock:
            gone = [p for p in self._by_adaptor.get(adaptor, {}) if p == path or p.startswith(folder)]
            now = time.monotonic()
            for p in gone or [path]:
                self._recorded.setdefault(adaptor, {})[p] = (now, None)  # a rescan running now keeps it gone
                self._apply(adaptor, p, None)

    def _apply(self, adaptor, path, info):
        name = path.rsplit("/", 1)[-1]
        files = self._by_adaptor.setdefault(adaptor, {})
        if path in files:
            self._by_name.get(name, {}).pop(path, None)
            del files[path]
        if info is not None and info.get("type", "file") == "file" and not atomic.is_hidden(name):
            e = entry(adaptor, path, info)
            files[path] = e
            self._by_name.setdefault(name, {})[path] = e

    def scan(self, adaptor: str) -> None:
        """List one adaptor and replace its entries (keeping what was recorded meanwhile)."""
        started = time.monotonic()
        try:
            self.fs.adaptors[adaptor].invalidate_cache()  # a rescan must see the storage, not a cache
            found = self.fs.find(adaptor, detail=True)
        except Exception as e:  # any backend error: keep the old entries, say why
            self.errors[adaptor] = self.redact(f"{type(e).__name__}: {e}")
            log.warning("find index: listing adaptor %s failed: %s", adaptor, self.errors[adaptor])
            self._scanned.add(adaptor)
            return
        with self._lock:
            for path in list(self._by_adaptor.get(adaptor, {})):
                self._apply(adaptor, path, None)
            for path, info in found.items():
                self._apply(adaptor, path, info)
            recent = self._recorded.get(adaptor, {})
            for path, (when, info) in list(recent.items()):
                if when >= started:
                    self._apply(adaptor, path, info)
                else:
                    del recent[path]  # the listing has seen it
        self.errors.pop(adaptor, None)
        self._scanned.add(adaptor)

    # ---- the background thread ---------------------------------------------

    def start(self) -> "FindIndex":
        self._thread = threading.Thread(target=self._run, name="skerry-find-index", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            for adaptor in sorted(self.fs.adaptors):
                if self._stop.is_set():
                    return
                self.scan(adaptor)
            self._stop.wait(self.interval)
