"""The layering of the packages, checked on every import in the tree (at module level or inside
a function alike), and the public names of each package pinned.

Layers (``DESIGN.md``, "Repository layout"):

- the core (``skerry/`` outside ``skerry/workload``) knows no hub, extensions, kernels or Jupyter;
- the workload (``skerry/workload``) knows no hub, extensions, kernels or widgets (it runs
  notebooks with papermill, a job executor's tool);
- the adaptors know no hub, workload, extensions or kernels;
- the kernels know no hub or extensions;
- in the hub, the user servers' code (``hub/userserver``) knows neither the hub process's
  (``hub/plugins``) nor the service's (``hub/service``); the plugins and the service know each
  other only through ``hub/stores``.

``skerry up`` (``skerry/platform.py``) starts the hub by its configuration file's location, not
by importing it: no exception to the rules.
"""

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the import package's folders: top-level folder -> dotted name (pyproject's package-dir)
FOLDERS = {"skerry": "skerry", "hub": "skerry.hub", "adaptors": "skerry.adaptors",
           "extensions": "skerry.extensions", "kernels": "skerry.kernels"}
JUPYTER = ("jupyterhub", "jupyter_server", "jupyter_client", "jupyter_core", "notebook", "ipywidgets",
           "ipykernel", "IPython", "nbformat", "papermill")

# (layer, what its modules' dotted names start with, forbidden import prefixes)
RULES = [
    ("core", "skerry.", ("skerry.hub", "skerry.extensions", "skerry.kernels", *JUPYTER)),
    ("workload", "skerry.workload", ("skerry.hub", "skerry.extensions", "skerry.kernels", "ipywidgets")),
    ("adaptors", "skerry.adaptors", ("skerry.hub", "skerry.workload", "skerry.extensions", "skerry.kernels")),
    ("kernels", "skerry.kernels", ("skerry.hub", "skerry.extensions")),
    ("userserver", "skerry.hub.userserver", ("skerry.hub.plugins", "skerry.hub.service", "skerry.hub.stores")),
    ("plugins", "skerry.hub.plugins", ("skerry.hub.service", "skerry.hub.userserver")),
    ("service", "skerry.hub.service", ("skerry.hub.plugins", "skerry.hub.userserver")),
    ("stores", "skerry.hub.stores", ("skerry.hub.plugins", "skerry.hub.service", "skerry.hub.userserver")),
]
CORE_SUBPACKAGES = ("skerry.hub", "skerry.adaptors", "skerry.extensions", "skerry.kernels")


def modules(root: Path):
    """(dotted name, path) of every Python module of the import package under ``root``."""
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            if "migrations" in path.parts:  # alembic's scripts: loaded by alembic, not imported
                continue
            parts = path.relative_to(root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((package, *parts)), path


def imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` (module ``name``) imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # "from pkg import module"
    return found


def layer_rules(name: str):
    for layer, prefix, forbidden in RULES:
        inside = name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")
        if layer == "core":
            inside = inside and not name.startswith(("skerry.workload", *CORE_SUBPACKAGES))
        if inside:
            yield layer, forbidden


def violations(root: Path) -> list[str]:
    """``"module (layer) imports name"`` for every import the layering forbids."""
    found = []
    for name, path in modules(root):
        targets = imports(name, path)
        for layer, forbidden in layer_rules(name):
            bad = {t for t in targets if any(t == f or t.startswith(f + ".") for f in forbidden)}
            # "from a.b import c" names a.b and a.b.c: one import, told once
            found += [f"{name} ({layer}) imports {t}" for t in sorted(bad)
                      if not any(t.startswith(other + ".") for other in bad)]
    return found


def test_the_tree_keeps_its_layers():
    assert violations(ROOT) == []


@pytest.mark.parametrize("where, planted, expected", [
    ("skerry/workload/catalog/jobs.py", "from skerry.hub.stores import quotas",
     "skerry.workload.catalog.jobs (workload)"),
    ("adaptors/staging.py", "    from skerry.workload import catalog", "skerry.adaptors.staging (adaptors)"),
    ("skerry/errors.py", "import jupyterhub.utils", "skerry.errors (core)"),
    ("hub/userserver/webdav.py", "from ..plugins import spawner", "skerry.hub.userserver.webdav (userserver)"),
    ("hub/service/app.py", "from skerry.hub.plugins.settings import configure", "skerry.hub.service.app (service)"),
])
def test_a_planted_forbidden_import_is_found(tmp_path, where, planted, expected):
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / where
    body = "def planted():\n" + planted if planted.startswith(" ") else planted + "\n"
    target.write_text(target.read_text() + "\n\n" + body + "\n")
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found
