"""papermill's I/O handler for ``skerry://``: notebooks read and written through the federation.

Registered under the ``papermill.io`` entry point group (key ``skerry://``), so that,
once skerry is installed, papermill knows the scheme without any import::

    papermill skerry://home/in.ipynb skerry://s3data/out.ipynb -p x 1

Every call goes through fsspec's ``skerry://`` filesystem (``SkerryFileSystem``): inside
a micro-infrastructure its adaptors (``$SKERRY_ADAPTORS``), outside it the user's WebDAV
endpoint (``$SKERRY_URL`` and ``$SKERRY_TOKEN``); see ``skerry.adaptors.remote``.

The handler protocol is papermill's (``papermill.iorw``): ``read(path) -> str``,
``write(buf, path)``, ``listdir(path) -> [paths]``, ``pretty_path(path) -> str``.
Notebooks are UTF-8 text; a missing input raises ``FileNotFoundError`` naming it.
"""

import fsspec
from fsspec.core import url_to_fs

__all__ = ["SkerryHandler"]

SCHEME = "skerry://"


class SkerryHandler:
    """papermill I/O for ``skerry://`` URLs (classmethods: papermill uses the class itself)."""

    @classmethod
    def read(cls, path: str) -> str:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return f.read()

    @classmethod
    def write(cls, buf: str, path: str) -> None:
        # papermill writes the output notebook several times while it runs: each write is whole
        with fsspec.open(path, "w", encoding="utf-8") as f:
            f.write(buf)

    @classmethod
    def listdir(cls, path: str) -> list[str]:
        fs, inner = url_to_fs(path)
        return [SCHEME + name for name in fs.ls(inner, detail=False)]

    @classmethod
    def pretty_path(cls, path: str) -> str:
        return path
