"""The user's ``skerry://`` federation as JupyterLab's file tree (jupyter_server's contents API).

- ``manager``: ``SkerryContentsManager``, the contents manager (get, save, rename, delete,
  copy) over the federation of the micro-infrastructure's adaptors;
- ``models``: the API's models of files, notebooks and folders, from metadata and bytes;
- ``checkpoints``: ``SkerryCheckpoints``, kept in each file's own adaptor;
- ``files``: ``SkerryFilesHandler``, ``/files/`` downloads streamed from the adaptor;
- ``httperrors``: storage errors as HTTP errors (``skerry.errors``' one table);
- ``paths``: folder, name and hidden names of the API's paths.

Rules:
- ``skerry.extensions.contents.SkerryContentsManager`` is the name our Jupyter config
  (``jupyter_config/jupyter_server_config.json``) gives ``contents_manager_class``: it
  stays importable from here; the manager names its checkpoints and files handler itself.
"""

from .manager import SkerryContentsManager

__all__ = ["SkerryContentsManager"]
