# JupyterLab's settings folder is skerry's (lab_settings/): dask-labextension checks a
# dashboard from the browser, which carries the hub's login (the server alone has none)
import os

c.LabApp.app_settings_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), "lab_settings")  # noqa: F821

# extensions come with the platform's Python, which users cannot write to: the read-only
# manager lists them; the PyPI one asks yarn for its registry at every start
c.LabApp.extension_manager = "readonly"  # noqa: F821
