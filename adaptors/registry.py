"""From adaptor specs to configured fsspec filesystems.

Each adaptor becomes a ``DirFileSystem`` rooted at the adaptor's folder (local path,
remote path, bucket/prefix) over the backend's own fsspec filesystem, as its type in
the table of adaptor types (``skerry.adaptors.types``) says. Backends are imported
lazily: a missing one gives an install hint, not an ImportError at import.
``Adaptors`` builds each filesystem on first use, so one unreachable host does not
take the other adaptors down with it.
"""

import os
import threading
import time
from stat import S_ISDIR, S_ISLNK, S_ISREG
from collections.abc import Callable, Mapping

from fsspec.implementations.dirfs import DirFileSystem

from skerry.errors import AdaptorUnavailable, ConfigError

from .specs import AdaptorSpec
from .types import adaptor_type


def need(kind: str, module: str | None = None):
    """The backend module of adaptor type ``kind`` (or ``module``, one its package brings),
    imported now; a ConfigError naming the package to install if it cannot be imported."""
    return adaptor_type(kind).backend(module)


def backend(spec: AdaptorSpec, secrets: dict | None = None):
    """(filesystem, root) for one adaptor; ``secrets`` is its resolved credential entry."""
    return adaptor_type(spec.type).filesystem(spec, secrets or {})


FOLDER_CHECK_TTL = 2.0  # seconds a folder's containment check is trusted (the WebDAV listings' TTL)


def _info(name: str, st: os.stat_result, kind: str, size: int, link: bool) -> dict:
    """A listing entry with the keys and values fsspec's local ``info()`` gives."""
    return {"name": name, "size": size, "type": kind, "created": st.st_ctime, "islink": link,
            "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime, "ino": st.st_ino,
            "nlink": st.st_nlink}


class LocalRootFileSystem(DirFileSystem):
    """A local folder as an adaptor: no path, symlinks included, leads outside it."""

    def __init__(self, path, fs):
        super().__init__(path=path, fs=fs)
        self.real_root = os.path.realpath(self.path)
        self._folders: dict[str, tuple[float, bool]] = {}  # folder -> (when checked, inside?)

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root + os.sep)

    def _join(self, path):
        joined = super()._join(path)
        for p in [joined] if isinstance(joined, str) else joined:
            if not self._leads_inside(p.rstrip("/") or "/"):
                raise PermissionError(f"{path!r} leads outside the adaptor's folder")
        return joined

    def os_path(self, path: str, *, unfollowed: bool = False) -> str:
        """The OS path of ``path`` (relative to the root); PermissionError if it leads outside.

        ``unfollowed``: the caller never follows a link at the path's last segment (it opens
        it with ``O_NOFOLLOW``, looks with ``lstat``, or replaces it): only its folder is
        checked (remembered), and the path costs no ``lstat`` here."""
        if not unfollowed:
            return self._join(path)
        joined = super()._join(path).rstrip("/") or "/"
        if joined != self.path and not self._folder_inside(joined):
            raise PermissionError(f"{path!r} leads outside the adaptor's folder")
        return joined

    def _leads_inside(self, path: str) -> bool:
        """Whether ``path``, its links followed, stays inside the root.

        A request's path costs one ``lstat`` (is its last segment a link?): whether its
        folder leads inside is remembered for ``FOLDER_CHECK_TTL`` seconds, where a
        ``realpath`` would ``lstat`` every segment of every path (the heaviest step of a
        small WebDAV request). A folder swapped for a link in that window is seen late;
        the endpoint runs as the user, so this keeps the adaptor's paths honest, and
        the account is what confines what they may reach.
        """
        if path == self.path:
            return True
        if os.path.islink(path):
            return self._inside(os.path.realpath(path))
        return self._folder_inside(path)

    def _folder_inside(self, path: str) -> bool:
        """Whether the folder of ``path`` leads inside the root (remembered for a while)."""
        folder = path.rpartition("/")[0] or "/"
        now = time.monotonic()
        checked = self._folders.get(folder)
        if checked is None or now - checked[0] > FOLDER_CHECK_TTL:
            if len(self._folders) > 4096:
                self._folders.clear()
            checked = self._folders[folder] = (now, self._inside(os.path.realpath(folder)))
        return checked[1]

    def _visible(self, info: dict) -> dict | None:
        """A listing entry as users may see it: a link leading outside is left out (its
        size and times are the target's), and no entry names its absolute destination."""
        if info.get("islink") and not self._inside(os.path.realpath(super()._join(info["name"]))):
            return None
        return {k: v for k, v in info.items() if k != "destination"}

    def ls(self, path, detail=True, **kwargs):
        folder = self._join(path)  # containment checked once, for the folder
        try:
            here = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # a file (it lists itself), or nothing: fsspec's answers
            entries = [e for e in map(self._visible, super().ls(path, detail=True, **kwargs)) if e]
        else:
            try:
                entries = self._scan(here, self._prefix(folder))
            finally:
                os.close(here)
        return entries if detail else [e["name"] for e in entries]

    def entries(self, path, names) -> list[dict]:
        """``ls``'s entries of these ``names`` in folder ``path``, one ``lstat`` each (a name
        that is gone, or not one folder entry's, is left out): a few entries of a big folder
        without reading it whole."""
        folder = self._join(path)
        here = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            prefix = self._prefix(folder)
            entries = []
            for name in names:
                if "/" in name or name in ("", ".", ".."):
                    continue
                try:
                    info = self._entry(here, prefix, name, os.stat(name, dir_fd=here, follow_symlinks=False))
                except FileNotFoundError:  # gone
                    continue
                if info:
                    entries.append(info)
            return entries
        finally:
            os.close(here)

    def _prefix(self, folder: str) -> str:
        """What the entries of an OS folder are named under (its path in the adaptor, and a slash)."""
        inner = self._relpath(folder)
        return f"{inner}/" if inner else ""

    def _scan(self, folder: int, prefix: str) -> list[dict]:
        """A folder's entries (``folder``: its fd) from one ``scandir`` and one ``lstat``
        each, relative to the folder (no path walked per entry): what fsspec's local ``ls``
        builds with an ``info()`` per entry, at a fraction of its cost."""
        entries = []
        with os.scandir(folder) as scan:
            for entry in scan:
                try:
                    info = self._entry(folder, prefix, entry.name, entry.stat(follow_symlinks=False))
                except FileNotFoundError:  # gone since the scan saw it
                    continue
                if info:
                    entries.append(info)
        return entries

    def _entry(self, folder: int, prefix: str, name: str, st: os.stat_result) -> dict | None:
        """The listing entry of ``name`` in a folder (its fd), from its ``lstat``: a link is
        described as fsspec describes it (its own kind, its target's size), or left out (None)
        if it leads outside."""
        if S_ISLNK(st.st_mode):
            try:
                size = os.stat(name, dir_fd=folder).st_size
            except OSError:  # a dangling link
                size = 0
            return self._visible(_info(prefix + name, st, "other", size, True))
        kind = "directory" if S_ISDIR(st.st_mode) else "file" if S_ISREG(st.st_mode) else "other"
        return _info(prefix + name, st, kind, st.st_size, False)

    def info(self, path, **kwargs):
        return {k: v for k, v in super().info(path, **kwargs).items() if k != "destination"}

    def isfile(self, path):
        # one lstat for a plain file, where fsspec builds a whole info() dict (a job checks
        # each of its inputs); a link is followed only once it is known to lead inside
        try:
            full = super()._join(path)
            mode = os.lstat(full).st_mode
            if S_ISLNK(mode):
                return self._leads_inside(full) and os.path.isfile(full)
            return S_ISREG(mode) and self._folder_inside(full)
        except (OSError, ValueError):  # gone, or a path the OS refuses
            return False

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        found = super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        found = {name: e for name, e in ((n, self._visible(i)) for n, i in found.items()) if e}
        return found if detail else sorted(found)


def make_filesystem(spec: AdaptorSpec, secrets: dict | None = None) -> DirFileSystem:
    fs, root = backend(spec, secrets)
    return adaptor_type(spec.type).rooted(fs, root)


class Adaptors(Mapping):
    """{name: filesystem}, each filesystem made on first access (sshfs connects when made).

    Rules: names are known up front (listing them connects nothing); a failed build
    raises ``AdaptorUnavailable`` naming the adaptor and is not remembered (the next
    access tries again); a ``ConfigError`` (bad set-up, missing backend) passes unchanged.
    """

    def __init__(self, factories: Mapping[str, Callable[[], object]], kinds: Mapping[str, str] | None = None):
        self._factories = dict(factories)
        self.kinds = dict(kinds or {})  # name -> adaptor type name
        self._built: dict[str, object] = {}
        self._locks = {name: threading.Lock() for name in self._factories}

    def __getitem__(self, name):
        fs = self._built.get(name)
        if fs is not None:
            return fs
        with self._locks[name]:  # KeyError for unknown names, as a dict would
            fs = self._built.get(name)
            if fs is None:
                try:
                    fs = self._factories[name]()
                except ConfigError:
                    raise
                except Exception as e:  # whatever the backend raises for "cannot connect"
                    reason = str(e) or type(e).__name__
                    raise AdaptorUnavailable(f"adaptor {name!r} cannot be reached: {reason}") from None
                self._built[name] = fs
        return fs

    def __iter__(self):
        return iter(self._factories)

    def __len__(self):
        return len(self._factories)

    def built(self) -> list:
        """The filesystems made so far (for cache invalidation: it must not connect)."""
        return list(self._built.values())
