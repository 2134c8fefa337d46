"""skerry.quickstart: skerry's processes start without jsonschema's IRI checker, and run
their module exactly as ``python -m`` would."""

import subprocess
import sys

PROBE = '''
import sys
import jsonschema
checker = jsonschema.Draft7Validator.FORMAT_CHECKER
try:
    import rfc3987_syntax
    left_out = False
except ImportError:
    left_out = True
print(__name__, sys.argv[1:], left_out, "rfc3987_syntax" in checker.checkers.get("iri", (None,))[0].__module__
      if "iri" in checker.checkers else "no-iri",
      checker.conforms("2026-12-04", "date"), checker.conforms("not a date", "date"))
'''


def run(tmp_path, *command):
    (tmp_path / "probe.py").write_text(PROBE)
    return subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True).stdout.split()


def test_quickstart_runs_the_module_as_main_with_its_arguments_and_without_the_iri_checker(tmp_path):
    name, *rest = run(tmp_path, "-m", "skerry.quickstart", "probe", "--flag", "value")
    assert name == "__main__"
    assert rest[:2] == ["['--flag',", "'value']"]
    left_out, iri, good_date, bad_date = rest[2:]
    assert left_out == "True"
    assert iri == "no-iri"  # the iri format is left unchecked, as where the package is not installed
    assert (good_date, bad_date) == ("True", "False")  # every other format is checked as before


def test_plain_python_still_has_it_so_the_comparison_means_something(tmp_path):
    _, *rest = run(tmp_path, "-m", "probe")
    assert rest[2] == "False"  # here the package is installed: quickstart is what leaves it out


def test_no_module_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "skerry.quickstart"], capture_output=True, text=True)
    assert r.returncode == 1 and "usage: python -m skerry.quickstart MODULE" in r.stderr


YARN_PROBE = '''
import sys
ran = []
sys.addaudithook(lambda event, args: event == "subprocess.Popen" and ran.append(" ".join(map(str, args[1]))))
if sys.argv[1] == "skip":
    from skerry.quickstart import FIXES, skip_yarn_registry
    assert skip_yarn_registry in FIXES["jupyterhub.singleuser"]
    from jupyterlab import commands
    assert hasattr(commands, "_yarn_config"), "JupyterLab changed: skip_yarn_registry has nothing to skip"
    skip_yarn_registry()
import jupyterlab.labapp  # what a user's server imports
from jupyterlab.commands import YARN_DEFAULT_REGISTRY, AppOptions
print(any("yarn" in command for command in ran), AppOptions().registry == YARN_DEFAULT_REGISTRY)
'''


def test_users_servers_import_jupyterlab_without_asking_yarn_for_a_registry():
    def probe(mode):
        return subprocess.run([sys.executable, "-c", YARN_PROBE, mode], capture_output=True, text=True,
                              check=True).stdout.split()

    assert probe("plain") == ["True", "True"]  # JupyterLab alone runs yarn, for the same answer here
    assert probe("skip") == ["False", "True"]
