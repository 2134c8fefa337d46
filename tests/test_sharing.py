"""tests/sharing.py: every module it names exists and has its group's pools, and a group's
modules are one unit of work for the parallel workers."""

import ast
from pathlib import Path

from sharing import GROUP_OF, SHARED, SharedPlatformScheduling

HERE = Path(__file__).parent


def pools_of(module: Path):
    """A test module's ``POOLS`` (None where it has none), read without importing it."""
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["POOLS"]:
            return ast.literal_eval(node.value)
    return None


def test_each_group_names_existing_modules_with_one_pools_value():
    named = [m for modules in SHARED.values() for m in modules]
    assert len(named) == len(set(named)), "a module is in two groups"
    for group, modules in SHARED.items():
        missing = [m for m in modules if not (HERE / m).is_file()]
        assert not missing, f"group {group!r} names modules that are not there: {missing}"
        pools = {m: pools_of(HERE / m) for m in modules}
        assert len({repr(p) for p in pools.values()}) == 1, f"group {group!r} mixes pools: {pools}"


def test_a_groups_modules_are_one_unit_of_work_and_other_modules_one_each():
    scheduler = object.__new__(SharedPlatformScheduling)  # _split_scope reads no state
    first, second = SHARED["plain"][:2]
    assert scheduler._split_scope(f"tests/{first}::test_a") == scheduler._split_scope(f"tests/{second}::test_b[x]")
    assert scheduler._split_scope("tests/test_many_users.py::test_a") == "tests/test_many_users.py"
    assert scheduler._split_scope("tests/test_many_users.py::test_a") != \
        scheduler._split_scope("tests/test_readme_up.py::test_a")


def test_slowfirst_names_units_that_exist():
    from slowfirst import SLOWEST

    missing = [u for u in SLOWEST if u not in SHARED and not (HERE / u).is_file()]
    assert not missing, f"slowfirst.SLOWEST names units that are not there: {missing}"
    assert not [u for u in SLOWEST if u not in SHARED and u in GROUP_OF], "a shared module is ranked alone"
