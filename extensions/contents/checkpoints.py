"""Checkpoints of files and notebooks, kept in the file's own adaptor.

The contents manager's ``checkpoints_class``: JupyterLab's "save and checkpoint" and
"revert to checkpoint" (``/api/contents/<path>/checkpoints``).

Rules:
- one checkpoint per file (id ``checkpoint``), at
  ``<folder>/.ipynb_checkpoints/<name>-checkpoint<ext>`` in the same adaptor: checkpoints
  move with their file when it is renamed;
- read-only adaptors have none: listing gives an empty list, creating or deleting one is a
  403;
- checkpoints are written atomically, as saves are (the manager's ``_write``), and every
  backend call runs in the manager's worker thread;
- a missing checkpoint is a 404; other storage errors are answered as for the file
  (``http_errors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyter_server.services.contents.checkpoints import AsyncCheckpoints, AsyncGenericCheckpointsMixin
from tornado.web import HTTPError

from . import models, paths
from .httperrors import http_errors

if TYPE_CHECKING:
    from .manager import SkerryContentsManager

CHECKPOINT_DIR = ".ipynb_checkpoints"
CHECKPOINT_ID = "checkpoint"  # one checkpoint per file, as JupyterLab expects


class SkerryCheckpoints(AsyncGenericCheckpointsMixin, AsyncCheckpoints):
    """Checkpoints kept in the file's own adaptor: ``<folder>/.ipynb_checkpoints/<name>-checkpoint<ext>``.

    Read-only adaptors have none: listing gives an empty list, creating one is a 403.
    """

    @property
    def manager(self) -> SkerryContentsManager:
        return self.parent

    @staticmethod
    def checkpoint_path(checkpoint_id: str, path: str) -> str:
        path = path.strip("/")
        stem, dot, ext = paths.name(path).rpartition(".")
        if not dot:
            stem, ext = ext, ""
        return paths.join(paths.parent(path), f"{CHECKPOINT_DIR}/{stem}-{checkpoint_id}{dot}{ext}")

    def _model(self, cp_path: str) -> dict:
        return {"id": CHECKPOINT_ID, "last_modified": models.modified(self.manager.fs.info(cp_path))}

    def _create(self, data: bytes, path: str) -> dict:
        manager = self.manager
        if not manager._writable(path.strip("/")):
            raise HTTPError(403, f"Checkpoints are not supported on read-only adaptors ({path})")
        cp_path = self.checkpoint_path(CHECKPOINT_ID, path)
        with http_errors(path):
            manager._write(cp_path, data)
            return self._model(cp_path)

    async def create_file_checkpoint(self, content, format, path):
        data = models.file_bytes(path, content, format)
        return await self.manager._run(self._create, data, path)

    async def create_notebook_checkpoint(self, nb, path):
        data = models.notebook_bytes(nb)
        return await self.manager._run(self._create, data, path)

    def _read(self, checkpoint_id: str, path: str) -> bytes:
        cp_path = self.checkpoint_path(checkpoint_id, path)
        try:
            return self.manager.fs.cat_file(cp_path)
        except FileNotFoundError:
            raise HTTPError(404, f"No checkpoint {checkpoint_id!r} of {path}") from None

    async def get_file_checkpoint(self, checkpoint_id, path):
        data = await self.manager._run(self._read, checkpoint_id, path)
        content, format = models.file_content(path, data, None)
        return {"type": "file", "content": content, "format": format}

    async def get_notebook_checkpoint(self, checkpoint_id, path):
        data = await self.manager._run(self._read, checkpoint_id, path)
        return {"type": "notebook", "content": models.read_notebook(data)}

    def _list(self, path: str) -> list[dict]:
        cp_path = self.checkpoint_path(CHECKPOINT_ID, path)
        try:
            return [self._model(cp_path)]
        except (FileNotFoundError, ValueError, PermissionError):
            return []

    async def list_checkpoints(self, path):
        return await self.manager._run(self._list, path)

    def _delete(self, checkpoint_id: str, path: str) -> None:
        if not self.manager._writable(path.strip("/")):
            raise HTTPError(403, f"Checkpoints are not supported on read-only adaptors ({path})")
        cp_path = self.checkpoint_path(checkpoint_id, path)
        with http_errors(path):
            try:
                self.manager.fs.rm_file(cp_path)
            except FileNotFoundError:
                raise HTTPError(404, f"No checkpoint {checkpoint_id!r} of {path}") from None

    async def delete_checkpoint(self, checkpoint_id, path):
        await self.manager._run(self._delete, checkpoint_id, path)

    def _rename(self, checkpoint_id: str, old_path: str, new_path: str) -> None:
        old_cp = self.checkpoint_path(checkpoint_id, old_path)
        new_cp = self.checkpoint_path(checkpoint_id, new_path)
        with http_errors(new_path):
            if self.manager.fs.exists(old_cp):
                self.manager.fs.mv(old_cp, new_cp)

    async def rename_checkpoint(self, checkpoint_id, old_path, new_path):
        await self.manager._run(self._rename, checkpoint_id, old_path, new_path)
