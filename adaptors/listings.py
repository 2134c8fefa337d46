"""The folder listings the WebDAV endpoint keeps: ``Listings(fs)`` over a ``SkerryFileSystem``.

Rules:
- a folder's listing is one ``ls(detail=True)``, kept ``LISTING_TTL`` seconds and dropped
  by our own writes (``invalidate``): PROPFIND Depth 1 makes no call per child, and files
  changed behind our back (on an HPC system, say) appear within seconds;
- on a local adaptor, a listing is kept while the kernel watches its folder
  (``skerry.adaptors.folderwatch``), and each use first reads again the entries the watch
  names as changed, by whichever process (one ``stat`` each): a desktop client's repeated
  listings cost no ``stat`` per file, and a job writing into a big folder costs its next
  listing the files it wrote. Our own writes leave such a listing to its watch. Its
  subfolders' times are looked at again when it is used past ``LISTING_TTL`` (a change
  inside a subfolder is not the folder's event), and it is then as good as new for
  ``LISTING_TTL`` seconds. The folder is listed whole again where the watch says so
  (the folder itself changed, or too much of it). A listing with a link, or with more
  than ``KEPT_SUBFOLDERS`` subfolders, is not kept past its time (``_may_keep``);
- listings kept past their time hold at most ``KEPT_ENTRIES`` entries in all, the oldest
  dropped first.

Errors of the federation's ``ls`` are raised as they are: the caller maps them.
"""

import os
import threading
import time
from typing import NamedTuple

from .folderwatch import FolderWatch

LISTING_TTL = 2.0
KEPT_SUBFOLDERS = 64  # a kept listing's subfolders cost a stat each time it is used
KEPT_ENTRIES = 100_000  # 0.7 KB each (measured): at most 70 MB of the endpoint's memory


class _Kept(NamedTuple):
    """A folder's listing as kept: when it was made (or its subfolders last looked at), its
    entries, and, while watched, the folder's OS path and its watch's token."""
    when: float
    entries: dict[str, dict]
    ospath: str | None
    token: int | None


def _name_of(info: dict) -> str:
    """The name an entry is listed under: the last segment of its federation path."""
    return info["name"].rstrip("/").rpartition("/")[2]


def _may_keep(entries: dict[str, dict], changed=None) -> bool:
    """Whether a listing may be kept past ``LISTING_TTL``: no entry is a link (a change at
    its target is not its folder's event) and at most ``KEPT_SUBFOLDERS`` are folders (each
    costs a ``stat`` a use). ``changed``: the entries just read again into a listing that
    was kept; the others met the rule, so only these are looked at for links, and the
    folders are counted only where one of these is a folder."""
    looked_at = list(entries.values() if changed is None else changed)
    if any(info.get("islink") for info in looked_at):
        return False
    if changed is not None and not any(info["type"] == "directory" for info in looked_at):
        return True
    return sum(info["type"] == "directory" for info in entries.values()) <= KEPT_SUBFOLDERS


class Listings:
    """The kept listings of one federation's folders (see the module's rules); safe to use
    from many threads."""

    def __init__(self, fs):
        self.fs = fs
        self.watch = FolderWatch()
        self._kept: dict[str, _Kept] = {}  # folder -> its listing, oldest first
        self._lock = threading.Lock()
        self._patching = threading.Lock()

    def get(self, fspath: str) -> dict[str, dict]:
        """{name: info} of a folder, names in order: the kept listing brought up to date, or
        a new one from one ``ls(detail=True)``."""
        current = self.current(fspath)
        if current is not None:
            return current
        now = time.monotonic()
        ospath = self.fs.local_path(fspath, folder=True)
        # watched before it is read: a change while it is read is named to the next listing
        token = self.watch.watch(ospath) if ospath is not None else None
        try:
            entries = self.fs.ls(fspath, detail=True)
        except BaseException:
            if token is not None:  # no listing will hold this watch
                self.watch.forget(ospath)
            raise
        listing = {}
        for info in entries:
            name = _name_of(info)
            if name:  # temporary names are left out by the federation itself
                listing[name] = info
        listing = {name: listing[name] for name in sorted(listing)}  # once a listing, not once an answer
        if token is not None and not _may_keep(listing):
            self.watch.forget(ospath)
            token = None
        kept = _Kept(now, listing, ospath if token is not None else None, token)
        with self._lock:
            self._drop(fspath, keep=kept.ospath)  # a new listing goes last: the newest
            self._kept[fspath] = kept
            self._trim(now)
        return listing

    def current(self, fspath: str) -> dict[str, dict] | None:
        """The kept listing of a folder, brought up to date, or None: one younger than
        LISTING_TTL, or one whose folder's watch names what changed in it (those entries read
        again, its subfolders looked at once each LISTING_TTL)."""
        with self._lock:
            kept = self._kept.get(fspath)
        if kept is None:
            return None
        if kept.token is None:
            return kept.entries if time.monotonic() - kept.when < LISTING_TTL else None
        with self._patching:  # one at a time: a change is taken from the watch once
            with self._lock:
                kept = self._kept.get(fspath)
            if kept is None or kept.token is None:
                return None
            current = self._brought_up_to_date(fspath, kept)
            with self._lock:
                if self._kept.get(fspath) is kept:
                    if current is None:
                        self._drop(fspath)
                    elif current is not kept:
                        self._kept[fspath] = current
        return current.entries if current is not None else None

    def _brought_up_to_date(self, fspath: str, kept: _Kept) -> _Kept | None:
        """``kept`` as its folder is now (itself where nothing changed), or None where the
        folder must be listed again: the watch says so, a changed entry cannot be read, is
        a link or makes too many subfolders, or a subfolder is gone."""
        changed = self.watch.changes(kept.ospath, kept.token)
        if changed is None:
            return None
        now = time.monotonic()
        entries = kept.entries
        if changed:
            try:
                found = self.fs.entries(fspath, sorted(changed))
            except (OSError, ValueError, NotImplementedError):
                return None
            now_there = {_name_of(info): info for info in found}
            entries = dict(entries)  # a new dict: an answer being written may be walking the old one
            added = False
            for name in changed:
                if name in now_there:
                    added = added or name not in entries
                    entries[name] = now_there[name]  # in its place, if it was there
                else:
                    entries.pop(name, None)
            if added:
                entries = {name: entries[name] for name in sorted(entries)}
            if not _may_keep(entries, now_there.values()):
                return None
        if now - kept.when < LISTING_TTL:
            return kept if entries is kept.entries else kept._replace(entries=entries)
        for name, info in entries.items():  # a subfolder's times change with what is inside it
            if info["type"] == "directory":
                try:
                    st = os.stat(os.path.join(kept.ospath, name), follow_symlinks=False)
                except OSError:
                    return None  # gone: the folder's event is on its way
                info.update(size=st.st_size, mtime=st.st_mtime, created=st.st_ctime, nlink=st.st_nlink)
        return kept._replace(when=now, entries=entries)  # its subfolders looked at: good for LISTING_TTL

    def invalidate(self, *fspaths: str) -> None:
        """Forget the listings our own write at each path changes: the path's own, its
        folder's, and those below it. A watched listing is kept: its watch names the change."""
        with self._lock:
            for fspath in fspaths:
                for key in [fspath, fspath.rpartition("/")[0],
                            *(k for k in self._kept if k.startswith(fspath + "/"))]:
                    kept = self._kept.get(key)
                    if kept is not None and kept.token is None:
                        self._drop(key)

    def _drop(self, fspath: str, keep: str | None = None) -> None:
        """Forget a folder's listing and its watch, unless that watch is ``keep``'s (a new
        listing of the folder has just watched it again; under the lock)."""
        kept = self._kept.pop(fspath, None)
        if kept and kept.ospath not in (None, keep):
            self.watch.forget(kept.ospath)

    def _trim(self, now: float) -> None:
        """Drop listings past their time that no watch keeps, and the oldest kept ones while
        they hold more than KEPT_ENTRIES entries (the newest is always kept; under the lock)."""
        held = 0
        for i, key in enumerate(reversed(list(self._kept))):  # newest first
            kept = self._kept[key]
            alive = kept.token is not None or now - kept.when < LISTING_TTL
            if alive and (i == 0 or held + len(kept.entries) <= KEPT_ENTRIES):
                held += len(kept.entries)
            else:
                self._drop(key)
