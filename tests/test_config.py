"""One configuration module: ``skerry/config.py`` alone reads the environment, every
variable skerry uses is in its table, each parses its type or says which value is wrong;
the scheduler's settings come from ``DATA_DIR/scheduler.json``, checked field by field."""

import ast
import json
import logging
import re
from pathlib import Path

import pytest

from skerry import config
from skerry.errors import ConfigError
from skerry.workload import schedulerconfig
from skerry.workload.schedulerconfig import SchedulerConfig
from skerry.workload.states import Decision, RankParams, RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hub", "skerry", "adaptors", "extensions", "kernels")
ALLOWED = {Path("skerry/config.py")}
_READERS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that touch the process environment: ``os.environ``, ``os.getenv``
    and the like, or those names imported from ``os`` (code only: comments and docstrings
    do not count)."""
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _READERS \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(alias.name in _READERS for alias in node.names):
            lines.append(node.lineno)
    return sorted(lines)


def sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


# ---- only the configuration module reads the environment ----


def test_outside_the_configuration_module_no_module_reads_the_environment():
    found = [f"{path.relative_to(ROOT)}:{line}" for path in sources()
             if path.relative_to(ROOT) not in ALLOWED for line in environment_reads(path)]
    assert found == [], "read the environment through skerry.config instead: " + ", ".join(found)
    assert environment_reads(ROOT / "skerry" / "config.py")  # the one reader is still seen


def test_the_scan_sees_a_planted_read_and_not_a_mention(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('"""Reads os.environ["SKERRY_DATA_DIR"] (a docstring does not count)."""\n'
                       "import os\n"
                       "from os import getenv\n"
                       "# os.environ in a comment does not count\n"
                       'home = os.environ.get("HOME")\n'
                       'env = dict(os.environ)\n')
    assert environment_reads(planted) == [3, 5, 6]


def test_every_skerry_variable_named_in_the_code_is_in_the_table():
    names = {s.name for s in config.SETTINGS}
    used = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"SKERRY_[A-Z0-9_]+", node.value):
                used.add(node.value)
    assert used <= names, f"not in skerry/config.py: {sorted(used - names)}"


def test_the_table_names_each_variable_once_and_documents_it():
    names = [s.name for s in config.SETTINGS]
    assert len(names) == len(set(names))
    for s in config.SETTINGS:
        assert s.kind in (str, int, float, bool, Path), s.name
        assert s.doc and s.set_by and s.read_by, s.name
        assert config.by_name(s.name) is s
        if s.default is not None:
            assert isinstance(s.default, s.kind), s.name
    with pytest.raises(KeyError):
        config.by_name("SKERRY_NO_SUCH_THING")


def test_the_readme_lists_the_user_facing_variables_and_the_scheduler_settings():
    readme = (ROOT / "README.md").read_text()
    assert config.reference() in readme
    assert schedulerconfig.reference() in readme


# ---- each type parsed, a bad value named ----

GOOD = {str: ("  some text ", "some text"), int: ("8001", 8001), float: ("2.5", 2.5),
        bool: ("yes", True), Path: ("/srv/skerry", Path("/srv/skerry"))}
BAD = {int: "80x", float: "soon", bool: "maybe"}


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_each_setting_parses_its_type_and_names_a_bad_value(setting, monkeypatch):
    monkeypatch.delenv(setting.name, raising=False)
    assert setting.get() == setting.default and setting.raw() is None
    with pytest.raises(ConfigError, match=f"\\${setting.name} is not set"):
        setting.require()
    monkeypatch.setenv(setting.name, "")  # empty is unset
    assert setting.get() == setting.default
    text, value = GOOD[setting.kind]
    if setting.check is None or setting.check(value):
        monkeypatch.setenv(setting.name, text)
        assert setting.get() == value and setting.require() == value
        assert isinstance(setting.get(), setting.kind)
    if setting.kind in BAD:
        monkeypatch.setenv(setting.name, BAD[setting.kind])
        with pytest.raises(ConfigError) as e:
            setting.get()
        assert setting.name in str(e.value) and repr(BAD[setting.kind]) in str(e.value)


@pytest.mark.parametrize("text, value", [("1", True), ("true", True), ("ON", True), ("0", False),
                                         ("false", False), ("no", False)])
def test_a_flag_reads_yes_and_no(text, value, monkeypatch):
    monkeypatch.setenv(config.DEV.name, text)
    assert config.DEV.get() is value


@pytest.mark.parametrize("setting, text, sentence", [
    (config.PORT, "8000.5", "SKERRY_PORT='8000.5' is not a whole number"),
    (config.PORT, "70000", "SKERRY_PORT='70000': it must be a port"),
    (config.CULL_INTERVAL, "-1", "SKERRY_CULL_INTERVAL='-1': it must be a positive number of seconds"),
    (config.CULL_INTERVAL, "nan", "SKERRY_CULL_INTERVAL='nan' is not a number"),
    (config.DAV_PORT, "", "SKERRY_DAV_PORT is not set"),
    (config.CLUSTER_HOLD, "-3", "SKERRY_CLUSTER_HOLD='-3': it must be a file descriptor"),
])
def test_a_bad_value_is_refused_with_a_sentence(setting, text, sentence, monkeypatch):
    monkeypatch.setenv(setting.name, text)
    with pytest.raises(ConfigError) as e:
        setting.require()
    assert sentence in str(e.value)


def test_a_child_environment_is_a_copy_and_forward_passes_only_what_is_set(monkeypatch):
    monkeypatch.setenv(config.CRYPT_KEY.name, "k")
    monkeypatch.delenv(config.CULL_INTERVAL.name, raising=False)
    child = config.environment({config.DATA_DIR.name: "/srv/x"})
    assert child[config.DATA_DIR.name] == "/srv/x" and child[config.CRYPT_KEY.name] == "k"
    child["SKERRY_ELSEWHERE"] = "1"
    assert "SKERRY_ELSEWHERE" not in config.environment()  # the child's dict is its own
    assert config.forward(config.CULL_INTERVAL, config.CRYPT_KEY) == {config.CRYPT_KEY.name: "k"}


def test_set_and_pop(monkeypatch):
    monkeypatch.delenv(config.CLUSTER_HOLD.name, raising=False)
    config.CLUSTER_HOLD.set(7)
    assert config.CLUSTER_HOLD.get() == 7
    assert config.CLUSTER_HOLD.pop() == 7 and config.CLUSTER_HOLD.raw() is None
    assert config.CLUSTER_HOLD.pop() is None


def test_a_bad_cull_interval_is_said_and_the_culler_keeps_its_default(monkeypatch, caplog):
    from skerry.hub.service import culler

    monkeypatch.setenv(config.CULL_INTERVAL.name, "2")
    assert culler.interval() == 2.0
    monkeypatch.setenv(config.CULL_INTERVAL.name, "often")
    with caplog.at_level(logging.WARNING, logger="skerry.culler"):
        assert culler.interval() == culler.INTERVAL_S == 30.0
    assert "SKERRY_CULL_INTERVAL='often'" in caplog.text


# ---- the scheduler's settings: DATA_DIR/scheduler.json ----


def write(tmp_path, data) -> Path:
    (tmp_path / "scheduler.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return tmp_path


def test_no_file_gives_the_defaults(tmp_path):
    assert SchedulerConfig.for_data_dir(tmp_path) == SchedulerConfig()


def test_a_file_sets_the_fields_it_names(tmp_path):
    got = SchedulerConfig.for_data_dir(write(tmp_path, {
        "window": 4, "job_timeout": 3600, "batch_time": 0,
        "retry": {"limit": 5, "rules": {"memory": "no_retry"}}, "rank": {"cap": 50}}))
    assert (got.window, got.job_timeout, got.batch_time, got.horizon) == (4, 3600, 0, 0.2)
    assert got.retry.limit == 5 and got.retry.rules["memory"] is Decision.NO_RETRY
    assert got.retry.rules["bad_input"] is Decision.NO_RETRY  # the default rules stay
    assert got.rank == RankParams(cap=50)


@pytest.mark.parametrize("data, field", [
    ({"window": 0}, "'window'"),
    ({"window": "4"}, "'window'"),
    ({"horizon": -1}, "'horizon'"),
    ({"batch_time": True}, "'batch_time'"),
    ({"job_timeout": 0}, "'job_timeout'"),
    ({"heartbeat_timeout": None}, "'heartbeat_timeout'"),
    ({"plan_interval": float("inf")}, "'plan_interval'"),
    ({"retry": {"limit": -1}}, "'retry'"),
    ({"retry": {"rules": {"memory": "sometimes"}}}, "'retry'"),
    ({"rank": {"cap": 0.5}}, "'rank'"),
    ({"rank": {"delta": 1}}, "'rank'"),
    ({"windw": 4}, "unknown scheduler setting 'windw'"),
])
def test_a_bad_value_in_the_file_names_the_file_and_the_field(tmp_path, data, field):
    write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        SchedulerConfig.for_data_dir(tmp_path)
    assert field in str(e.value) and str(tmp_path / "scheduler.json") in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"])
def test_a_file_that_is_not_an_object_is_refused(tmp_path, text):
    with pytest.raises(ConfigError, match="scheduler.json"):
        SchedulerConfig.for_data_dir(write(tmp_path, text))


def test_keyword_values_are_checked_the_same(tmp_path):
    with pytest.raises(ConfigError, match="'window' must be a number above 0, not -2"):
        SchedulerConfig(window=-2)
    with pytest.raises(ConfigError, match="'retry'"):
        SchedulerConfig(retry={"limit": 1})
    assert SchedulerConfig(retry=RetryPolicy(limit=1)).retry.limit == 1


def test_the_manager_reads_the_file_of_its_data_dir(tmp_path):
    from skerry.workload.manager import Manager

    (tmp_path / "pools.json").write_text(json.dumps({"cpu": None, "gpu": None}))  # no Dask needed
    write(tmp_path, {"window": 3, "job_timeout": 60})
    manager = Manager(str(tmp_path))
    try:
        manager.start()
        assert manager.config == SchedulerConfig(window=3, job_timeout=60)
    finally:
        manager.close()
    write(tmp_path, {"window": -3})
    manager = Manager(str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="'window'"):
            manager.start()
    finally:
        manager.close()
