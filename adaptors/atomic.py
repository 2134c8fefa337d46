"""One atomic write: a file is written under a hidden temporary name (or, on a local disk, none), then put in place.

Every writer of users' files uses it: WebDAV PUT, the contents manager's saves and
chunked uploads, staging copies and the jobs' outputs::

    with atomic.writing(fs, "home/results/a.csv") as w:
        fs.pipe_file(w.temp, data)      # renamed over home/results/a.csv on success

Rules:
- the temporary name lies in the file's own folder: ``.<name>.<token>.skerry-part``
  (``temp_name``); a rename inside one folder is atomic on local disks and SFTP, so a
  reader sees the old content or the new, never a part;
- ``is_hidden(name)`` is the one test of those names: the federation leaves them out of
  every listing (``ls``, ``find``: WebDAV, the contents manager, the data API, the find
  index) and WebDAV refuses to address them;
- on any failure (``KeyboardInterrupt`` included) the temporary file is removed: nothing
  half-written stays, under either name;
- ``in_place`` (object stores, where an upload appears whole only when it completes)
  writes to the final name itself; aborting that upload is the caller's (it holds it);
- a rename over an existing file that the backend refuses (some SFTP servers) is done
  as remove, then rename;
- ``write_local(path, chunks)`` is the same write on a local OS path with plain ``os``
  calls, for the WebDAV fast path (``skerry.adaptors.fastfiles``), where fsspec's layers
  would cost more than a small file's whole write. Where the file system can
  (``O_TMPFILE``: ext4, XFS, btrfs, tmpfs), the file is written with no name at all and
  linked in under its own name once whole: a new file costs one change of its folder
  instead of two (10 KB files from 8 threads into one folder: 52 against 96 us of CPU
  each), and a write cut short leaves nothing even when the process is killed. A name
  already taken is replaced by the rename of a temporary name as above. A new small file
  is five system calls (open, write, fstat, link, close): in the WebDAV endpoint each one
  lets another of its threads take the GIL, so each one costs more than its own time.
"""

import contextlib
import errno
import functools
import os
import uuid
from collections.abc import Iterable

from skerry.errors import Conflict

__all__ = ["SUFFIX", "temp_name", "temp_path", "is_hidden", "replace", "discard", "AtomicFile", "writing",
           "write_local", "NoFolder"]

SUFFIX = ".skerry-part"


def temp_name(name: str, token: str | None = None) -> str:
    """The hidden temporary name of file ``name``; ``token`` tells writers apart (random by default)."""
    return f".{name}.{token or uuid.uuid4().hex[:12]}{SUFFIX}"


def temp_path(path: str, token: str | None = None) -> str:
    """``path`` with its last segment replaced by a temporary name, in the same folder."""
    folder, _, name = path.rstrip("/").rpartition("/")
    hidden = temp_name(name, token)
    return f"{folder}/{hidden}" if folder else hidden


def is_hidden(name: str) -> bool:
    """True for a temporary name (the last segment of ``name`` decides)."""
    if SUFFIX not in name:  # nearly every name: one search, asked once per entry of a listing
        return False
    last = name.rstrip("/").rpartition("/")[2]
    return last.startswith(".") and last.endswith(SUFFIX)


def replace(fs, temp: str, path: str) -> None:
    """Rename ``temp`` over ``path``."""
    try:
        fs.mv(temp, path)
    except OSError:
        # some SFTP servers refuse to rename over an existing file
        if not fs.exists(path) or not fs.exists(temp):
            raise
        fs.rm_file(path)
        fs.mv(temp, path)


def discard(fs, temp: str) -> None:
    """Remove a temporary file, if it is there (most often a failed write never made it)."""
    with contextlib.suppress(Exception):
        fs.rm_file(temp)


class AtomicFile:
    """One file being written: to ``temp`` until ``commit``; ``abort`` leaves nothing.

    ``temp`` is ``path`` itself when ``in_place``; then ``commit`` and ``abort`` do nothing.
    """

    def __init__(self, fs, path: str, *, in_place: bool = False, token: str | None = None):
        self.fs = fs
        self.path = path
        self.in_place = in_place
        self.temp = path if in_place else temp_path(path, token)

    def commit(self) -> None:
        """Rename the temporary file into place; if that fails, remove it."""
        if self.in_place:
            return
        try:
            replace(self.fs, self.temp, self.path)
        except BaseException:
            discard(self.fs, self.temp)
            raise

    def abort(self) -> None:
        if not self.in_place:
            discard(self.fs, self.temp)


@contextlib.contextmanager
def writing(fs, path: str, *, in_place: bool = False, token: str | None = None):
    """An ``AtomicFile`` committed when the block ends, aborted if it raises."""
    w = AtomicFile(fs, path, in_place=in_place, token=token)
    try:
        yield w
        w.commit()
    except BaseException:
        w.abort()
        raise


def write_local(path: str, chunks: Iterable[bytes]) -> os.stat_result:
    """Write ``chunks`` to the local file ``path`` atomically (the rules above): an
    exception from ``chunks`` itself (a body cut short) leaves nothing written either.
    Returns the file's ``stat`` as written (its size and time give its ETag); raises
    ``NoFolder`` if ``path`` has no folder to be written in, before reading ``chunks``."""
    path = os.path.abspath(path)
    if not _PROC:
        return _write_named(path, chunks)
    folder = path.rpartition("/")[0] or "/"
    try:
        # O_TMPFILE holds O_DIRECTORY; named again so that, where O_TMPFILE is unknown, no file opens instead
        fd = os.open(folder, os.O_TMPFILE | os.O_DIRECTORY | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except (FileNotFoundError, NotADirectoryError):
        raise NoFolder.of(folder) from None
    except OSError as e:
        if e.errno not in _NO_TMPFILE:
            raise
        return _write_named(path, chunks)
    try:
        _write_all(fd, chunks)
        written = os.fstat(fd)
        _link(fd, path)
    finally:
        os.close(fd)
    return written


class NoFolder(Conflict):
    """``write_local``'s path has no folder (missing, or not a folder): nothing was read or
    written (WebDAV answers such a PUT 409)."""

    code = "no_folder"

    @classmethod
    def of(cls, folder: str) -> "NoFolder":
        return cls(f"{folder!r} is no folder to write a file in")


def _write_all(fd: int, chunks: Iterable[bytes]) -> None:
    # plain os.write: a file object would add an fstat, an ioctl and an lseek to each small file
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}  # a file system (or kernel) without O_TMPFILE
_PROC = os.path.isdir("/proc/self/fd")  # an unnamed file is linked in through its /proc name


def _link(fd: int, path: str) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (absolute), replacing what is there."""
    unnamed, anchor = f"/proc/self/fd/{fd}", _anchor()
    try:  # with folder fds, os.link is linkat(AT_SYMLINK_FOLLOW): link() would not follow /proc's link
        os.link(unnamed, path, src_dir_fd=anchor, dst_dir_fd=anchor, follow_symlinks=True)
        return
    except FileExistsError:
        pass
    temp = temp_path(path)
    os.link(unnamed, temp, src_dir_fd=anchor, dst_dir_fd=anchor, follow_symlinks=True)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@functools.cache
def _anchor() -> int:
    """A folder fd for ``_link``: linkat ignores it for absolute paths (opened once a process)."""
    return os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _write_named(path: str, chunks: Iterable[bytes]) -> os.stat_result:
    """``write_local`` through a temporary name in the file's folder, renamed into place."""
    temp = temp_path(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except (FileNotFoundError, NotADirectoryError):
        raise NoFolder.of(path.rpartition("/")[0] or "/") from None
    try:
        try:
            _write_all(fd, chunks)
            written = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return written
