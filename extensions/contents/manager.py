"""The user's ``skerry://`` federation as JupyterLab's file tree: a jupyter_server contents manager.

``SkerryContentsManager`` serves the contents REST API (``/api/contents/...``) over
``SkerryFileSystem``, so the file browser, notebooks (``skerry://home/...``) and the
WebDAV endpoint all see one tree: one top-level folder per adaptor (home, s3, hpc, ...).
It reads and writes; the models come from ``models``, the checkpoints from
``checkpoints``, the ``/files/`` downloads from ``files``.

Rules:
- the adaptors come from ``$SKERRY_ADAPTORS`` (see ``skerry.adaptors.config``), read
  when the server starts; no adaptor set, no server (a clear error, not an empty tree);
- every backend call runs in a worker thread (``_run``): a slow SFTP or S3 adaptor never
  blocks the server's event loop;
- a folder listing is one ``ls(detail=True)``, never a call per entry;
- saves are atomic writes (``skerry.adaptors.atomic``): the content goes to a hidden
  temporary name in the same folder and is renamed into place; on object stores (S3) a
  single write is already all-or-nothing and is done in place. Chunked uploads from
  JupyterLab (``chunk`` 1, 2, ..., -1) collect in one temporary name, renamed on the last;
- names starting with ``.`` are hidden (404) unless ``allow_hidden`` (``paths.hidden``: the
  folder of job logs is not, the monitor's links lead there); so are the
  checkpoints; temporary names are never listed (the federation leaves them out);
- a new folder exists, empty, on every adaptor (the federation keeps an empty S3 folder
  as its ``folder/`` object); deleting one removes it with ``rmdir``, after its
  checkpoints: a folder with anything else in it is a 400 (``always_delete_dir``: gone);
- errors are ``tornado.web.HTTPError`` with a status and a sentence: read-only
  adaptor, the root or an adaptor folder changed, a symlink out of a local adaptor:
  403; missing: 404; traversal (``..``, ``.``, empty segments) and bad models: 400;
  an existing target: 409; an adaptor that cannot be reached now: 503 (the others
  keep working: the root lists adaptors by name, connecting to none); storage errors
  take their status from ``skerry.errors.storage_error`` (``http_errors``), as WebDAV
  and the data API do;
- kernels start in the local folder of the notebook when its adaptor is local (the
  home adaptor is), and in the home folder for notebooks on remote adaptors
  (``get_kernel_path``; jupyter_server's kernel manager turns it into the cwd).
"""

import asyncio
import contextlib
import functools
import os
import re
import shutil

import nbformat
from jupyter_server.services.contents.manager import AsyncContentsManager
from tornado.web import HTTPError
from traitlets import Bool, Unicode, default

from skerry.adaptors import atomic
from skerry.adaptors.config import build_federation, read_config
from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.specs import load_specs
from skerry.adaptors.types import adaptor_type
from skerry.config import ADAPTORS

from . import models, paths
from .checkpoints import CHECKPOINT_DIR, SkerryCheckpoints
from .files import FILE_BLOCK, SkerryFilesHandler
from .httperrors import http_errors

CHUNKS = "chunks"  # the token of a chunked upload's temporary name: the same for each chunk
# what an empty folder may still hold: its checkpoints, and the empty-folder marker of
# S3 folders made before the federation kept them (``folder/`` objects) itself
LEFTOVERS = (CHECKPOINT_DIR, ".keep")


class SkerryContentsManager(AsyncContentsManager):
    """Contents API over the ``skerry://`` federation of the running micro-infrastructure."""

    adaptors_file = Unicode(
        config=True,
        help="""Adaptor configuration (JSON, mode 0600) to serve; default ``$SKERRY_ADAPTORS``.

        The spawner writes it and names it in the environment; it holds credentials,
        so it is never passed on a command line.
        """,
    )

    @default("adaptors_file")
    def _default_adaptors_file(self):
        return ADAPTORS.get() or ""

    home_adaptor = Unicode(
        "home",
        config=True,
        help="""Adaptor whose local folder is the working folder of kernels of notebooks
        on remote adaptors (S3, SFTP, ...), which have no local folder of their own.""",
    )

    always_delete_dir = Bool(
        False,
        config=True,
        help="""Delete folders that are not empty. Off by default, as in jupyter_server
        without a trash: a federation has no trash, deletion is for good.""",
    )

    @default("root_dir")
    def _default_root_dir(self):
        # the server's folder: kernel paths are relative to it (see get_kernel_path)
        return getattr(self.parent, "root_dir", None) or os.getcwd()

    @default("checkpoints_class")
    def _default_checkpoints_class(self):
        return SkerryCheckpoints

    @default("files_handler_class")
    def _default_files_handler_class(self):
        return SkerryFilesHandler

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.adaptors_file:
            raise RuntimeError(f"no adaptors to serve: ${ADAPTORS.name} is not set "
                               "(skerry's contents manager runs inside a micro-infrastructure)")
        config = read_config(self.adaptors_file)
        self.specs = {spec.name: spec for spec in load_specs(config.get("adaptors", []))}
        self.fs = SkerryFileSystem(*build_federation(config))

    # ---- plumbing ------------------------------------------------------------

    async def _run(self, func, *args, **kwargs):
        """Run a blocking backend call in a worker thread."""
        return await asyncio.to_thread(functools.partial(func, *args, **kwargs))

    def _adaptor(self, path: str) -> str | None:
        """The adaptor of an API path (None: the root), by its name alone: nothing connects.

        The federation's path rules, checked before any backend sees the path.
        """
        parts = path.strip("/").split("/") if path.strip("/") else []
        if any(part in ("", ".", "..") for part in parts):
            raise HTTPError(400, f"Invalid path {path!r}: empty, '.' and '..' segments are not allowed")
        if parts and parts[0] not in self.specs:
            raise HTTPError(404, f"No such file or folder: {path} (there is no adaptor {parts[0]!r})")
        return parts[0] if parts else None

    def _writable(self, path: str) -> bool:
        name = self._adaptor(path)
        return name is not None and name not in self.fs.read_only

    def _check_writable(self, path: str) -> None:
        if "/" not in path.strip("/"):
            raise HTTPError(403, f"Permission denied: {path or '/'}: the root of the federation holds "
                                 "only the adaptor folders, which cannot be changed")
        name = self._adaptor(path)
        if name in self.fs.read_only:
            raise HTTPError(403, f"Permission denied: adaptor {name!r} is read-only")

    def local_path(self, path: str) -> str | None:
        """The folder on this machine behind an API path, or None on a remote adaptor."""
        name = self._adaptor(path)
        spec = self.specs.get(name)
        if spec is None or not adaptor_type(spec.type).local:
            return None
        inner = path[len(name):].strip("/")
        return os.path.join(spec.path, *inner.split("/")) if inner else spec.path

    def _info(self, path: str) -> dict:
        with http_errors(path):
            return self.fs.info(path)

    # ---- models ----------------------------------------------------------------

    def _base_model(self, path: str, info: dict) -> dict:
        return models.base_model(path, info, self._writable(path) if path else False)

    def _dir_model(self, path: str, info: dict, content: bool) -> dict:
        model = self._base_model(path, info)
        model["type"] = "directory"
        model["size"] = None
        if content:
            with http_errors(path):
                entries = self.fs.ls(path, detail=True)
            children = []
            for entry in entries:
                child = entry["name"].strip("/")
                name = paths.name(child)
                if not name or (not self.allow_hidden and paths.hidden(name)) or not self.should_list(name):
                    continue
                children.append(models.entry_model(child, entry, self._writable(child)))
            model["content"] = children
            model["format"] = "json"
        return model

    def _read(self, path: str) -> bytes:
        with http_errors(path):
            return self.fs.cat_file(path)

    def _file_model(self, path: str, info: dict, content: bool, format: str | None, require_hash: bool) -> dict:
        model = self._base_model(path, info)
        model["mimetype"] = models.mimetype(path)
        if content or require_hash:
            data = self._read(path)
            if require_hash:
                model["hash"], model["hash_algorithm"] = models.content_hash(data)
            if content:
                model["content"], model["format"] = models.file_content(path, data, format)
                model["mimetype"] = models.mimetype(path, model["format"])
        return model

    def _notebook_model(self, path: str, info: dict, content: bool, require_hash: bool) -> dict:
        model = self._base_model(path, info)
        model["type"] = "notebook"
        if content or require_hash:
            data = self._read(path)
            if require_hash:
                model["hash"], model["hash_algorithm"] = models.content_hash(data)
            if content:
                try:
                    nb = models.read_notebook(data)
                except Exception as e:
                    raise HTTPError(400, f"Unreadable notebook {path}: {e}") from None
                model["content"], model["format"] = nb, "json"
                self.validate_notebook_model(model)
        return model

    def _get(self, path: str, content=True, type=None, format=None, require_hash=False) -> dict:
        path = path.strip("/")
        info = self._info(path)
        is_dir = info.get("type") == "directory"
        if type == "directory" and not is_dir:
            raise HTTPError(400, f"{path} is not a folder")
        if type in ("file", "notebook") and is_dir:
            raise HTTPError(400, f"{path} is a folder, not a {type}")
        if is_dir:
            return self._dir_model(path, info, content)
        if type == "notebook" or (type is None and path.endswith(".ipynb")):
            return self._notebook_model(path, info, content, require_hash)
        return self._file_model(path, info, content, format, require_hash)

    # ---- ContentsManager API: reading ------------------------------------------

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        model = await self._run(self._get, path, content, type, format, require_hash)
        if model["type"] == "notebook" and model["content"] is not None:
            # the notary's database belongs to the event loop's thread
            self.mark_trusted_cells(model["content"], model["path"])
        return model

    def _exists_as(self, path: str, kind: str) -> bool:
        path = path.strip("/")
        with http_errors(path):  # an unreachable adaptor is a 503, not "no such file"
            try:
                info = self.fs.info(path)
            except (FileNotFoundError, PermissionError):
                return False
        return (info.get("type") == "directory") == (kind == "directory")

    async def dir_exists(self, path):
        return await self._run(self._exists_as, path, "directory")

    async def file_exists(self, path=""):
        return await self._run(self._exists_as, path, "file")

    async def is_hidden(self, path):
        return any(paths.hidden(part) for part in path.strip("/").split("/") if part)

    async def get_kernel_path(self, path, model=None):
        """The kernel's working folder, as a path relative to the server's folder.

        jupyter_server's kernel manager joins it to its ``root_dir`` and normalises it
        (so ``..`` reaches folders beside it): the notebook's own folder on a local
        adaptor, the home adaptor's folder otherwise, the server's folder without a home.
        """
        path = path.strip("/")
        try:
            is_dir = await self.dir_exists(path)
            folder = self.local_path(path if is_dir else paths.parent(path)) if path else None
        except HTTPError:  # an unreachable adaptor, a bad path: the kernel still starts
            folder = None
        if folder is None and self.home_adaptor in self.specs:
            folder = self.local_path(self.home_adaptor)
        if folder is None:
            return ""
        return os.path.relpath(os.path.realpath(folder), os.path.realpath(self.root_dir))

    # ---- ContentsManager API: writing ------------------------------------------

    def _in_place(self, path: str) -> bool:
        """True on object stores, whose single write is all-or-nothing: no temporary name needed."""
        name = self._adaptor(path)
        return name in self.specs and self.fs.is_object_store(name)

    def _write(self, path: str, data: bytes) -> None:
        """Write a whole file so that readers see the old content or the new, never a part."""
        with atomic.writing(self.fs, path, in_place=self._in_place(path)) as w:
            self.fs.pipe_file(w.temp, data)
            if not w.in_place:
                self._keep_mode(path, w.temp)

    def _keep_mode(self, path: str, tmp: str) -> None:
        """A saved local file keeps its permissions (a script stays executable)."""
        old, new = self.local_path(path), self.local_path(tmp)
        if old and new and os.path.isfile(old):
            shutil.copymode(old, new)

    def _check_target(self, path: str, type: str) -> None:
        """A file may not replace a folder, nor a folder a file."""
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return
        if (info.get("type") == "directory") != (type == "directory"):
            what = "a folder" if info.get("type") == "directory" else "a file"
            raise HTTPError(400, f"{path} is {what}: it cannot be saved as a {type}")

    def _save(self, model: dict, path: str) -> tuple[dict, bool]:
        """Write a model; (model of the result without content, whether to checkpoint it)."""
        path = path.strip("/")
        self._check_writable(path)
        if "type" not in model:
            raise HTTPError(400, "No file type provided")
        type_ = model["type"]
        if type_ not in ("file", "notebook", "directory"):
            raise HTTPError(400, f"Unhandled contents type: {type_!r}")
        if "content" not in model and type_ != "directory":
            raise HTTPError(400, "No file content provided")
        chunk = model.get("chunk")
        if chunk is not None:
            return self._save_chunk(model, path, chunk), False
        self.run_pre_save_hooks(model=model, path=path)
        message = None
        with http_errors(path):
            self._check_target(path, type_)
            if type_ == "directory":
                self.fs.makedirs(path, exist_ok=True)
            elif type_ == "notebook":
                nb = model["content"]  # signed by save(), in the event loop's thread
                try:
                    data = models.notebook_bytes(nb)
                except Exception as e:
                    raise HTTPError(400, f"Unsaveable notebook {path}: {e}") from None
                self._write(path, data)
                checked = {"content": nb}
                self.validate_notebook_model(checked)
                message = checked.get("message")
            else:
                self._write(path, models.file_bytes(path, model["content"], model.get("format")))
        saved = self._get(path, content=False)
        if message:
            saved["message"] = message
        self.run_post_save_hooks(model=saved, os_path=self.local_path(path) or f"skerry://{path}")
        return saved, type_ == "notebook"

    def _save_chunk(self, model: dict, path: str, chunk) -> dict:
        """One chunk of a JupyterLab upload: 1 starts it, -1 ends it and renames it into place."""
        if model["type"] != "file":
            raise HTTPError(400, f"Only files can be uploaded in chunks, not a {model['type']}")
        if not isinstance(chunk, int) or chunk == 0 or chunk < -1:
            raise HTTPError(400, f"Invalid chunk number {chunk!r}: 1, 2, ... and -1 for the last")
        data = models.file_bytes(path, model["content"], model.get("format"))
        parts = atomic.temp_path(path, CHUNKS)
        with http_errors(path):
            if chunk == 1:
                self.run_pre_save_hooks(model=model, path=path)
                self._check_target(path, "file")
            elif not self.fs.exists(parts):
                raise HTTPError(400, f"Chunk {chunk} of {path} came without chunk 1: nothing was saved")
            with self.fs.open(parts, "wb" if chunk == 1 else "ab") as f:
                f.write(data)
            if chunk == -1:
                atomic.replace(self.fs, parts, path)
        saved = self._get(path if chunk == -1 else parts, content=False)
        if chunk == -1:
            self.run_post_save_hooks(model=saved, os_path=self.local_path(path) or f"skerry://{path}")
        else:  # the file is not there yet: answer with the model it is going to have
            saved.update(name=paths.name(path), path=path)
        return saved

    async def save(self, model, path=""):
        if model.get("type") == "notebook" and model.get("content") is not None:
            content = model["content"]
            if not (isinstance(content, dict) and isinstance(content.get("cells"), list)
                    and isinstance(content.get("nbformat"), int)):
                raise HTTPError(400, f"Unsaveable notebook {path}: the content is not a notebook "
                                     "(an object with 'nbformat' and a list of 'cells')")
            nb = nbformat.from_dict(content)
            try:
                # the notary's database belongs to the event loop's thread
                self.check_and_sign(nb, path.strip("/"))
            except Exception as e:
                raise HTTPError(400, f"Unsaveable notebook {path}: {e}") from None
            model = dict(model, content=nb)
        saved, checkpoint = await self._run(self._save, model, path)
        path = path.strip("/")
        # one checkpoint always exists for a notebook, as with jupyter_server's own managers
        if checkpoint and not await self.checkpoints.list_checkpoints(path):
            await self.create_checkpoint(path)
        self.emit(data={"action": "save", "path": path})
        return saved

    def _delete(self, path: str) -> None:
        path = path.strip("/")
        self._check_writable(path)
        with http_errors(path):
            info = self.fs.info(path)
            if info.get("type") != "directory":
                self.fs.rm_file(path)
                return
            entries = [paths.name(e.strip("/")) for e in self.fs.ls(path, detail=False)]
            kept = [n for n in entries if n not in LEFTOVERS]
            if kept and not self.always_delete_dir:
                raise HTTPError(400, f"Folder {path} is not empty: delete what is in it first")
            if kept:  # always_delete_dir
                with contextlib.suppress(FileNotFoundError):  # an S3 folder goes with its last object
                    self.fs.rm(path, recursive=True)
                if self.fs.exists(path):
                    raise HTTPError(500, f"Folder {path} could not be deleted")
                return
            for name in entries:
                self.fs.rm(paths.join(path, name), recursive=True)
            # an S3 folder without its own folder/ object went with its last object
            with contextlib.suppress(FileNotFoundError):
                self.fs.rmdir(path)

    async def delete_file(self, path):
        await self._run(self._delete, path)

    def _rename(self, old_path: str, new_path: str) -> None:
        old_path, new_path = old_path.strip("/"), new_path.strip("/")
        self._check_writable(old_path)
        self._check_writable(new_path)
        if new_path == old_path:
            return
        with http_errors(new_path):
            if self.fs.exists(new_path):
                raise HTTPError(409, f"File already exists: {new_path}")
        with http_errors(old_path):
            info = self.fs.info(old_path)
            self.fs.mv(old_path, new_path, recursive=info.get("type") == "directory")

    async def rename_file(self, old_path, new_path):
        await self._run(self._rename, old_path, new_path)

    async def copy(self, from_path, to_path=None):
        """Like jupyter_server's copy, but streamed by the federation (no file in memory)."""
        from_path = from_path.strip("/")
        info = await self._run(self._info, from_path)
        if info.get("type") == "directory":
            raise HTTPError(400, "Folders cannot be copied")
        folder = paths.parent(from_path) if to_path is None else to_path.strip("/")
        if await self.dir_exists(folder):
            name = await self.increment_filename(self._copy_name(paths.name(from_path)), folder, insert="-Copy")
            target = paths.join(folder, name)
        elif to_path is not None and await self.dir_exists(paths.parent(folder)):
            target = folder
        else:
            raise HTTPError(404, f"No such folder: {paths.parent(folder) if to_path else folder}")

        def copy():
            self._check_writable(target)
            with http_errors(target):
                self.fs.copy(from_path, target)
            return self._get(target, content=False)

        model = await self._run(copy)
        self.emit(data={"action": "copy", "path": target, "source_path": from_path})
        return model

    @staticmethod
    def _copy_name(name: str) -> str:
        # copying a copy names it after the original: data-Copy1.csv -> data-Copy2.csv
        return re.sub(r"-Copy\d*\.", ".", name)

    def open_file(self, path: str):
        """A file open for reading, for streaming (``/files/``); HTTP errors as for ``get``."""
        path = path.strip("/")
        if self._info(path).get("type") == "directory":
            raise HTTPError(400, f"{path} is a folder, not a file")
        with http_errors(path):
            return self.fs.open(path, "rb", block_size=FILE_BLOCK)

    def info_string(self):
        return f"Serving the skerry:// federation ({', '.join(sorted(self.specs))})"

