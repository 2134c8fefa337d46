"""skerry.extensions: what skerry adds to the user's Jupyter server and notebooks.

The Jupyter server extension (``skerry.extensions``) is enabled in every
micro-infrastructure by ``jupyter_config/``, a Jupyter config folder the spawner puts
first on ``$JUPYTER_CONFIG_PATH``.
"""

import os

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "jupyter_config")


def _jupyter_server_extension_points():
    return [{"module": "skerry.extensions"}]


def _load_jupyter_server_extension(serverapp):
    serverapp.log.info("skerry extension loaded")
