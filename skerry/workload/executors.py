"""Executors: run one job of a module and say what came of it.

``run_job(module, inputs, output, params)`` runs one job and returns a :class:`JobResult`;
it never raises for a job that fails (the failure is the result). The rules:

- Files are fsspec URLs (``skerry://``, ``file://``, ``memory://``, ...). ``inputs`` maps an
  input pin to its file URL(s); ``output`` is the folder URL the outputs go to.
- Callable modules get a :class:`JobContext` and read and write through fsspec only.
  Command and notebook modules run in another process, so they get local paths: inputs
  that are not local (not ``file://`` or a plain path) are first copied to a temporary
  folder, outputs are written into one and then copied to ``output``.
- Outputs are atomic writes (``skerry.adaptors.atomic``): first written under a hidden
  temporary name beside the final one, renamed into place only after the job succeeded:
  a failed or killed job leaves no file under an output's final name (a killed job may
  leave a temporary file, which is never an output nor listed). Each file is renamed on its
  own: a crash between two renames can leave some outputs in place, whole; a retry of the job
  writes the same names again.
- Every output is reported with its size and checksum (MD5, 32 hex digits, as the
  catalog stores it; see :func:`file_checksum`), so the catalog can register it.
- Errors are classified as a short string for the retry policy: the exception's class
  name (``ValueError``), ``Timeout``, ``ExitCode:3``, ``Signal:SIGKILL``,
  ``MissingInput``, ``MissingOutput``, ``CommandNotFound``, ``ConfigError``. The
  sentence (``error``) is one line; the traceback is in the log (``log``), never in it.
- Notebook modules run with papermill, one execution per job; the executed notebook is
  kept as the job's log at ``log_location`` (``<log_dir>/<job>.ipynb``; ``log_dir``
  defaults to ``<output>/.skerry-logs``).
- ``timeout`` (seconds) is enforced for commands (the process group is killed) and
  notebooks (papermill's cell timeout); a callable runs in the caller's thread, where the
  runner's job-level timeout covers it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import posixpath
import shutil
import signal
import subprocess
import tempfile
import traceback
import uuid
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import IO, Any
from collections.abc import Callable

import fsspec
from fsspec.core import url_to_fs

from skerry.adaptors import atomic
from skerry.errors import ConfigError, SkerryError

from .loglinks import LOG_FOLDER
from .modules import PLACEHOLDER, ModuleSpec, Pin, load_module

__all__ = [
    "JobContext",
    "JobResult",
    "OutputFile",
    "JobFailed",
    "run_job",
    "file_checksum",
    "DEFAULT_LOG_DIR",
    "LOG_TAIL",
]

DEFAULT_LOG_DIR = LOG_FOLDER
LOG_TAIL = 64 * 1024  # characters of a job's log kept in its result
_CHUNK = 1 << 20


class JobFailed(SkerryError):
    """A job failed for a reason its executor names; ``error_class`` is that reason."""

    code = "job_failed"

    def __init__(self, error_class: str, message: str, log: str = "", exit_code: int = 1):
        super().__init__(message)
        self.error_class = error_class
        self.log = log
        self.exit_code = exit_code


@dataclass(frozen=True)
class OutputFile:
    """One file a job wrote: its pin, URL, file name, size in bytes and MD5 (hex)."""

    pin: str
    url: str
    name: str
    size: int
    checksum: str


@dataclass
class JobResult:
    """What came of one job. ``ok`` when ``error_class`` is None."""

    job_id: str
    outputs: list[OutputFile] = field(default_factory=list)
    exit_code: int = 0
    error_class: str | None = None
    error: str | None = None
    log: str = ""
    log_location: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None

    def to_dict(self) -> dict[str, Any]:
        # shallow: dataclasses.asdict deep-copies every value, a quarter of a no-op job's time
        out = {name: getattr(self, name) for name in _RESULT_FIELDS}
        out["outputs"] = [{name: getattr(o, name) for name in _OUTPUT_FIELDS} for o in self.outputs]
        out["ok"] = self.ok
        return out


_RESULT_FIELDS = tuple(f.name for f in fields(JobResult))
_OUTPUT_FIELDS = tuple(f.name for f in fields(OutputFile))


def file_checksum(url: str) -> str:
    """The MD5 (32 hex digits) of the file at ``url``, read through fsspec in 1 MiB chunks."""
    h = hashlib.md5()
    with fsspec.open(url, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def _basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def _tail(text: str) -> str:
    return text if len(text) <= LOG_TAIL else "...\n" + text[-LOG_TAIL:]


class _Outputs:
    """The job's outputs: written under temporary names, renamed into place on commit."""

    def __init__(self, output: str, job_id: str):
        self.output = output.rstrip("/")
        self.job_id = job_id
        self.pending: list[tuple[str, atomic.AtomicFile, str]] = []  # (pin, its write, final name)

    @cached_property
    def _where(self) -> tuple:
        # found at the first output: a job that writes none (a no-op) never asks its file system
        return url_to_fs(self.output)

    @property
    def fs(self):
        return self._where[0]

    @property
    def root(self) -> str:
        return self._where[1]

    def temp_path(self, pin: str, name: str) -> str:
        if not name or "/" in name or name.startswith("."):  # hidden names are ours (temporary files, logs)
            raise ConfigError(f"Output file name {name!r} of pin {pin!r} is not a plain file name.")
        if any(final == name for _, _, final in self.pending):
            raise ConfigError(f"Output file {name!r} is written twice by one job.")
        self.fs.makedirs(self.root, exist_ok=True)
        write = atomic.AtomicFile(self.fs, _join(self.root, name))
        self.pending.append((pin, write, name))
        return write.temp

    def open(self, pin: str, name: str, mode: str = "wb") -> IO:
        return self.fs.open(self.temp_path(pin, name), mode)

    def put(self, pin: str, local: str, name: str) -> None:
        self.fs.put_file(local, self.temp_path(pin, name))

    def commit(self) -> list[OutputFile]:
        """Rename every temporary file into place; the outputs with size and checksum."""
        done = []
        for pin, write, name in self.pending:
            if not self.fs.exists(write.temp):  # opened but never closed: nothing was written
                raise JobFailed("MissingOutput", f"Output {name!r} of pin {pin!r} was not written.")
        for pin, write, name in self.pending:
            final = write.path
            write.commit()
            url = _join(self.output, name)
            size = self.fs.size(final)
            h = hashlib.md5()
            with self.fs.open(final, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            done.append(OutputFile(pin, url, name, size, h.hexdigest()))
        self.pending = []
        return done

    def discard(self) -> None:
        for _, write, _ in self.pending:
            write.abort()
        self.pending = []


def _render_name(pin: Pin, job: JobContext) -> str:
    first = next((urls[0] for urls in job.inputs.values() if urls), "")
    name = _basename(first)
    stem, suffix = posixpath.splitext(name)
    values = {**job.params, "name": name, "stem": stem, "suffix": suffix, "job": job.job_id}
    try:
        return pin.file_name.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"file_name {pin.file_name!r} of output pin {pin.name!r}: bad field {e}.") from None


class JobContext:
    """What a callable module gets: its inputs, parameters and a way to write outputs.

    ``inputs`` maps each input pin to its list of URLs; ``input(pin)`` is the one URL of a
    single pin; ``open_input`` opens one for reading; ``open_output(pin, name)`` opens an
    output for writing (a temporary file, renamed into place when the job succeeds; the
    name defaults to the pin's ``file_name`` template); ``log(text)`` adds to the log.
    """

    def __init__(self, module: ModuleSpec, inputs: dict[str, list[str]], output: str,
                 params: dict[str, Any], job_id: str, outputs: _Outputs | None = None):
        self.module = module
        self.inputs = inputs
        self.output = output
        self.params = params
        self.job_id = job_id
        self._outputs = outputs
        self._log = io.StringIO()

    def _pin(self, pins: list[Pin], name: str | None, what: str) -> Pin:
        if name is None:
            if len(pins) != 1:
                raise ConfigError(f"Module {self.module.ref} has {len(pins)} {what} pins: name one.")
            return pins[0]
        pin = next((p for p in pins if p.name == name), None)
        if pin is None:
            raise ConfigError(f"Module {self.module.ref} has no {what} pin {name!r}.")
        return pin

    def input(self, pin: str | None = None) -> str:
        """The URL of the only file on input ``pin`` (the only input pin by default)."""
        p = self._pin(self.module.inputs, pin, "input")
        urls = self.inputs.get(p.name, [])
        if len(urls) != 1:
            raise ConfigError(f"Input pin {p.name!r} has {len(urls)} files, not one.")
        return urls[0]

    def open_input(self, pin: str | None = None, index: int = 0, mode: str = "rb") -> IO:
        p = self._pin(self.module.inputs, pin, "input")
        return fsspec.open(self.inputs[p.name][index], mode).open()

    def output_name(self, pin: str | None = None) -> str:
        """The file name output ``pin`` gets from its ``file_name`` template."""
        p = self._pin(self.module.outputs, pin, "output")
        if not p.file_name:
            raise ConfigError(f"Output pin {p.name!r} has no file_name: give a name.")
        return _render_name(p, self)

    def open_output(self, pin: str | None = None, name: str | None = None, mode: str = "wb") -> IO:
        p = self._pin(self.module.outputs, pin, "output")
        return self._outputs.open(p.name, name or self.output_name(p.name), mode)

    def log(self, text: str) -> None:
        self._log.write(text if text.endswith("\n") else text + "\n")

    @property
    def log_text(self) -> str:
        return self._log.getvalue()


def _normalize_inputs(module: ModuleSpec, inputs: Any) -> dict[str, list[str]]:
    if inputs is None:
        inputs = {}
    if isinstance(inputs, str | list | tuple):
        if len(module.inputs) != 1:
            raise ConfigError(f"Module {module.ref} has {len(module.inputs)} input pins: map pin -> files.")
        inputs = {module.inputs[0].name: inputs}
    out: dict[str, list[str]] = {}
    for pin_name, urls in inputs.items():
        pin = module.input(pin_name)
        if pin is None:
            raise ConfigError(f"Module {module.ref} has no input pin {pin_name!r}.")
        urls = [urls] if isinstance(urls, str) else list(urls)
        if pin.kind == "single" and len(urls) > 1:
            raise ConfigError(f"Input pin {pin_name!r} is single: it takes one file, not {len(urls)}.")
        out[pin_name] = urls
    for pin in module.inputs:
        if not pin.optional and not out.get(pin.name):
            raise ConfigError(f"Module {module.ref} needs a file on input pin {pin.name!r}.")
        out.setdefault(pin.name, [])
    return out


def _check_inputs_exist(inputs: dict[str, list[str]]) -> None:
    for pin, urls in inputs.items():
        for url in urls:
            fs, path = url_to_fs(url)
            if not fs.isfile(path):
                raise JobFailed("MissingInput", f"Input {url} (pin {pin!r}) does not exist.")


def _resolve(target: str) -> Callable:
    mod_name, _, func_name = target.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), func_name)
    except (ImportError, AttributeError) as e:
        raise JobFailed("ConfigError", f"Cannot load callable {target!r}: {e}.") from None


def _error_class(e: BaseException) -> str:
    if isinstance(e, JobFailed):
        return e.error_class
    if isinstance(e, TimeoutError | subprocess.TimeoutExpired):
        return "Timeout"
    return type(e).__name__


def _sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(e, JobFailed | SkerryError):
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# -- the three ways to run -------------------------------------------------------------


def _run_callable(ctx: JobContext) -> int:
    _resolve(ctx.module.callable)(ctx)
    return 0


class _Staging:
    """Local paths for a command or notebook job: inputs copied in when not local,
    outputs written to a temporary folder and collected from it."""

    def __init__(self, ctx: JobContext, tmp: str):
        self.ctx = ctx
        self.tmp = tmp
        self.inputs: dict[str, list[str]] = {}
        for pin, urls in ctx.inputs.items():
            paths = []
            for i, url in enumerate(urls):
                if _is_local(url):
                    paths.append(_local_path(url))
                else:  # a remote file: copy it in, keeping its name
                    local = os.path.join(tmp, "in", pin, str(i), _basename(url))
                    os.makedirs(os.path.dirname(local), exist_ok=True)
                    fs, path = url_to_fs(url)
                    fs.get_file(path, local)
                    paths.append(local)
            self.inputs[pin] = paths
        self.outputs: dict[str, str] = {}
        for pin in ctx.module.outputs:
            folder = os.path.join(tmp, "out", pin.name)
            os.makedirs(folder, exist_ok=True)
            if pin.kind == "single":
                name = _render_name(pin, ctx) if pin.file_name else pin.name
                self.outputs[pin.name] = os.path.join(folder, name)
            else:
                self.outputs[pin.name] = folder

    def values(self) -> dict[str, Any]:
        """pin -> path (single) or list of paths / folder (multiple), for substitution."""
        vals: dict[str, Any] = {}
        for pin in self.ctx.module.inputs:
            paths = self.inputs.get(pin.name, [])
            vals[pin.name] = paths if pin.kind == "multiple" else (paths[0] if paths else "")
        vals.update(self.outputs)
        return vals

    def collect(self) -> None:
        """Upload what the job wrote (under temporary names: committed later)."""
        for pin in self.ctx.module.outputs:
            where = self.outputs[pin.name]
            if pin.kind == "single":
                if os.path.isfile(where):
                    self.ctx._outputs.put(pin.name, where, os.path.basename(where))
                elif not pin.optional:
                    raise JobFailed("MissingOutput", f"The job wrote no file for output pin {pin.name!r}.")
            else:
                for name in sorted(os.listdir(where)):
                    path = os.path.join(where, name)
                    if not name.startswith(".") and os.path.isfile(path) and pin.accepts(name):
                        self.ctx._outputs.put(pin.name, path, name)


def _argv(ctx: JobContext, values: dict[str, Any]) -> list[str]:
    module = ctx.module
    subst = {**values}
    for k, v in ctx.params.items():
        subst[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    if len(module.inputs) == 1:
        subst["input"] = subst[module.inputs[0].name]
    if len(module.outputs) == 1:
        subst["output"] = subst[module.outputs[0].name]
    argv: list[str] = []
    for arg in module.command:
        m = PLACEHOLDER.fullmatch(arg)
        if m and m.group(1) and isinstance(subst[m.group(1)], list):
            argv.extend(subst[m.group(1)])  # a multiple pin alone in an argument: one per file
            continue

        def one(m: Any) -> str:
            if not m.group(1):
                return m.group(0)[0]
            v = subst[m.group(1)]
            if isinstance(v, list):
                raise ConfigError(f"Multiple pin {{{m.group(1)}}} must be a whole command argument.")
            return v

        argv.append(PLACEHOLDER.sub(one, arg))
    return argv


def _run_command(ctx: JobContext, timeout: float | None, tmp: str) -> tuple[int, str]:
    staging = _Staging(ctx, tmp)
    argv = _argv(ctx, staging.values())
    log = "$ " + " ".join(argv) + "\n"
    try:
        # its own session, so a timeout kills the command and everything it started
        proc = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise JobFailed("CommandNotFound", f"Command {argv[0]!r} is not installed.", log) from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        log += out.decode(errors="replace")
        raise JobFailed("Timeout", f"Command {argv[0]!r} ran past its timeout of {timeout} s.", log) from None
    log += out.decode(errors="replace")
    rc = proc.returncode
    if rc < 0:
        name = signal.Signals(-rc).name
        raise JobFailed(f"Signal:{name}", f"Command {argv[0]!r} was killed by {name}.", log, rc)
    if rc != 0:
        raise JobFailed(f"ExitCode:{rc}", f"Command {argv[0]!r} exited with status {rc}.", log, rc)
    staging.collect()
    return 0, log


def _run_notebook(ctx: JobContext, timeout: float | None, tmp: str, log_url: str) -> tuple[int, str]:
    import papermill  # only notebook jobs need it: imported here, not with the module

    staging = _Staging(ctx, tmp)
    src = os.path.join(tmp, "notebook.ipynb")
    dst = os.path.join(tmp, "executed.ipynb")
    with fsspec.open(ctx.module.notebook, "rb") as f, open(src, "wb") as g:
        shutil.copyfileobj(f, g)
    params = {**ctx.params, **staging.values(), "job_id": ctx.job_id}
    try:
        # the kernel starts in tmp (nbclient's resources path); papermill's cwd= would chdir this
        # whole process, and jobs run side by side in one worker's threads
        papermill.execute_notebook(src, dst, parameters=params, progress_bar=False, log_output=False,
                                   execution_timeout=timeout, resources={"metadata": {"path": tmp}},
                                   config=_kernel_sockets(tmp))
    except TimeoutError:  # nbclient's CellTimeoutError
        raise JobFailed("Timeout", f"Notebook {ctx.module.notebook} ran past its cell timeout of {timeout} s.",
                        traceback.format_exc()) from None
    except papermill.PapermillExecutionError as e:
        where = _source_cell(dst, e.cell_index)
        raise JobFailed(e.ename, f"{e.ename}: {e.evalue} (cell {where} of the notebook, In [{e.exec_count}]).",
                        "".join(e.traceback)) from None
    finally:
        if os.path.isfile(dst):  # the executed notebook is the job's log, failed or not
            fs, path = url_to_fs(log_url)
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            fs.put_file(dst, path)
    staging.collect()
    return 0, f"notebook {ctx.module.notebook} executed; output notebook at {log_url}\n"


def _kernel_sockets(tmp: str) -> Any:
    """The kernel of a notebook job listens on Unix sockets in the job's own folder (0700).

    On TCP, jupyter_client picks free ports and frees them again before the kernel binds them,
    so two jobs starting at once can be given one port (a kernel then dies at start, or a client
    waits on another job's kernel: seen in CI); and a port on localhost is reachable by every
    account on the node. Sockets in the job's folder are neither.
    """
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(tmp, "kernel")}})


def _source_cell(executed: str, index: int) -> int:
    """The 1-based position in the module's own notebook of cell ``index`` (0-based) of the
    executed one, which has papermill's injected-parameters cell in addition."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells[:index]
    except (OSError, ValueError):
        return index + 1
    return index + 1 - sum("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells)


def run_job(module: ModuleSpec | dict, inputs: Any, output: str, params: dict | None = None, *,
            job_id: str | None = None, log_dir: str | None = None,
            timeout: float | None = None) -> JobResult:
    """Run one job of ``module`` (see the module docstring); never raises for a failed job.

    ``inputs``: ``{pin: url or [urls]}`` (or the URL(s) of a module's only input pin);
    ``output``: the folder URL for the outputs; ``params``: checked against the module's
    parameter types, defaults filled in; ``job_id`` names temporary files and the log.
    """
    job_id = job_id or uuid.uuid4().hex[:12]
    result = JobResult(job_id)
    outputs = None
    tmp = None
    try:
        module = load_module(module)
        ins = _normalize_inputs(module, inputs)
        resolved = module.resolve_params(params)
        outputs = _Outputs(output, job_id)
        ctx = JobContext(module, ins, output.rstrip("/"), resolved, job_id, outputs)
        _check_inputs_exist(ins)
        if module.runs_as == "callable":
            try:
                result.exit_code = _run_callable(ctx)
            finally:
                result.log = ctx.log_text
        else:
            tmp = tempfile.mkdtemp(prefix=f"skerry-job-{job_id}-")
            if module.runs_as == "command":
                result.exit_code, result.log = _run_command(ctx, timeout, tmp)
            else:
                log_url = _join(log_dir or _join(output, DEFAULT_LOG_DIR), f"{job_id}.ipynb")
                result.log_location = log_url
                result.exit_code, result.log = _run_notebook(ctx, timeout, tmp, log_url)
        result.outputs = outputs.commit()
    except (Exception, SystemExit) as e:  # every failure of the job becomes its result
        if outputs is not None:
            outputs.discard()
        result.outputs = []
        result.error_class = _error_class(e)
        result.error = _sentence(e)
        result.exit_code = getattr(e, "exit_code", None) or 1
        tb = getattr(e, "log", "") if isinstance(e, JobFailed) else ""
        if not isinstance(e, JobFailed | ConfigError):
            tb = "".join(traceback.format_exception(e))
        result.log = _tail(result.log + tb)
        if result.log_location and not _exists(result.log_location):  # failed before papermill ran
            result.log_location = None
    except BaseException:  # interrupted (Ctrl-C): no output is left under its final name
        if outputs is not None:
            outputs.discard()
        raise
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    result.log = _tail(result.log)
    return result
