"""One error tree: every exception class the tree defines is a ``skerry.errors.SkerryError``
(a kind of it first among its bases, ``skerry/errors.py`` says how), so each carries its
``code``, ``status`` and sentence.

The scan imports every module of the import package and looks at every class its source
defines (``ast``), at module level or inside a function alike. ``OUTSIDE`` lists the classes
that must stay outside the tree, each with the reason.
"""

import ast
import builtins
import importlib
import types
from pathlib import Path

import pytest

from skerry import errors
from skerry.adaptors.staging import CopyRequestError
from skerry.errors import SkerryError

ROOT = Path(__file__).resolve().parent.parent
# the import package's folders: top-level folder -> dotted name (pyproject's package-dir)
FOLDERS = {"skerry": "skerry", "hub": "skerry.hub", "adaptors": "skerry.adaptors",
           "extensions": "skerry.extensions", "kernels": "skerry.kernels"}
# files that are run, never imported; they define no class (checked below)
NOT_IMPORTED = {
    "skerry/__main__.py": "``python -m skerry``: runs the command line",
    "hub/plugins/jupyterhub_config.py": "JupyterHub's configuration file, run by JupyterHub with its ``c``",
    "extensions/jupyter_config/jupyter_server_config.py": "users' Jupyter servers' configuration, run with ``c``",
    "skerry/workload/migrations": "alembic's scripts, loaded by alembic",
}
# "module.Class": why it is an exception outside the tree (e.g. a framework requires its own base)
OUTSIDE = {"skerry.errors.SkerryError": "the root of the tree itself"}


def sources(root: Path):
    """(dotted module name, path) of every module the scan imports."""
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            if any(path.relative_to(root).as_posix().startswith(skipped) for skipped in NOT_IMPORTED):
                continue
            parts = path.relative_to(root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((package, *parts)), path


def resolve(expression: str, namespace: dict):
    """The object a base-class expression (``Name`` or ``a.b.C``) names in ``namespace``, or
    through an import of its module (a function's own ``import tornado.web``)."""
    head, *rest = expression.split(".")
    if head in namespace:
        value = namespace[head]
    elif hasattr(builtins, head):
        value = getattr(builtins, head)
    else:
        value = importlib.import_module(head)
    for part in rest:
        value = getattr(value, part) if hasattr(value, part) else importlib.import_module(f"{value.__name__}.{part}")
    return value


def outside_the_tree(module: types.ModuleType, source: str) -> list[str]:
    """``"module.Class (bases)"`` for each exception class ``source`` defines outside the tree."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [resolve(ast.unparse(b), vars(module)) for b in node.bases]
        exception = any(isinstance(b, type) and issubclass(b, BaseException) for b in bases)
        if exception and not any(isinstance(b, type) and issubclass(b, SkerryError) for b in bases):
            found.append(f"{module.__name__}.{node.name} ({', '.join(b.__name__ for b in bases)})")
    return found


def test_every_exception_class_is_in_the_error_tree():
    found = []
    for name, path in sources(ROOT):
        found += outside_the_tree(importlib.import_module(name), path.read_text())
    unexplained = [f for f in found if f.split(" ")[0] not in OUTSIDE]
    assert unexplained == [], "put each under the kind of skerry.errors that says what it means"
    # the list stays true: each of its classes exists and is still outside
    assert sorted(f.split(" ")[0] for f in found) == sorted(OUTSIDE)


def test_the_files_not_imported_define_no_class():
    for where in NOT_IMPORTED:
        path = ROOT / where
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            assert not any(isinstance(n, ast.ClassDef) for n in ast.walk(ast.parse(file.read_text()))), file


PLANTED = '''
from skerry.errors import NotFound

class Good(NotFound):
    code = "good"

class Bad(ValueError):
    pass

class Plain:
    pass

def later():
    import tornado.web

    class Nested(tornado.web.HTTPError):
        pass
'''


def test_a_planted_exception_outside_the_tree_is_found():
    module = types.ModuleType("skerry.planted")
    exec(compile(PLANTED, "planted.py", "exec"), vars(module))
    assert outside_the_tree(module, PLANTED) == ["skerry.planted.Bad (ValueError)",
                                                 "skerry.planted.Nested (HTTPError)"]


@pytest.mark.parametrize("name, kind, code, status", [
    ("skerry.ports.WrongServer", "SetupError", "port_taken", 500),
    ("skerry.ports.NoAnswer", "SetupError", "endpoint_timeout", 500),
    ("skerry.hub.plugins.startqueue.LeftQueue", "Conflict", "left_start_queue", 409),
    ("skerry.hub.plugins.selection.Refused", "Forbidden", "spawn_refused", 403),
    ("skerry.hub.plugins.selection.BadOptions", "BadRequest", "bad_user_options", 400),
    ("skerry.adaptors.staging.VerificationError", "StorageFailed", "verification_failed", 502),
    ("skerry.kernels.remote.KernelError", "Unavailable", "kernel_unavailable", 503),
    ("skerry.kernels.remote.KernelDied", "Unavailable", "kernel_died", 503),
    ("skerry.workload.runs.RunError", "BadRequest", "bad_run", 400),
    ("skerry.kernels.session.SessionError", "Unavailable", "session_unavailable", 503),
])
def test_each_module_error_is_under_its_kind_with_its_own_code(name, kind, code, status):
    module, _, cls = name.rpartition(".")
    error = getattr(importlib.import_module(module), cls)("a sentence.")
    assert isinstance(error, getattr(errors, kind))
    assert (error.code, error.status, error.message, str(error)) == (code, status, "a sentence.", "a sentence.")


def test_a_refused_copy_request_keeps_the_code_of_the_check():
    error = CopyRequestError("too_many", "20000 copies requested; at most 10000 per request")
    assert isinstance(error, errors.BadRequest) and (error.code, error.status) == ("too_many", 400)
