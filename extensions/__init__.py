"""skerry.extensions: what skerry adds to the user's Jupyter server and notebooks.

The Jupyter server extension (``skerry.extensions``) is enabled in every
micro-infrastructure by ``jupyter_config/``, a Jupyter config folder the spawner puts
first on ``$JUPYTER_CONFIG_PATH``. It serves the per-user data API at
``<base_url>skerry/api/v1/`` (``skerry.extensions.dataapi``) and the user's Dask
dashboards at ``<base_url>skerry/dask/<pool>/`` (``skerry.extensions.dashboards``).
"""

import os

__all__ = ["CONFIG_DIR"]

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "jupyter_config")


def _jupyter_server_extension_points():
    return [{"module": "skerry.extensions"}]


def _load_jupyter_server_extension(serverapp):
    from skerry.ports import tornado_handlers

    from . import dashboards
    from .dataapi import setup

    web_app = serverapp.web_app
    # the hub asks this server to prove it is the one it started before it routes to it
    web_app.add_handlers(".*$", tornado_handlers(serverapp.base_url, "jupyter"))
    web_app.add_handlers(".*$", dashboards.handlers(serverapp.base_url))
    serverapp.skerry_dataapi = setup(serverapp)
    serverapp.log.info("skerry extension loaded: data API at %sskerry/api/v1/", serverapp.base_url)


def _unload_jupyter_server_extension(serverapp):
    api = getattr(serverapp, "skerry_dataapi", None)
    if api is not None:
        api.stop()
