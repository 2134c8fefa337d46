"""Each concept exists once: a scan of the source tree (``ast``, no imports) shows where.

- the atomic write: files are renamed into place only in ``adaptors/atomic.py`` (users'
  files) and ``skerry/localfiles.py`` (the platform's local files), and the few renames
  listed below, each with the reason; temporary-name literals appear nowhere else;
- the final states (and the job and dataset state names): only ``skerry/workload/states.py``
  spells them as a collection;
- the adaptor types: their names are compared with a spec's ``type``, or gathered in a
  collection, only in the table (``adaptors/builtin_types.py``);
- ``pool_of``, the workflow validator's pieces, ``is_hidden``, ``run_outcome``, ``write_private``:
  one definition each.

Each check fails if someone writes a second copy (the planted-copy tests below show it).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("skerry", "adaptors", "hub", "extensions", "kernels", "bench")

ATOMIC = "adaptors/atomic.py"
STATES = "skerry/workload/states.py"
TYPES = ("adaptors/builtin_types.py", "adaptors/types.py")

# os.replace / os.rename / Path.replace of files no listing shows: the platform's own
# private files on its local disk, written by one process (not users' files)
LOCAL_RENAMES = {
    "skerry/localfiles.py": "write_private: every local file of the platform (0600, or the mode asked for)",
    "adaptors/store.py": "moves jwt-keys.json of an older layout into the handover folder: a rename of the "
                         "file as it is (a copy could bring old keys back over a newer write)",
}
# renames of files that are no user files of the federation
OTHER_RENAMES = {
    "adaptors/sshkeys.py": "~/.ssh/authorized_keys on an SFTP host, through asyncssh (atomic's temporary name)",
}

FINAL = {"succeeded", "failed", "cancelled"}
JOB = {"defined", "queued", "running", "succeeded", "failed", "retrying", "cancelled", "lost"}
DATASET = {"OPEN", "CLOSED", "TO_UPLOAD", "TO_DELETE", "DELETED"}
ADAPTOR_TYPES = {"local", "memory", "sftp", "s3", "webdav"}
TEMP_NAME = re.compile(r"skerry-part|skerry-(upload|save|chunks)|^\.part$|\.part\b")


def sources() -> dict[str, ast.Module]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/migrations/" in rel:
                continue  # frozen history: each migration states the schema of its day
            found[rel] = ast.parse(path.read_text(), rel)
    return found


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes: prose may name anything."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def strings(node) -> list[str]:
    """The string constants a collection literal holds (a dict's keys)."""
    items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
    return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def collections(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            yield node, set(strings(node))


# ---- the checks (each takes the parsed tree; the tests below run them) -------------------


def renames_into_place(files: dict[str, ast.Module]) -> list[str]:
    """Renames outside the atomic helper: os.replace/os.rename, ``<tmp>.replace(...)``, and a
    ``mv``/``rename``/``posix_rename`` of a name that says it is temporary."""
    allowed = {ATOMIC, *LOCAL_RENAMES, *OTHER_RENAMES}
    found = []
    for rel, tree in files.items():
        if rel in allowed:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, owner = node.func.attr, ast.unparse(node.func.value)
            first = ast.unparse(node.args[0]) if node.args else ""
            if (owner == "os" and name in ("replace", "rename")) or (
                    name in ("mv", "rename", "posix_rename", "replace")
                    and re.search(r"(^|[^a-z])(tmp|temp|parts?)([^a-z]|$)", f"{owner} {first}", re.I)
                    and not isinstance(node.func.value, ast.Constant)):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def temporary_names(files) -> list[str]:
    found = []
    for rel, tree in files.items():
        if rel == ATOMIC:
            continue
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                    and TEMP_NAME.search(node.value)):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    return found


def state_copies(files) -> list[str]:
    """Collections spelling the final states, every job state, or dataset states."""
    found = []
    for rel, tree in files.items():
        if rel == STATES:
            continue
        for node, names in collections(tree):
            counts = not isinstance(node, ast.Dict)  # a dict keyed by job states is a body of counts
            if counts and (len(names & FINAL) >= 2 or len(names & JOB) >= 6) or len(names & DATASET) >= 2:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def adaptor_type_tests(files) -> list[str]:
    """``spec.type == "s3"``, ``type in {"s3", ...}`` and collections of type names."""
    found = []
    for rel, tree in files.items():
        if rel in TYPES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                literal = any(isinstance(s, ast.Constant) and s.value in ADAPTOR_TYPES
                              or set(strings(s)) & ADAPTOR_TYPES for s in sides)
                if literal and "type" in ast.unparse(node).replace('"type"', ""):
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        for node, names in collections(tree):
            if len(names & ADAPTOR_TYPES) >= 2:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


ONCE = ("pool_of", "is_hidden", "temp_name", "run_outcome", "check_workflow", "_find_cycle",
        "adaptor_types", "adaptor_type", "write_private")


def definitions(files, name: str) -> list[str]:
    """Module-level functions and methods of that name (jupyter_server's ``is_hidden`` method
    of the contents manager is another concept: dot names)."""
    return [f"{rel}:{node.lineno}" for rel, tree in files.items() for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name]


def gpu_or_cpu(files) -> list[str]:
    """``"gpu" if ... else "cpu"``: the choice of pool, written again beside ``pool_of``."""
    return [f"{rel}:{node.lineno}" for rel, tree in files.items() if rel != "skerry/workload/modules.py"
            for node in ast.walk(tree) if isinstance(node, ast.IfExp)
            and {ast.unparse(node.body), ast.unparse(node.orelse)} == {"'gpu'", "'cpu'"}]


# ---- the tree has each concept once ---------------------------------------------------


@pytest.fixture(scope="module")
def files():
    return sources()


def test_files_are_renamed_into_place_only_by_the_atomic_write(files):
    assert renames_into_place(files) == []


def test_temporary_names_are_spelled_only_by_the_atomic_write(files):
    assert temporary_names(files) == []


def test_state_names_are_spelled_only_by_the_state_machine(files):
    assert state_copies(files) == []


def test_adaptor_types_are_told_apart_only_by_their_table(files):
    assert adaptor_type_tests(files) == []


@pytest.mark.parametrize("name", ONCE)
def test_defined_once(files, name):
    assert len(definitions(files, name)) == 1, definitions(files, name)


def test_the_pool_is_chosen_only_by_pool_of(files):
    assert gpu_or_cpu(files) == []


def test_the_table_of_adaptor_types_is_the_registered_one():
    from skerry.adaptors.types import adaptor_types

    kinds = adaptor_types()
    assert set(kinds) == ADAPTOR_TYPES
    assert {n for n, k in kinds.items() if k.object_store} == {"s3"}  # memory is no object store
    assert {n for n, k in kinds.items() if k.local} == {"local"}


# ---- and each check catches a copy planted in it --------------------------------------


def planted(source: str) -> dict[str, ast.Module]:
    return {"extensions/planted.py": ast.parse(source)}


@pytest.mark.parametrize("check, source", [
    (renames_into_place, "import os\nos.replace(tmp, path)\n"),
    (renames_into_place, "fs.mv(tmp, path)\n"),
    (renames_into_place, "self.fs.mv(self.temp_path, final)\n"),
    (temporary_names, "tmp = f'.{name}.{token}.part'\n"),
    (temporary_names, "PREFIX = '.skerry-upload-'\n"),
    (state_copies, "FINAL = ('succeeded', 'failed', 'cancelled')\n"),
    (state_copies, "done = state in {'failed', 'cancelled'}\n"),
    (state_copies, "MOVES = {'OPEN': ('CLOSED',), 'CLOSED': ()}\n"),
    (adaptor_type_tests, "IN_PLACE = {'s3', 'memory'}\n"),
    (adaptor_type_tests, "if spec.type == 'local':\n    pass\n"),
    (adaptor_type_tests, "ok = spec.type in ('sftp',)\n"),
    (gpu_or_cpu, "pool = 'gpu' if module.resources.gpu > 0 else 'cpu'\n"),
])
def test_a_planted_copy_is_found(check, source):
    assert check(planted(source))


def test_a_planted_second_definition_is_found(files):
    copy = {**files, **planted("def pool_of(module):\n    return 'cpu'\n")}
    assert len(definitions(copy, "pool_of")) == 2


def test_what_is_not_a_copy_passes():
    source = ("kind = 'local' if spec.local else spec.address\n"
              "home = {'name': 'home', 'type': 'local', 'path': p}\n"
              "if info.get('type') == 'directory':\n    pass\n"
              "LIMITS = ('servers', 'cpu', 'memory')\n"
              "ok = run['state'] == 'succeeded'\n")
    for check in (renames_into_place, temporary_names, state_copies, adaptor_type_tests, gpu_or_cpu):
        assert check(planted(source)) == [], check.__name__
