# JupyterHub configuration of `skerry up`: all settings come from skerry.hub.plugins.settings.
from skerry.hub.plugins.settings import configure

configure(c)  # noqa: F821 (c is the config object JupyterHub provides)
