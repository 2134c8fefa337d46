"""A wsgidav provider over the ``skerry://`` federation: one WebDAV folder per adaptor.

Rules:
- a folder's listing is one ``ls(detail=True)``, kept by ``skerry.adaptors.listings`` (a
  few seconds, or while the kernel watches its local folder) and forgotten on our own
  writes: PROPFIND Depth 1 makes no call per child;
- a PUT is an atomic write (``skerry.adaptors.atomic``): it streams into a hidden
  temporary name in the same folder and is renamed into place only when the body is
  complete: an interrupted PUT leaves nothing visible. On object stores (S3), where an
  upload becomes visible only when it completes, the upload is written in place and
  aborted on error. Temporary names never appear in listings (the federation leaves
  them out) and cannot be addressed;
- ETag and Last-Modified come from the backend's metadata;
- PROPFIND Depth 1 on a folder (allprop or live properties; no locks, no dead
  properties in play) is answered by ``skerry.adaptors.propfind`` from the kept listing;
  anything else, and any doubt, goes to wsgidav;
- errors of the federation map to HTTP by ``skerry.errors.storage_error`` (the table the
  contents manager and the data API use too): PermissionError 403 (read-only adaptor,
  the root, a path leading outside its adaptor), FileNotFoundError 404, ValueError 400,
  an unreachable adaptor 503, ...
"""

import contextlib
import hashlib
from collections.abc import Iterable
from datetime import datetime

from wsgidav import util
from wsgidav.dav_error import HTTP_BAD_REQUEST, HTTP_FORBIDDEN, HTTP_NOT_FOUND, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
from wsgidav.prop_man.property_manager import PropertyManager

from skerry.errors import InternalError, storage_error

from . import atomic
from .listings import Listings

# the conditional request headers: an answer that depends on them is wsgidav's to give
CONDITIONS = ("HTTP_IF", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
              "HTTP_IF_UNMODIFIED_SINCE")


@contextlib.contextmanager
def http_errors():
    """Turn the federation's exceptions into the WebDAV status they mean."""
    try:
        yield
    except DAVError:
        raise
    except Exception as e:
        error = storage_error(e)
        if isinstance(error, InternalError):
            raise  # our own fault: wsgidav logs the traceback and answers 500
        raise DAVError(error.status, context_info=error.message) from None


def timestamp_of(info: dict) -> float | None:
    """An entry's modification time in seconds (each backend names and types it its own way), or None."""
    for key in ("mtime", "LastModified", "last_modified", "modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def etag_of(info: dict, ts: float | None = None) -> str:
    """A file's ETag, unquoted: the backend's own, else its size and modification time in
    hex (microseconds), else a digest of its size and name. ``ts``: ``timestamp_of(info)``,
    where the caller has it."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    # size and modification time change with the content on every other backend
    ts = timestamp_of(info) if ts is None else ts
    size = info.get("size") or 0
    if ts is None:
        return hashlib.md5(f"{size}-{info['name']}".encode()).hexdigest()
    return f"{int(size):x}-{round(ts * 1_000_000):x}"


class _CountingWriter:
    """Counts what is written, so that a body cut short is not taken for a whole one.

    wsgidav calls ``close`` when the body ends, before ``end_write`` can check its
    length; on S3 (written in place) closing commits the object. So ``close`` does
    nothing and ``commit`` closes the backend file, once the body is known whole.
    """

    def __init__(self, f):
        self.f = f
        self.count = 0

    def write(self, data):
        self.count += len(data)
        return self.f.write(data)

    def writelines(self, chunks):
        for data in chunks:
            self.write(data)

    def close(self):
        pass  # see the class docstring: end_write commits or discards

    def commit(self):
        self.f.close()


def cut_short(received: int, expected: int) -> DAVError:
    """The 400 for a PUT body that ended early (the client went away half-way)."""
    return DAVError(HTTP_BAD_REQUEST, context_info=(
        f"the body ended after {received} of {expected} bytes: nothing was written"))


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _base(fspath: str) -> str:
    return fspath.rpartition("/")[2]


class _Resource:
    """What files and folders share: their federation path and cached info."""

    def _setup(self, fspath: str, info: dict | None):
        self.fspath = fspath
        self.info = info

    def get_display_name(self):
        return _base(self.fspath) or "/"

    def get_last_modified(self):
        return timestamp_of(self.info) if self.info else None

    def get_creation_date(self):
        return self.get_last_modified()

    def _move_properties(self, dest_path, *, is_move, with_children):
        props = self.provider.prop_manager
        if not props:
            return
        dest = self.provider.get_resource_inst(dest_path, self.environ)
        if dest is None:
            return
        if is_move:
            props.move_properties(self.get_ref_url(), dest.get_ref_url(),
                                  with_children=with_children, environ=self.environ)
        else:
            props.copy_properties(self.get_ref_url(), dest.get_ref_url(), self.environ)

    def delete(self):
        with http_errors():
            self.provider.fs.rm(self.fspath, recursive=True)
        self.provider.invalidate(self.fspath)
        self.remove_all_properties(recursive=True)
        self.remove_all_locks(recursive=True)

    def support_recursive_move(self, dest_path):
        return True

    def move_recursive(self, dest_path):
        dest = self.provider.to_fspath(dest_path)
        with http_errors():
            self.provider.fs.mv(self.fspath, dest, recursive=True)
        self.provider.invalidate(self.fspath, dest)
        self._move_properties(dest_path, is_move=True, with_children=True)


class FederationFile(_Resource, DAVNonCollection):
    def __init__(self, path, environ, fspath, info):
        super().__init__(path, environ)
        self._setup(fspath, info)
        self._upload = None

    def get_content_length(self):
        return self.info.get("size") if self.info else 0

    def get_content_type(self):
        return self.provider.content_type(_base(self.fspath), self.environ)

    def get_etag(self):
        return etag_of(self.info) if self.info else None

    def support_etag(self):
        return True

    def support_ranges(self):
        return True

    def get_content(self):
        with http_errors():
            return self.provider.fs.open(self.fspath, "rb", block_size=self.provider.block_size)

    def begin_write(self, *, content_type=None):
        fs = self.provider.fs
        with http_errors():
            in_place = self.provider.uploads_in_place(self.fspath)
            self._target = atomic.AtomicFile(fs, self.fspath, in_place=in_place)
            self._upload = _CountingWriter(fs.open(self._target.temp, "wb"))
        return self._upload

    def end_write(self, *, with_errors):
        fs, upload = self.provider.fs, self._upload
        self._upload = None
        if upload is None:  # begin_write itself failed: nothing to undo
            return
        expected = self.environ.get("CONTENT_LENGTH")
        # a client that went away half-way looks like a short body, not like an error
        short = not with_errors and expected and expected.isdigit() and upload.count != int(expected)
        try:
            with http_errors():
                if with_errors or short:
                    if self._target.in_place:  # on an object store: abort the upload
                        upload.f.discard()
                        upload.f.closed = True  # discarded: nothing left to flush, ever
                    else:
                        with contextlib.suppress(OSError):
                            upload.commit()  # the temporary file, removed just below
                        self._target.abort()
                    if short:
                        raise cut_short(upload.count, int(expected))
                    return
                upload.commit()
                self._target.commit()
        finally:
            self.provider.invalidate(self.fspath)
        with http_errors():
            self.info = fs.info(self.fspath)

    def copy_move_single(self, dest_path, *, is_move):
        dest = self.provider.to_fspath(dest_path)
        with http_errors():
            self.provider.fs.copy(self.fspath, dest)
        self.provider.invalidate(dest)
        self._move_properties(dest_path, is_move=is_move, with_children=False)


class FederationFolder(_Resource, DAVCollection):
    def __init__(self, path, environ, fspath, info):
        super().__init__(path, environ)
        self._setup(fspath, info)

    def get_etag(self):
        return None

    def _child_path(self, name):
        return f"{self.path.rstrip('/')}/{name}"

    def _child(self, name, info):
        cls = FederationFolder if info["type"] == "directory" else FederationFile
        fspath = _join(self.fspath, name)
        return cls(self._child_path(name), self.environ, fspath, info)

    def get_member_names(self):
        return list(self.provider.listing(self.fspath))  # in order

    def get_member_list(self):
        return [self._child(name, info) for name, info in self.provider.listing(self.fspath).items()]

    def get_member(self, name):
        info = self.provider.listing(self.fspath).get(name)
        return self._child(name, info) if info else None

    def _refuse_at_root(self):
        if not self.fspath:
            raise DAVError(HTTP_FORBIDDEN, context_info="the root holds one folder per adaptor: write inside one")

    def create_empty_resource(self, name):
        self._refuse_at_root()
        fspath = _join(self.fspath, name)
        if self.environ.get("REQUEST_METHOD") == "PUT":
            return FederationFile(self._child_path(name), self.environ, fspath, None)  # made by end_write
        with http_errors():
            # LOCK on an unmapped URL makes an empty resource; a file made behind our back
            # since the cached listing is kept as it is, never emptied
            if not self.provider.fs.exists(fspath):
                self.provider.fs.touch(fspath)
            info = self.provider.fs.info(fspath)
        self.provider.invalidate(fspath)
        return FederationFile(self._child_path(name), self.environ, fspath, info)

    def create_collection(self, name):
        self._refuse_at_root()
        fspath = _join(self.fspath, name)
        with http_errors():
            self.provider.fs.mkdir(fspath, create_parents=False)
        self.provider.invalidate(fspath)

    def copy_move_single(self, dest_path, *, is_move):
        dest = self.provider.to_fspath(dest_path)
        with http_errors():
            if not self.provider.fs.exists(dest):
                self.provider.fs.mkdir(dest, create_parents=False)
        self.provider.invalidate(dest)
        self._move_properties(dest_path, is_move=is_move, with_children=False)


def type_key(name: str) -> str | None:
    """All that the MIME type guess reads of a file's name: what follows its first dot
    (``a.tar.gz`` is a tar file, ``b.gz`` is not; ``csv`` is no CSV file). None for a name
    the guess reads otherwise: one with a leading dot or a colon."""
    return None if name.startswith(".") or ":" in name else name.partition(".")[2]


class FederationProvider(DAVProvider):
    """Serves a ``SkerryFileSystem``; ``block_size`` is the read size of GET streams."""

    def __init__(self, fs, block_size: int = 1024 * 1024):
        super().__init__()
        self.fs = fs
        self.block_size = block_size
        self.listings = Listings(fs)
        self._content_types: dict[str, str] = {}  # what follows a name's first dot -> its MIME type

    def is_readonly(self):
        return False

    def propfind_listing(self, environ, body: bytes) -> Iterable[bytes] | None:
        """A PROPFIND Depth 1 answered without wsgidav's generic path (``skerry.adaptors.propfind``)."""
        from .propfind import propfind_listing  # it reads this module's resources: imported once used

        return propfind_listing(self, environ, body)

    def content_type(self, name: str, environ) -> str:
        """The MIME type wsgidav gives a file named ``name`` (a last path segment).

        Remembered by ``type_key(name)``; a name without one is asked each time.
        """
        key = type_key(name)
        known = self._content_types.get(key) if key is not None else None
        if known is None:
            known = util.guess_mime_type(name, environ["wsgidav.config"])
            if key is not None:
                self._content_types[key] = known
        return known

    def to_fspath(self, path: str) -> str:
        # empty segments are dropped: wsgidav joins "dest/" + "/child" in recursive COPY/MOVE
        parts = [part for part in path.split("/") if part]
        if any(atomic.is_hidden(part) for part in parts):
            raise DAVError(HTTP_NOT_FOUND)
        return "/".join(parts)

    def local_file(self, path: str, *, write: bool) -> tuple[str, str] | None:
        """(federation path, OS path) of a request path on a local adaptor (a writable one
        when ``write``), or None: ``skerry.adaptors.fastfiles`` answers the former itself.
        Its folder is checked, not a link at its last segment: the caller follows none."""
        try:
            fspath = self.to_fspath(path)
        except DAVError:  # a temporary name: wsgidav answers 404
            return None
        ospath = self.fs.local_path(fspath, write=write, unfollowed=True)
        return (fspath, ospath) if ospath else None

    def uploads_in_place(self, fspath: str) -> bool:
        """True on object stores: an upload there is invisible until it completes."""
        return self.fs.is_object_store(fspath.partition("/")[0])

    def listing(self, fspath: str) -> dict[str, dict]:
        """{name: info} of a folder, names in order (``Listings.get``), errors as HTTP's."""
        with http_errors():
            return self.listings.get(fspath)

    def invalidate(self, *fspaths: str) -> None:
        """Our own write at each path: the listings it changes are forgotten (``Listings.invalidate``)."""
        self.listings.invalidate(*fspaths)

    def get_resource_inst(self, path: str, environ: dict):
        self._count_get_resource_inst += 1
        fspath = self.to_fspath(path)
        if not fspath:
            return FederationFolder("/", environ, "", {"name": "", "type": "directory", "size": 0})
        parent, _, name = fspath.rpartition("/")
        siblings = self.listings.current(parent)
        if siblings is not None:
            info = siblings.get(name)
        else:
            try:
                with http_errors():
                    info = self.fs.info(fspath)
            except DAVError as e:
                if e.value == HTTP_NOT_FOUND:
                    return None
                raise
        if info is None:
            return None
        cls = FederationFolder if info["type"] == "directory" else FederationFile
        return cls(path, environ, fspath, info)


class DeadProperties(PropertyManager):
    """wsgidav's in-memory dead properties, which can also say at once whether any
    resource at or below a URL has one (a listing then asks once, not once per child)."""

    def any_below(self, ref_url: str) -> bool:
        prefix = ref_url.rstrip("/") + "/"
        self._lock.acquire_read()
        try:
            if not self._loaded:
                self._lazy_open()
            return any(url == ref_url or url.startswith(prefix) for url in self._dict)
        finally:
            self._lock.release()
