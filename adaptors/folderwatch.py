"""Which entries of a local folder changed since a moment, from the kernel (Linux inotify).

``token = FolderWatch.watch(ospath)`` starts watching a folder (None where it cannot);
``changes(ospath, token)`` names the entries created, removed, renamed, written or with
their metadata changed since then, by any process (each name once, then forgotten: the
next call names what changed after this one), or is None where the folder must be read
again whole. ``forget(ospath)`` stops watching. A cache of a folder's listing can then be
kept as long as the folder is watched, reading again only the entries named.

Rules:
- watch first, then read the folder; ask for changes first, then read the entries named:
  a change made while it is read is named by the next call, so what was read is never
  taken for current after it;
- events are read when asked (``changes``), with no thread: a change is queued by the
  kernel before the call that made it returns, so whoever made it and then asks sees it;
- None (read the folder whole, and watch it again) where the folder itself changed
  (removed, moved, its own mode or times set), the path now leads to another folder (a
  parent moved or swapped for a link: each call compares the folder's device and inode),
  more than ``MAX_NAMES`` entries changed since the last call, the event queue was lost
  (overflow: every folder), or ``token`` is not the path's latest ``watch``;
- only on file systems whose changes all pass through this kernel (``LOCAL_TYPES``): on
  NFS, SMB, FUSE or a cluster file system another machine's writes raise no event, so
  ``watch`` says None there;
- what inotify does not report is not seen: the times of a subfolder's own entries
  (only the folder itself is watched), writes through a shared memory map. The caller
  looks at subfolders and links itself;
- at most ``MAX_FOLDERS`` folders at once, and no more when the account's inotify
  limits are reached.
"""

import ctypes
import errno
import itertools
import os
import re
import struct
import threading
import weakref
from dataclasses import dataclass

# file systems where every change is made by this kernel, so inotify reports them all
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "jfs", "bcachefs",
                         "overlay"})
MAX_FOLDERS = 256  # watches are the account's (8,192 by default on older kernels), shared with its editors
MAX_NAMES = 1000  # changed entries named at most between two calls: past that, reading the folder costs no more

# inotify(7)'s numbers
IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x4, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_ONLYDIR = 0x400, 0x800, 0x4000, 0x1000000
# what changes a listing: an entry made, removed or renamed, a file written, metadata (times,
# mode, links) changed, the folder itself removed or moved
_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
         | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length


def _libc():
    """The C library, if it has inotify (Linux), else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if all(hasattr(libc, f) for f in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch")) else None


def file_system_type(ospath: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system holding ``ospath`` (``ext4``, ``nfs4``, ``fuse.sshfs``...),
    from the mount table: the mount with the longest mount point above its real path."""
    real = os.path.realpath(ospath)
    best, kind = -1, None
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:  # a later mount over the same point hides the earlier one
            best, kind = len(point), right.split()[0]
    return kind


class FolderWatch:
    """Watches on local folders (see the module's rules); safe to share between threads."""

    def __init__(self, max_folders: int = MAX_FOLDERS):
        self.max_folders = max_folders
        self._lock = threading.Lock()
        self._libc = _libc()
        self._fd = None  # made at the first watch: a provider that lists nothing local holds none
        self._paths: dict[int, set[str]] = {}  # watch -> its folder's paths (a link's and its target's: one watch)
        self._watched: dict[str, _Watched] = {}  # folder path -> its watch and the names changed since last asked
        self._local: dict[str, bool] = {}  # mount types already asked, by folder
        self._tokens = itertools.count(1)

    def watch(self, ospath: str) -> int | None:
        """Watch the folder at ``ospath`` from now: the token to ask for its changes, or None
        where that cannot be."""
        if self._libc is None or not self._is_local(ospath):
            return None
        with self._lock:
            if self._fd is None:
                fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                self._fd = fd if fd >= 0 else -1  # EMFILE: the account's instances are used up
                if fd >= 0:
                    weakref.finalize(self, os.close, fd)
            if self._fd < 0:
                return None
            self._read_events()
            if ospath not in self._watched and len(self._watched) >= self.max_folders:
                return None
            before = _identity(ospath)
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(ospath), _MASK)
            if wd < 0:  # ENOSPC (the account's watches), ENOTDIR, ENOENT, EACCES
                return None
            if before is None or _identity(ospath) != before:  # swapped while watched: which one is unknown
                if wd not in self._paths:
                    self._drop(wd)
                return None
            old = self._watched.get(ospath)
            if old is not None and old.wd != wd:  # the path now leads to another folder
                self._forget(ospath)
            self._paths.setdefault(wd, set()).add(ospath)
            token = next(self._tokens)
            self._watched[ospath] = _Watched(wd, before, token, set())
            return token

    def changes(self, ospath: str, token: int) -> set[str] | None:
        """The names of the folder's entries changed since ``watch`` gave ``token`` or since
        the last call, or None where it must be read whole again (the module's rules)."""
        with self._lock:
            watched = self._watched.get(ospath)
            if watched is None or watched.token != token:
                return None
            self._read_events()
            if self._watched.get(ospath) is not watched:
                return None
            if _identity(ospath) != watched.identity:
                self._forget(ospath)
                return None
            names, watched.names = watched.names, set()
            return names

    def forget(self, ospath: str) -> None:
        """Stop watching the folder (if it was)."""
        with self._lock:
            self._forget(ospath)

    def _forget(self, ospath: str) -> None:
        """Stop watching the folder at this path; its watch goes with its last path."""
        watched = self._watched.pop(ospath, None)
        if watched is None:
            return
        paths = self._paths.get(watched.wd, set())
        paths.discard(ospath)
        if not paths:
            self._drop(watched.wd)

    def _is_local(self, ospath: str) -> bool:
        known = self._local.get(ospath)
        if known is None:
            if len(self._local) > 4 * self.max_folders:
                self._local.clear()
            known = self._local[ospath] = file_system_type(ospath) in LOCAL_TYPES
        return known

    def _read_events(self) -> None:
        """Note the entries the queued events name; forget the folders changed themselves (under the lock)."""
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError as e:  # never expected; forget everything rather than trust it
                if e.errno != errno.EINTR:
                    self._all_changed()
                    return
                continue
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].split(b"\0", 1)[0]
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:  # events were lost: any folder may have changed
                    self._all_changed()
                    continue
                paths = self._paths.get(wd)
                if not paths:
                    continue
                if not name:  # the folder itself: removed, moved, its own metadata, unmounted
                    for path in list(paths):
                        self._forget(path)
                    continue
                entry = os.fsdecode(name)
                for path in list(paths):
                    names = self._watched[path].names
                    names.add(entry)
                    if len(names) > MAX_NAMES:
                        self._forget(path)

    def _all_changed(self) -> None:
        for wd in list(self._paths):
            self._drop(wd)
        self._watched.clear()

    def _drop(self, wd: int) -> None:
        """Remove a watch (its paths are the caller's to forget)."""
        self._paths.pop(wd, None)
        self._libc.inotify_rm_watch(self._fd, wd)  # EINVAL if the kernel dropped it already: fine


@dataclass
class _Watched:
    """A folder path's watch: its inotify watch, the folder's (device, inode), the token of
    the ``watch`` call, and the entries named since the last ``changes``."""
    wd: int
    identity: tuple[int, int]
    token: int
    names: set[str]


def _identity(ospath: str) -> tuple[int, int] | None:
    """The (device, inode) of the folder the path leads to now, or None."""
    try:
        st = os.stat(ospath)
    except OSError:
        return None
    return st.st_dev, st.st_ino
