"""Whether a local folder changed since a moment, from the kernel (Linux inotify).

``FolderWatch.watch(ospath)`` starts watching a folder (True) or says it cannot (False);
``unchanged(ospath)`` is True while nothing in it has changed since that call: no entry
created, removed, renamed, written, or with its metadata changed, by any process.
``forget(ospath)`` stops watching. A cache of a folder's listing can then be kept as long
as the folder is unchanged, instead of a few seconds.

Rules:
- watch first, then read the folder: a change made while it is read is reported, so
  what was read is never taken for current after it;
- events are read when asked (``unchanged``), with no thread: a change is queued by the
  kernel before the call that made it returns, so whoever made it and then asks sees it;
- a folder changed once stays changed until watched again (its watch is dropped);
- only on file systems whose changes all pass through this kernel (``LOCAL_TYPES``): on
  NFS, SMB, FUSE or a cluster file system another machine's writes raise no event, so
  ``watch`` says False there;
- what inotify does not report is not seen: the times of a subfolder's own entries
  (only the folder itself is watched), writes through a shared memory map. The caller
  looks at subfolders and links itself;
- at most ``MAX_FOLDERS`` folders at once, and no more when the account's inotify
  limits are reached; a lost event queue (overflow) counts as a change everywhere.
"""

import ctypes
import errno
import os
import re
import struct
import threading
import weakref

# file systems where every change is made by this kernel, so inotify reports them all
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "jfs", "bcachefs",
                         "overlay"})
MAX_FOLDERS = 256  # watches are the account's (8,192 by default on older kernels), shared with its editors

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
        self._unchanged: dict[str, int] = {}  # folder -> its watch, while nothing changed
        self._local: dict[str, bool] = {}  # mount types already asked, by folder

    def watch(self, ospath: str) -> bool:
        """Watch the folder at ``ospath``, from now: True, or False where that cannot be."""
        if self._libc is None or not self._is_local(ospath):
            return False
        with self._lock:
            if self._fd is None:
                fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                self._fd = fd if fd >= 0 else -1  # EMFILE: the account's instances are used up
                if fd >= 0:
                    weakref.finalize(self, os.close, fd)
            if self._fd < 0:
                return False
            self._read_events()
            if ospath not in self._unchanged and len(self._unchanged) >= self.max_folders:
                return False
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(ospath), _MASK)
            if wd < 0:  # ENOSPC (the account's watches), ENOTDIR, ENOENT, EACCES
                return False
            before = self._unchanged.get(ospath)
            if before is not None and before != wd:  # the path now leads to another folder
                self._forget(ospath)
            self._paths.setdefault(wd, set()).add(ospath)
            self._unchanged[ospath] = wd
            return True

    def unchanged(self, ospath: str) -> bool:
        """True while the folder is watched and nothing in it changed since ``watch``."""
        with self._lock:
            if ospath not in self._unchanged:
                return False
            self._read_events()
            return ospath in self._unchanged

    def forget(self, ospath: str) -> None:
        """Stop watching the folder (if it was)."""
        with self._lock:
            self._forget(ospath)

    def _forget(self, ospath: str) -> None:
        """Stop watching the folder at this path; its watch goes with its last path."""
        wd = self._unchanged.pop(ospath, None)
        paths = self._paths.get(wd, set())
        paths.discard(ospath)
        if wd is not None and not paths:
            self._drop(wd)

    def _is_local(self, ospath: str) -> bool:
        known = self._local.get(ospath)
        if known is None:
            if len(self._local) > 4 * self.max_folders:
                self._local.clear()
            known = self._local[ospath] = file_system_type(ospath) in LOCAL_TYPES
        return known

    def _read_events(self) -> None:
        """Mark the folders the queued events name as changed (under the lock)."""
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
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:  # events were lost: any folder may have changed
                    self._all_changed()
                    continue
                if wd in self._paths:
                    for path in self._paths[wd]:
                        del self._unchanged[path]
                    self._drop(wd)

    def _all_changed(self) -> None:
        for wd in list(self._paths):
            self._drop(wd)
        self._unchanged.clear()

    def _drop(self, wd: int) -> None:
        """Remove a watch (its paths are the caller's to forget)."""
        self._paths.pop(wd, None)
        self._libc.inotify_rm_watch(self._fd, wd)  # EINVAL if the kernel dropped it already: fine
