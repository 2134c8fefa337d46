"""The WebDAV application over a user's storage (wsgidav, class 1 and 2).

``make_dav_app(root, mount_path, authenticator)`` builds a WSGI app that serves the
folder ``root`` at the URL path ``mount_path``, with locks and dead properties kept in
memory. Authentication is not wsgidav's: the caller passes a wsgidav middleware class
that sets ``wsgidav.auth.user_name`` or answers 401/403 itself, so this module knows
nothing of JupyterHub.
"""

from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.error_printer import ErrorPrinter
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

# wsgidav reads and writes in blocks of this size: 8 KiB (its default) is 2-5x slower
BLOCK_SIZE = 1024 * 1024


def make_dav_app(root: str, mount_path: str, authenticator, extra_config: dict | None = None):
    """WsgiDAVApp serving ``root`` at ``mount_path`` (e.g. ``/dav/alice``), behind ``authenticator``."""
    config = {
        "mount_path": mount_path.rstrip("/") or None,
        "provider_mapping": {"/": FilesystemProvider(root, readonly=False)},
        "middleware_stack": [ErrorPrinter, authenticator, WsgiDavDirBrowser, RequestResolver],
        "lock_storage": True,
        "property_manager": True,
        "block_size": BLOCK_SIZE,
        "verbose": 1,
        "logging": {"enable": False},
        "suppress_version_info": True,
        "dir_browser": {"enable": True, "response_trailer": False, "show_user": True},
        # the authenticator middleware replaces wsgidav's; this only silences its start-up check
        "simple_dc": {"user_mapping": {"*": True}},
    }
    config.update(extra_config or {})
    return WsgiDAVApp(config)
