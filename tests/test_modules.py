"""Modules and executors on real files (file:// folders and memory://), real subprocesses
and a real papermill kernel: the built-ins, callable, command and notebook modules, error
classes, no partial output after a failure, and bad specs refused with the field named."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import fsspec
import nbformat
import pytest

from skerry.adaptors.atomic import is_hidden
from skerry.errors import ConfigError
from skerry.workload.builtins import BUILTINS, builtin_registry
from skerry.workload.executors import file_checksum, run_job
from skerry.workload.modules import ModuleRegistry, load_module, parse_memory

DATA = b"hello skerry\n" * 1000


@pytest.fixture(params=["file", "memory"])
def where(request, tmp_path):
    """(input folder URL, output folder URL, filesystem) on a local folder or in memory."""
    if request.param == "file":
        inp, out = tmp_path / "in", tmp_path / "out"
        inp.mkdir()
        yield f"file://{inp}", f"file://{out}", fsspec.filesystem("file")
    else:
        root = f"/t-{uuid.uuid4().hex[:8]}"
        fs = fsspec.filesystem("memory")
        fs.mkdir(root + "/in")
        yield f"memory://{root}/in", f"memory://{root}/out", fs
        fs.rm(root, recursive=True)


def put(folder_url, name, data=DATA):
    url = f"{folder_url}/{name}"
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return url


def listing(url):
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def md5_line(data, name):
    return f"{hashlib.md5(data).hexdigest()}  {name}\n".encode()


# -- built-ins through the callable executor ----------------------------------------------


def test_md5_builtin_writes_checksum_file(where):
    inp, out, _ = where
    url = put(inp, "a.dat")
    r = run_job(BUILTINS["md5"], {"input": url}, out)
    assert r.ok and r.exit_code == 0 and r.error_class is None
    [o] = r.outputs
    assert (o.pin, o.name, o.url) == ("checksum", "a.dat.md5", f"{out}/a.dat.md5")
    body = fsspec.open(o.url, "rb").open().read()
    assert body == md5_line(DATA, "a.dat")
    assert o.size == len(body) and o.checksum == hashlib.md5(body).hexdigest()
    assert o.checksum == file_checksum(o.url)
    assert listing(out) == ["a.dat.md5"]  # no temporary file left beside it


def test_noop_and_sleep_builtins(where):
    inp, out, _ = where
    assert run_job(BUILTINS["noop"], None, out).ok
    r = run_job(BUILTINS["noop"], put(inp, "x"), out)
    assert r.ok and r.outputs == []
    r = run_job(BUILTINS["sleep"], None, out, {"seconds": 0.01})
    assert r.ok and r.outputs == []
    assert listing(out) == []


def test_fail_builtin_classifies_the_exception(where):
    inp, out, _ = where
    r = run_job(BUILTINS["fail"], None, out, {"error": "ValueError", "message": "bad value 42"})
    assert not r.ok and r.error_class == "ValueError" and r.exit_code == 1
    assert r.error == "ValueError: bad value 42"  # one sentence, no traceback
    assert "Traceback" in r.log and "raise cls" in r.log  # the traceback is in the log
    r = run_job(BUILTINS["fail"], None, out, {"error": "DetectorOffline"})
    assert r.error_class == "DetectorOffline" and "failed on purpose" in r.error


def test_builtin_registry_names_modules_by_version():
    reg = builtin_registry()
    assert {m.ref for m in reg} == {"noop@1", "sleep@1", "md5@1", "fail@1", "gpumatmul@1"}
    assert reg.get("md5") is reg.get("md5@1")
    with pytest.raises(ConfigError, match="Unknown module 'md5@2'"):
        reg.get("md5@2")
    reg.add({"name": "md5", "version": "2", "inputs": [{"name": "input"}], "command": ["true"]})
    with pytest.raises(ConfigError, match="several versions"):
        reg.get("md5")


# -- a callable module written by the test ------------------------------------------------

WORDS = '''
def count(job):
    """Counts the words of every input file into <stem>.count and one total file."""
    total = 0
    for i, url in enumerate(job.inputs["texts"]):
        with job.open_input("texts", i) as f:
            n = len(f.read().split())
        total += n
        name = url.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".count"
        with job.open_output("counts", name) as out:
            out.write(str(n).encode())
    with job.open_output("total") as out:
        out.write(f"{total * job.params['scale']}".encode())
    job.log(f"{total} words")

def half_then_fail(job):
    with job.open_output("out") as out:
        out.write(b"half of it")
    raise OSError("disk went away")

def half_then_hang(job):
    f = job.open_output("out")
    f.write(b"x" * 100)
    f.flush()
    import time
    time.sleep(600)
'''


@pytest.fixture
def wordmod(tmp_path, monkeypatch):
    name = f"skerry_test_words_{uuid.uuid4().hex[:8]}"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / f"{name}.py").write_text(WORDS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    return name


def test_callable_module_with_multiple_pins(where, wordmod):
    inp, out, _ = where
    spec = load_module({
        "name": "wc", "version": "0.1",
        "inputs": [{"name": "texts", "kind": "multiple", "type": "text", "pattern": "*.txt"}],
        "outputs": [{"name": "counts", "kind": "multiple", "type": "count"},
                    {"name": "total", "kind": "single", "type": "count", "file_name": "{stem}.total"}],
        "parameters": {"scale": {"type": "int", "default": 1}},
        "callable": f"{wordmod}:count",
    })
    urls = [put(inp, "a.txt", b"one two three"), put(inp, "b.txt", b"four five")]
    r = run_job(spec, {"texts": urls}, out, {"scale": 10})
    assert r.ok, r.log
    got = {o.name: fsspec.open(o.url, "rb").open().read() for o in r.outputs}
    assert got == {"a.count": b"3", "b.count": b"2", "a.total": b"50"}
    assert {o.pin for o in r.outputs} == {"counts", "total"}
    assert r.log == "5 words\n"
    assert listing(out) == ["a.count", "a.total", "b.count"]


def test_callable_failure_leaves_no_output(where, wordmod):
    inp, out, _ = where
    spec = load_module({"name": "half", "outputs": [{"name": "out", "file_name": "result"}],
                        "callable": f"{wordmod}:half_then_fail"})
    r = run_job(spec, None, out)
    assert r.error_class == "OSError" and r.outputs == []
    assert listing(out) == []  # neither the final name nor the temporary one


def test_killed_job_leaves_no_file_under_the_output_name(tmp_path, wordmod):
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path / 'pkg')!r})
        from skerry.workload.executors import run_job
        run_job({{"name": "hang", "outputs": [{{"name": "out", "file_name": "result"}}],
                  "callable": "{wordmod}:half_then_hang"}}, None, "file://{out}")
    """)
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and any(is_hidden(p.name) and p.stat().st_size for p in out.iterdir())):
            assert child.poll() is None and time.monotonic() < deadline, "the job never started writing"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    names = [p.name for p in out.iterdir()]
    assert "result" not in names  # only the hidden temporary file remains
    assert all(n.startswith(".result.") and is_hidden(n) for n in names)


# -- command modules (real subprocesses) ---------------------------------------------------

MD5SUM = {
    "name": "md5sum", "version": "8.32",
    "inputs": [{"name": "data", "kind": "single", "type": "file"}],
    "outputs": [{"name": "sum", "kind": "single", "type": "md5", "file_name": "{name}.md5"}],
    "command": ["sh", "-c", 'cd "$(dirname "$0")" && md5sum "$(basename "$0")" > "$1"',
                "{input}", "{output}"],
}


def test_command_module_md5sum(where):
    inp, out, _ = where
    url = put(inp, "run1.raw")
    r = run_job(MD5SUM, {"data": url}, out)
    assert r.ok, r.log
    [o] = r.outputs
    assert o.name == "run1.raw.md5"
    assert fsspec.open(o.url, "rb").open().read() == md5_line(DATA, "run1.raw")
    # the command executor and the md5 built-in agree on the content
    r2 = run_job(BUILTINS["md5"], url, out + "-builtin")
    assert fsspec.open(r2.outputs[0].url, "rb").open().read() == md5_line(DATA, "run1.raw")


def test_command_placeholders_params_and_multiple_pins(where):
    inp, out, _ = where
    spec = {
        "name": "cat", "inputs": [{"name": "parts", "kind": "multiple"}],
        "outputs": [{"name": "joined", "file_name": "joined.{ext}"}],
        "parameters": {"ext": {"type": "str", "default": "txt"}, "upper": {"type": "bool", "default": False},
                       "times": {"type": "int"}},
        "command": [sys.executable, "-c",
                    "import sys; o, up, n, *fs = sys.argv[1:]; d = b''.join(open(f, 'rb').read() for f in fs) * int(n);"
                    " open(o, 'wb').write(d.upper() if up == 'true' else d); print({{'files': len(fs)}})",
                    "{output}", "{upper}", "{times}", "{parts}"],
    }
    urls = [put(inp, f"p{i}", f"part{i};".encode()) for i in range(3)]
    r = run_job(spec, {"parts": urls}, out, {"upper": True, "times": 2})
    assert r.ok, r.log
    [o] = r.outputs
    assert o.name == "joined.txt"
    assert fsspec.open(o.url, "rb").open().read() == b"PART0;PART1;PART2;" * 2
    assert "{'files': 3}" in r.log  # the command's output is the log


def test_command_errors_are_classified(where):
    inp, out, _ = where
    url = put(inp, "f")
    exit3 = {"name": "e", "inputs": [{"name": "i"}], "outputs": [{"name": "o", "file_name": "o"}],
             "command": [sys.executable, "-c", "import sys; open(sys.argv[2], 'w').write('partial');"
                         " print('going down'); sys.exit(3)", "{input}", "{output}"]}
    r = run_job(exit3, url, out)
    assert (r.error_class, r.exit_code) == ("ExitCode:3", 3)
    assert "exited with status 3" in r.error and "going down" in r.log
    assert listing(out) == []  # what it wrote before failing is not an output

    r = run_job({**exit3, "command": ["no-such-program-xyz", "{input}"]}, url, out)
    assert r.error_class == "CommandNotFound"

    r = run_job({**exit3, "command": ["sleep", "30"]}, url, out, timeout=0.5)
    assert r.error_class == "Timeout" and "timeout" in r.error

    r = run_job({**exit3, "command": ["true"]}, url, out)
    assert r.error_class == "MissingOutput" and "'o'" in r.error

    r = run_job({**exit3, "command": ["sh", "-c", "kill -9 $$"]}, url, out)
    assert r.error_class == "Signal:SIGKILL"
    assert listing(out) == []


def test_missing_input_is_classified(where):
    inp, out, _ = where
    for spec in (BUILTINS["md5"], MD5SUM):
        r = run_job(spec, f"{inp}/not-there.raw", out)
        assert r.error_class == "MissingInput" and "not-there.raw" in r.error
        assert "Traceback" not in r.error
    assert listing(out) == []


def test_bad_job_arguments_are_refused_as_config_errors(where):
    inp, out, _ = where
    r = run_job(BUILTINS["md5"], None, out)
    assert r.error_class == "ConfigError" and "input pin 'input'" in r.error
    r = run_job(BUILTINS["sleep"], None, out, {"seconds": "long"})
    assert r.error_class == "ConfigError" and "'seconds'" in r.error
    r = run_job(BUILTINS["sleep"], None, out, {"minutes": 1})
    assert r.error_class == "ConfigError" and "no parameter 'minutes'" in r.error


# -- notebook modules (papermill) --------------------------------------------------------


def write_notebook(url, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("input = None\nchecksum = None\nlabel = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    with fsspec.open(url, "w") as f:
        nbformat.write(nb, f)


NB_SPEC = {
    "name": "nbmd5", "inputs": [{"name": "input"}],
    "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
    "parameters": {"label": {"type": "str", "default": "x"}},
}


def test_notebook_module_runs_with_papermill_and_keeps_the_notebook(where):
    inp, out, _ = where
    nb_url = f"{inp}/nb/md5.ipynb"
    write_notebook(nb_url, [
        "import hashlib, os\ndigest = hashlib.md5(open(input, 'rb').read()).hexdigest()",
        "open(checksum, 'w').write(f'{digest}  {os.path.basename(input)}\\n')\nprint('label', label)",
    ])
    url = put(inp, "a.raw")
    r = run_job({**NB_SPEC, "notebook": nb_url}, url, out, {"label": "L7"}, job_id="job-1")
    assert r.ok, r.log
    [o] = r.outputs
    assert fsspec.open(o.url, "rb").open().read() == md5_line(DATA, "a.raw")
    assert r.log_location == f"{out}/.skerry-logs/job-1.ipynb"
    with fsspec.open(r.log_location, "r") as f:
        done = nbformat.read(f, as_version=4)
    assert any("label L7" in "".join(x.get("text", "") for x in c.get("outputs", [])) for c in done.cells)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in done.cells)


def test_failing_notebook_keeps_its_log_and_no_output(where, tmp_path):
    inp, out, _ = where
    nb_url = f"{inp}/nb/bad.ipynb"
    write_notebook(nb_url, ["open(checksum, 'w').write('half')", "raise KeyError('calibration')"])
    logs = f"file://{tmp_path}/logs"
    r = run_job({**NB_SPEC, "notebook": nb_url}, put(inp, "a.raw"), out, job_id="j2", log_dir=logs)
    assert r.error_class == "KeyError" and "calibration" in r.error
    assert r.error.endswith("(cell 3 of the notebook, In [4]).")  # its 3rd cell; papermill adds one before
    assert r.outputs == [] and listing(out) == []
    assert r.log_location == f"{logs}/j2.ipynb"
    with fsspec.open(r.log_location, "r") as f:
        done = nbformat.read(f, as_version=4)
    assert any(o.get("ename") == "KeyError" for c in done.cells for o in c.get("outputs", []))


# -- bad specs -----------------------------------------------------------------------------

GOOD = {"name": "m", "inputs": [{"name": "i"}], "callable": "pkg.mod:func"}


@pytest.mark.parametrize("change, field, words", [
    ({"name": "bad name!"}, "field name", "pattern"),
    ({"inputs": [{"name": "i", "kind": "several"}]}, "field inputs.0.kind", "'single' or 'multiple'"),
    ({"inputs": [{"nam": "i"}]}, "field inputs.0.name", "required"),
    ({"parameters": {"n": {"type": "int", "default": "ten"}}}, "field parameters.n", "not of type int"),
    ({"parameters": {"n": {"type": "complex"}}}, "field parameters.n.type", "'int'"),
    ({"resources": {"memory": "lots"}}, "field resources.memory", "not a size"),
    ({"resources": {"gpu": -1}}, "field resources.gpu", "greater than or equal"),
    ({"callable": "no-colon"}, "field callable", "pattern"),
    ({"command": ["echo"]}, "field (spec)", "exactly one of callable, command or notebook (got callable, command)"),
    ({"callable": None}, "field (spec)", "exactly one of callable, command or notebook"),
    ({"callable": None, "command": []}, "field command", "non-empty argv"),
    ({"callable": None, "command": "md5sum {input}"}, "field command", "valid list"),  # no shell strings
    ({"callable": None, "command": ["cp", "{input}", "{dest}"]}, "field (spec)", "{dest} names no pin"),
    ({"outputs": [{"name": "i"}]}, "field (spec)", "unique"),
    ({"outputs": [{"name": "o", "file_name": "{nme}.md5"}]}, "field (spec)", "{nme} is none of job, name"),
    ({"colour": "red"}, "field colour", "not permitted"),
])
def test_bad_specs_are_refused_naming_the_field(change, field, words):
    with pytest.raises(ConfigError) as e:
        load_module({**GOOD, **change})
    assert field in str(e.value) and words in str(e.value)


def test_good_spec_values():
    m = load_module({**GOOD, "version": 2, "resources": {"cpu": 2, "memory": "1.5GiB", "gpu": 1}})
    assert m.ref == "m@2" and m.runs_as == "callable"
    assert m.resources.memory == int(1.5 * 2**30) and m.resources.gpu == 1
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("2GB") == 2 * 10**9
    reg = ModuleRegistry([m])
    with pytest.raises(ConfigError, match="already defined differently"):
        reg.add({**GOOD, "version": 2, "description": "other"})
    with pytest.raises(ConfigError, match="mapping"):
        load_module(["not", "a", "dict"])


def test_notebook_past_its_timeout_is_classified(tmp_path):
    nb_url = f"file://{tmp_path}/slow.ipynb"
    write_notebook(nb_url, ["import time\ntime.sleep(60)"])
    r = run_job({**NB_SPEC, "notebook": nb_url}, put(f"file://{tmp_path}", "a.raw"),
                f"file://{tmp_path}/out", timeout=1)
    assert r.error_class == "Timeout" and "timeout of 1 s" in r.error
    assert "CellTimeoutError" in r.log and r.outputs == []
    assert listing(f"file://{tmp_path}/out") == [".skerry-logs"]  # the log only


def test_specs_and_results_cross_process_boundaries():
    """A runner ships modules to workers and results back (pickle), the REST API as JSON."""
    import json
    import pickle

    spec = BUILTINS["md5"]
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert load_module(json.loads(spec.model_dump_json())) == spec
    r = run_job(BUILTINS["fail"], None, "memory:///pickled", {"error": "ValueError"})
    back = pickle.loads(pickle.dumps(r))
    assert back == r and json.loads(json.dumps(r.to_dict()))["error_class"] == "ValueError"


def test_skerry_urls_through_the_callable_and_command_executors(tmp_path, monkeypatch):
    """skerry:// is read and written through fsspec; the command gets a staged local copy."""
    from skerry.adaptors.config import write_config
    from skerry.adaptors.federation import SkerryFileSystem

    (tmp_path / "home").mkdir()
    write_config(str(tmp_path / "adaptors.json"),
                 [{"name": "home", "type": "local", "path": str(tmp_path / "home")}])
    monkeypatch.setenv("SKERRY_ADAPTORS", str(tmp_path / "adaptors.json"))
    SkerryFileSystem.clear_instance_cache()
    try:
        (tmp_path / "home" / "raw").mkdir()
        (tmp_path / "home" / "raw" / "run1.raw").write_bytes(DATA)
        url = "skerry://home/raw/run1.raw"
        r = run_job(BUILTINS["md5"], url, "skerry://home/sums")
        assert r.ok, r.log
        assert r.outputs[0].url == "skerry://home/sums/run1.raw.md5"
        assert (tmp_path / "home" / "sums" / "run1.raw.md5").read_bytes() == md5_line(DATA, "run1.raw")
        r = run_job(MD5SUM, url, "skerry://home/sums2")
        assert r.ok, r.log
        assert "/in/data/0/run1.raw" in r.log  # the command read a staged copy, not the adaptor
        assert (tmp_path / "home" / "sums2" / "run1.raw.md5").read_bytes() == md5_line(DATA, "run1.raw")
        assert sorted(p.name for p in (tmp_path / "home" / "sums2").iterdir()) == ["run1.raw.md5"]
    finally:
        SkerryFileSystem.clear_instance_cache()


def test_notebook_jobs_side_by_side_in_one_process_each_run_in_their_own_folder(tmp_path):
    """Jobs share a worker's process (its threads): a notebook job must not change the
    process's working folder. The first job ends (its folder removed) while the second runs."""
    quick, slow = f"file://{tmp_path}/quick.ipynb", f"file://{tmp_path}/slow.ipynb"
    cells = ["import os\nprint('cwd', os.getcwd())\nopen(checksum, 'w').write('done')"]
    write_notebook(quick, cells)
    write_notebook(slow, ["import time\ntime.sleep(4)"] + cells)
    inp = put(f"file://{tmp_path}", "a.raw")
    here = os.getcwd()
    results = {}

    def job(name, url):
        results[name] = run_job({**NB_SPEC, "notebook": url}, inp, f"file://{tmp_path}/out-{name}", job_id=name)

    threads = [threading.Thread(target=job, args=("quick", quick)), threading.Thread(target=job, args=("slow", slow))]
    threads[0].start()
    time.sleep(0.5)  # the quick one is starting its kernel when the slow one starts
    threads[1].start()
    for t in threads:
        t.join(120)
    assert os.getcwd() == here
    for name in ("slow", "quick"):
        r = results[name]
        assert r.ok, f"{name}: {r.error_class} {r.error}"
        with fsspec.open(r.log_location, "r") as f:
            printed = "".join(o.get("text", "") for c in nbformat.read(f, as_version=4).cells
                              for o in c.get("outputs", []))
        assert f"skerry-job-{name}-" in printed, printed


def test_a_notebook_jobs_kernel_listens_only_on_sockets_in_the_jobs_own_folder(tmp_path):
    """No TCP port: ports picked then bound later race between jobs starting together, and a
    port on localhost is reachable by every account on the node; the job's folder is not."""
    nb = f"file://{tmp_path}/where.ipynb"
    write_notebook(nb, [
        "import json, os, stat, ipykernel.connect\n"
        "info = ipykernel.connect.get_connection_info(unpack=True)\n"
        "folder = os.path.dirname(info['ip'])\n"
        "mode = stat.S_IMODE(os.stat(folder).st_mode)\n"
        "socks = sorted(n for n in os.listdir(folder) if stat.S_ISSOCK(os.stat(os.path.join(folder, n)).st_mode))\n"
        "open(checksum, 'w').write(json.dumps({'transport': info['transport'], 'folder': folder,\n"
        "                                     'cwd': os.getcwd(), 'mode': mode, 'sockets': len(socks)}))"])
    r = run_job({**NB_SPEC, "notebook": nb}, put(f"file://{tmp_path}", "a.raw"), f"file://{tmp_path}/out",
                job_id="sockets")
    assert r.ok, r.log
    [o] = r.outputs
    seen = json.loads(fsspec.open(o.url, "r").open().read())
    assert seen["transport"] == "ipc"
    assert seen["folder"] == seen["cwd"] and "skerry-job-sockets-" in seen["folder"]
    assert seen["mode"] == 0o700 and seen["sockets"] == 5  # shell, iopub, stdin, control, heartbeat
