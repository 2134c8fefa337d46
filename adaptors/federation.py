"""``SkerryFileSystem``: the ``skerry://`` federation of a user's adaptors.

The top-level folders are the adaptors (``skerry://home/...``, ``skerry://hpc/...``);
below them, each path belongs to that adaptor's filesystem. The small fsspec contract
(``ls``, ``info``, ``_open``, ``cp_file``, ``rm_file``, ``mkdir``...) is routed to the
adaptor; the rich API (``find``, ``glob``, ``walk``, ``copy``, ``get``, ``put``) comes
from ``AbstractFileSystem``.

Rules:
- paths are relative to the federation; ``..`` and empty segments are refused
  (``ValueError``), whatever the backend would make of them;
- writes to a read-only adaptor raise ``PermissionError`` naming it;
- copies between adaptors stream in ``COPY_BLOCK`` blocks: never a whole file in
  memory, never a local temporary copy; inside one adaptor the backend copies
  server-side, except where the server refuses (sftp-only hosts): then it streams too;
- the root and the adaptor folders themselves cannot be created or removed;
- listings (``ls``, ``find``) leave out files being written (``atomic.is_hidden``) and
  the empty-folder objects of object stores.

``SkerryFileSystem()`` with no arguments reads the adaptors of the running
micro-infrastructure from the file named by ``$SKERRY_ADAPTORS`` (JSON, see
``skerry.adaptors.config``), so ``fsspec.open("skerry://home/a.csv")`` works in notebooks;
outside the platform, with ``$SKERRY_URL`` and ``$SKERRY_TOKEN``, it reaches the same
adaptors through the user's WebDAV endpoint (``skerry.adaptors.remote``).
"""

import errno
import os
import shutil

from fsspec.spec import AbstractFileSystem

from . import atomic
from .objectstore import (is_marker, make_folder_marker, move_object_tree, remove_folder_marker,
                          remove_object_tree)
from .registry import Adaptors, LocalRootFileSystem
from .types import adaptor_type

COPY_BLOCK = 8 * 1024 * 1024
_WRITE_MODES = set("wax+")


def _remote_command_refused(error: Exception) -> bool:
    """True for sshfs's server-side copy (``cp`` over an ssh exec channel) being refused.

    sftp-only servers (``ForceCommand internal-sftp``, chroots without ``cp``) refuse
    exec channels or fail the command; asyncssh raises its own exceptions for both.
    """
    return type(error).__module__.split(".")[0] == "asyncssh"


class SkerryFileSystem(AbstractFileSystem):
    protocol = "skerry"
    root_marker = ""
    sep = "/"

    def __init__(self, adaptors=None, read_only=(), make_parents=(), folder_markers=None, **storage_options):
        """``adaptors``: {name: fsspec filesystem}; ``read_only``: names refusing writes;
        ``make_parents``: names whose backend cannot write into a missing folder (the
        federation creates it first, so that every adaptor behaves like an object store);
        ``folder_markers``: object stores, where an empty folder is an empty ``name/`` object
        (so that MKCOL then PUT inside works as on a file system); by default the S3
        adaptors of an ``Adaptors`` mapping.

        With no adaptors, the micro-infrastructure's configuration is loaded (``$SKERRY_ADAPTORS``),
        or outside the platform the user's WebDAV endpoint is used (``$SKERRY_URL`` and
        ``$SKERRY_TOKEN``; see ``skerry.adaptors.remote``).
        """
        super().__init__(**storage_options)
        if adaptors is None:
            from .remote import default_federation

            adaptors, read_only, make_parents = default_federation()
        # a lazy ``Adaptors`` mapping stays lazy; a plain dict is copied
        self.adaptors = adaptors if isinstance(adaptors, Adaptors) else dict(adaptors)
        self.read_only = frozenset(read_only)
        self.make_parents = frozenset(make_parents)
        if folder_markers is None and isinstance(adaptors, Adaptors):
            folder_markers = {n for n, kind in adaptors.kinds.items() if adaptor_type(kind).object_store}
        self.folder_markers = frozenset(folder_markers or ())
        self._streamed_copies = set()  # adaptors whose server-side copy is refused

    def is_object_store(self, name: str) -> bool:
        """True for an object store adaptor (S3): a write there appears whole when it
        completes (no temporary name needed), and an empty folder is its ``folder/`` object.

        The one test of it for the federation and its users (WebDAV, contents); False for
        a name that is no adaptor.
        """
        return name in self.folder_markers

    # ---- paths ----------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("skerry://"):
            path = path[len("skerry://"):]
        return path.strip("/")

    def _split(self, path):
        """(adaptor name, adaptor filesystem, path inside it) for a federation path."""
        path = self._strip_protocol(path)
        parts = path.split("/") if path else []
        for part in parts:
            if part in ("", ".", ".."):
                raise ValueError(f"invalid path {path!r}: empty, '.' and '..' segments are not allowed")
        if not parts:
            return None, None, ""
        name = parts[0]
        if name not in self.adaptors:
            raise FileNotFoundError(f"no adaptor named {name!r} (adaptors: {', '.join(sorted(self.adaptors))})")
        return name, self.adaptors[name], "/".join(parts[1:])

    def _writable(self, path, new_file=False):
        """Like ``_split`` for a path about to change; ``new_file``: make its folder exist."""
        name, fs, inner = self._split(path)
        if name is None or not inner:
            raise PermissionError(f"{path or '/'}: the federation root and adaptor folders cannot be changed")
        if name in self.read_only:
            raise PermissionError(f"adaptor {name!r} is read-only")
        parent = inner.rpartition("/")[0]
        if new_file and parent and name in self.make_parents:
            fs.makedirs(parent, exist_ok=True)
        return name, fs, inner

    def local_path(self, path, *, write: bool = False, unfollowed: bool = False, folder: bool = False) -> str | None:
        """The OS path of a file path on a local adaptor (its containment checked), or None:
        for any other adaptor, the root and adaptor folders, a path leading outside, and
        (``write``) a read-only adaptor. Those are for the federation's own calls to answer.
        ``unfollowed``: the caller follows no link at the last segment (``os_path``'s rule).
        ``folder``: the path names a folder, and the adaptor's own folder is answered too."""
        try:
            name, fs, inner = self._split(path)
            if (name is None or not (inner or folder) or (write and name in self.read_only)
                    or not hasattr(fs, "os_path")):
                return None
            return fs.os_path(inner, unfollowed=unfollowed)
        except Exception:  # unknown adaptor, bad path, unreachable backend, outside: not ours to say
            return None

    @staticmethod
    def _outer(name, info, fresh=False):
        """``info`` named by its federation path; a copy, unless ``fresh`` (no one else holds it)."""
        info = info if fresh else dict(info)
        inner = info["name"].strip("/")
        info["name"] = f"{name}/{inner}" if inner else name
        return info

    # ---- reading ----------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        name, fs, inner = self._split(path)
        if name is None:
            entries = [self._adaptor_info(n) for n in sorted(self.adaptors)]
        else:
            store = self.is_object_store(name)  # asked once a listing, not once an entry
            fresh = isinstance(fs, LocalRootFileSystem)  # its ls makes new entries each time: no copy
            entries = [self._outer(name, e, fresh) for e in fs.ls(inner, detail=True, **kwargs)
                       if self._listed(name, e, store)]
        return entries if detail else [e["name"] for e in entries]

    def entries(self, path, names) -> list[dict]:
        """``ls``'s entries of a folder's ``names`` alone (a name gone, or one a listing leaves
        out, is absent): what changed in a big local folder, read without reading it whole.
        Local adaptors' folders only (``NotImplementedError`` elsewhere)."""
        name, fs, inner = self._split(path)
        if name is None or not hasattr(fs, "entries"):
            raise NotImplementedError(f"{path or '/'}: entries are read by name in local adaptors' folders only")
        return [self._outer(name, e, True) for e in fs.entries(inner, names) if self._listed(name, e, False)]

    def _listed(self, name, info, store=None):
        """False for what a listing leaves out: a file being written (its temporary name),
        and the empty ``folder/`` object that keeps an empty S3 folder. ``store``: whether
        adaptor ``name`` is an object store, where the caller knows it."""
        if store is None:
            store = self.is_object_store(name)
        return not (atomic.is_hidden(info["name"]) or (store and is_marker(info)))

    def _adaptor_info(self, name):
        return {"name": name, "size": 0, "type": "directory", "read_only": name in self.read_only}

    def info(self, path, **kwargs):
        name, fs, inner = self._split(path)
        if name is None:
            return {"name": "", "size": 0, "type": "directory"}
        if not inner:
            return self._adaptor_info(name)
        return self._outer(name, fs.info(inner, **kwargs))

    def isfile(self, path):
        """The adaptor's own answer (a local folder's is one ``stat``); False for the root,
        an adaptor folder, an unknown adaptor or a bad path, as fsspec answers."""
        try:
            name, fs, inner = self._split(path)
            return bool(inner) and fs.isfile(inner)
        except Exception:  # fsspec's own contract: any failure to look is "not a file"
            return False

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        name, fs, inner = self._split(path)
        if name is None:
            out = {}
            for n in sorted(self.adaptors):
                if withdirs:
                    out[n] = self._adaptor_info(n)
                if maxdepth is None or maxdepth > 1:
                    out.update(self.find(n, None if maxdepth is None else maxdepth - 1,
                                         withdirs, detail=True, **kwargs))
        else:
            found = fs.find(inner, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
            out = {}
            for info in found.values():
                if not self._listed(name, info):
                    continue
                info = self._outer(name, info)
                out[info["name"]] = info
        return out if detail else sorted(out)

    def cat_file(self, path, start=None, end=None, **kwargs):
        name, fs, inner = self._split(path)
        if not inner:
            raise IsADirectoryError(path)
        return fs.cat_file(inner, start=start, end=end, **kwargs)

    def get_file(self, rpath, lpath, callback=None, outfile=None, **kwargs):
        name, fs, inner = self._split(rpath)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return None
        if isinstance(lpath, str) and os.path.dirname(lpath):
            os.makedirs(os.path.dirname(lpath), exist_ok=True)
        return fs.get_file(inner, lpath, **({"callback": callback} if callback else {}), **kwargs)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if _WRITE_MODES & set(mode):
            name, fs, inner = self._writable(path, new_file=True)
            if "x" in mode and fs.exists(inner):  # not every backend reports this itself
                raise FileExistsError(f"{path} exists")
        else:
            name, fs, inner = self._split(path)
            if not inner:
                raise IsADirectoryError(path)
        return fs.open(inner, mode, block_size=block_size, autocommit=autocommit,
                       cache_options=cache_options, **kwargs)

    def checksum(self, path):
        name, fs, inner = self._split(path)
        return fs.checksum(inner) if inner else super().checksum(path)

    def modified(self, path):
        name, fs, inner = self._split(path)
        return fs.modified(inner)

    def created(self, path):
        name, fs, inner = self._split(path)
        return fs.created(inner)

    # ---- writing ----------------------------------------------------------

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        name, fs, inner = self._writable(path, new_file=True)
        if mode == "create" and fs.exists(inner):  # not every backend reports this itself
            raise FileExistsError(f"{path} exists")
        # "overwrite" is every backend's default, and some do not take ``mode`` at all (webdav4,
        # the remote skerry:// of a plain shell: its pipe_file raised TypeError)
        return fs.pipe_file(inner, value, **({} if mode == "overwrite" else {"mode": mode}), **kwargs)

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs):
        name, fs, inner = self._writable(rpath, new_file=True)
        if os.path.isdir(lpath):
            return self.makedirs(rpath, exist_ok=True)
        return fs.put_file(lpath, inner, **({"callback": callback} if callback else {}), **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        src_name, src_fs, src = self._split(path1)
        dst_name, dst_fs, dst = self._writable(path2, new_file=True)
        if not src:
            raise IsADirectoryError(path1)
        if src_fs.isdir(src):
            return self.makedirs(path2, exist_ok=True)
        if src_name == dst_name and src_name not in self._streamed_copies:
            try:
                return src_fs.cp_file(src, dst, **kwargs)
            except Exception as e:
                if not _remote_command_refused(e):
                    raise
                # an sftp-only server (no shell, no cp): stream it, now and from now on
                self._streamed_copies.add(src_name)
        with src_fs.open(src, "rb") as fin, dst_fs.open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, COPY_BLOCK)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        src_name, src_fs, src = self._writable(path1)
        dst_name, dst_fs, dst = self._writable(path2, new_file=True)
        if src_name == dst_name and self.is_object_store(src_name) and src_fs.isdir(src):
            return move_object_tree(src_fs, src, dst)
        if src_name == dst_name:
            return src_fs.mv(src, dst, recursive=recursive, maxdepth=maxdepth, **kwargs)
        return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def rm_file(self, path):
        name, fs, inner = self._writable(path)
        return fs.rm_file(inner)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = path if isinstance(path, list) else [path]
        by_adaptor = {}
        for p in paths:
            name, fs, inner = self._writable(p)
            by_adaptor.setdefault(name, (fs, []))[1].append(inner)
        for name, (fs, inners) in by_adaptor.items():
            if recursive and maxdepth is None and self.is_object_store(name):
                for inner in inners:
                    remove_object_tree(fs, inner)
            else:
                fs.rm(inners, recursive=recursive, maxdepth=maxdepth)

    def mkdir(self, path, create_parents=True, **kwargs):
        name, fs, inner = self._writable(path)
        if not self.is_object_store(name):
            return fs.mkdir(inner, create_parents=create_parents, **kwargs)
        if fs.exists(inner):
            raise FileExistsError(f"{path} exists")
        parent = inner.rpartition("/")[0]
        if parent and not fs.isdir(parent):
            if not create_parents:
                raise FileNotFoundError(f"{path}: its parent folder does not exist")
            self.makedirs(f"{name}/{parent}", exist_ok=True)
        make_folder_marker(fs, inner)

    def makedirs(self, path, exist_ok=False):
        name, fs, inner = self._split(path)
        if name is not None and not inner and exist_ok:
            return None  # an adaptor folder always exists
        name, fs, inner = self._writable(path)
        if not self.is_object_store(name):
            return fs.makedirs(inner, exist_ok=exist_ok)
        if fs.isdir(inner):
            if not exist_ok:
                raise FileExistsError(f"{path} exists")
            return None
        self.mkdir(path, create_parents=True)

    def rmdir(self, path):
        """Remove an empty folder; ``OSError`` (ENOTEMPTY) if something is in it, on every adaptor."""
        name, fs, inner = self._writable(path)
        if self.is_object_store(name):
            if not fs.isdir(inner):
                raise NotADirectoryError(f"{path} is not a folder") if fs.exists(inner) else FileNotFoundError(path)
            if self.ls(path, detail=False):
                raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
            return remove_folder_marker(fs, inner)
        backend = getattr(fs, "fs", fs)
        if type(backend).rmdir is AbstractFileSystem.rmdir and hasattr(backend, "_rmdir"):
            # sshfs has only an async rmdir: the sync one it inherits from fsspec does nothing
            from fsspec.asyn import sync

            return sync(backend.loop, backend._rmdir, fs._join(inner))
        return fs.rmdir(inner)

    def touch(self, path, truncate=True, **kwargs):
        name, fs, inner = self._writable(path, new_file=True)
        return fs.touch(inner, truncate=truncate, **kwargs)

    def invalidate_cache(self, path=None):
        built = self.adaptors.built() if isinstance(self.adaptors, Adaptors) else self.adaptors.values()
        for fs in built:
            fs.invalidate_cache()
