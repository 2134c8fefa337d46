"""``/files/<path>``: a file's bytes, for downloads and for JupyterLab's viewers.

The contents manager's ``files_handler_class``, streaming from the file's adaptor.

Rules:
- a file is streamed in ``FILE_BLOCK`` blocks, never held whole (jupyter_server's
  fallback for managers without local files reads it through ``get``, base64 and all);
- requests must come from the same site (the XSRF check); hidden names are a 404 unless
  ``allow_hidden``; other errors are answered as ``get`` answers them (the manager's
  ``open_file``);
- the Content-Type comes from the name, as jupyter_server's own files handler gives it;
  ``?download=1`` makes it an attachment;
- HTML or SVG served from here runs sandboxed: it cannot script the server's origin.
"""

import mimetypes

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from tornado import web
from tornado.web import HTTPError

from . import paths

FILE_BLOCK = 1024 * 1024  # /files/ downloads stream in blocks of this size


def content_type(name: str) -> str:
    """The Content-Type of a downloaded file, by its name (as jupyter_server's files handler)."""
    if name.lower().endswith(".ipynb"):
        return "application/x-ipynb+json"
    mimetype, encoding = mimetypes.guess_type(name)
    if encoding == "gzip":
        return "application/gzip"  # RFC 6713
    if encoding is not None or mimetype is None:
        return "application/octet-stream"
    return "text/plain; charset=UTF-8" if mimetype == "text/plain" else mimetype


class SkerryFilesHandler(JupyterHandler):
    """``/files/<path>``: a file's bytes, streamed from its adaptor in ``FILE_BLOCK`` blocks.

    jupyter_server's fallback for managers without local files reads the whole file
    through ``get`` (base64 and all); this one never holds more than a block.
    """

    auth_resource = "contents"

    @property
    def content_security_policy(self):
        # HTML or SVG served from here must not script the server's own origin
        return super().content_security_policy + "; sandbox allow-scripts"

    @web.authenticated
    @authorized
    async def head(self, path):
        await self.get(path, include_body=False)

    @web.authenticated
    @authorized
    async def get(self, path, include_body=True):
        self.check_xsrf_cookie()  # /files/ requests must come from the same site
        manager = self.contents_manager
        path = path.strip("/")
        if not manager.allow_hidden and await manager.is_hidden(path):
            raise HTTPError(404)
        f = await manager._run(manager.open_file, path)
        try:
            if self.get_argument("download", None):
                self.set_attachment_header(paths.name(path))
            self.set_header("Content-Type", content_type(paths.name(path)))
            while include_body:
                block = await manager._run(f.read, FILE_BLOCK)
                if not block:
                    break
                self.write(block)
                await self.flush()
        finally:
            await manager._run(f.close)
