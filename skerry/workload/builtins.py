"""Built-in modules for tests, demos and benchmarks: ``noop``, ``sleep``, ``md5``, ``fail``, ``gpumatmul``.

All five are callable modules (run by ``skerry.workload.executors``); ``BUILTINS`` holds
their specs and ``builtin_registry()`` a registry with them.

- ``noop``: does nothing (optional input ``input``, no output): the cheapest job;
- ``sleep``: waits ``seconds`` (float, default 0.1);
- ``md5``: writes the checksum of its input file into ``<name>.md5`` on output pin
  ``checksum``, in ``md5sum`` format (``<hex>  <name>``);
- ``fail``: raises the exception class named by ``error`` (a Python built-in exception
  such as ``ValueError``, else a new class of that name) with ``message``;
- ``gpumatmul`` (``resources.gpu`` 1: it runs in the ``gpu`` pool): multiplies two random
  ``size`` x ``size`` float32 matrices ``repeat`` times on the GPU its worker sees, with
  PyTorch or else CuPy, and writes what it saw into ``<name>.gpu.txt`` on output pin
  ``info``: ``visible=<CUDA_VISIBLE_DEVICES> devices=<how many it sees> name=<the GPU's>
  library=<torch|cupy>``; without either library, or without a GPU, it fails saying so.
"""

from __future__ import annotations

import builtins as _py
import hashlib
import time

from .. import config
from .executors import JobContext
from .modules import ModuleRegistry, ModuleSpec, load_module

__all__ = ["BUILTINS", "builtin_registry", "noop", "sleep", "md5", "fail", "gpumatmul"]


def noop(job: JobContext) -> None:
    """Nothing at all."""


def sleep(job: JobContext) -> None:
    time.sleep(job.params["seconds"])


def md5(job: JobContext) -> None:
    url = job.input("input")
    h = hashlib.md5()
    with job.open_input("input") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    name = url.rstrip("/").rsplit("/", 1)[-1]
    with job.open_output("checksum") as out:
        out.write(f"{h.hexdigest()}  {name}\n".encode())
    job.log(f"md5 {h.hexdigest()} {url}")


def fail(job: JobContext) -> None:
    name = job.params["error"]
    cls = getattr(_py, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = type(name, (Exception,), {})  # a made-up class: its name is the error class
    raise cls(job.params["message"])


def gpumatmul(job: JobContext) -> None:
    n, repeat = job.params["size"], job.params["repeat"]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        if not torch.cuda.is_available():
            raise RuntimeError("gpumatmul: PyTorch sees no CUDA device on this worker")
        a, b = torch.rand(n, n, device="cuda"), torch.rand(n, n, device="cuda")
        for _ in range(repeat):
            a @ b
        torch.cuda.synchronize()
        seen, name, library = torch.cuda.device_count(), torch.cuda.get_device_name(0), "torch"
    else:
        try:
            import cupy
        except ImportError:
            raise RuntimeError("gpumatmul needs PyTorch or CuPy built for CUDA on the GPU workers") from None
        a, b = cupy.random.rand(n, n, dtype=cupy.float32), cupy.random.rand(n, n, dtype=cupy.float32)
        for _ in range(repeat):
            a @ b
        cupy.cuda.Device().synchronize()
        seen = cupy.cuda.runtime.getDeviceCount()
        name, library = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cupy"
    visible = config.VISIBLE_GPUS.get() or ""
    with job.open_output("info") as out:
        out.write(f"visible={visible} devices={seen} name={name} library={library}\n".encode())


_HERE = __name__
_OPTIONAL_IN = [{"name": "input", "kind": "single", "type": "any", "optional": True}]

BUILTINS: dict[str, ModuleSpec] = {
    spec.name: spec
    for spec in map(
        load_module,
        [
            {"name": "noop", "description": "Does nothing.", "inputs": _OPTIONAL_IN,
             "callable": f"{_HERE}:noop"},
            {"name": "sleep", "description": "Waits a number of seconds.", "inputs": _OPTIONAL_IN,
             "parameters": {"seconds": {"type": "float", "default": 0.1}},
             "callable": f"{_HERE}:sleep"},
            {"name": "md5", "description": "Checksum of the input file into <name>.md5.",
             "inputs": [{"name": "input", "kind": "single", "type": "file"}],
             "outputs": [{"name": "checksum", "kind": "single", "type": "md5",
                          "file_name": "{name}.md5"}],
             "callable": f"{_HERE}:md5"},
            {"name": "fail", "description": "Raises the error class it is told to.",
             "inputs": _OPTIONAL_IN,
             "parameters": {"error": {"type": "str", "default": "RuntimeError"},
                            "message": {"type": "str", "default": "failed on purpose"}},
             "callable": f"{_HERE}:fail"},
            {"name": "gpumatmul", "description": "Matrix products on its GPU; what it saw into <name>.gpu.txt.",
             "inputs": [{"name": "input", "kind": "single", "type": "any"}],
             "outputs": [{"name": "info", "kind": "single", "type": "text", "file_name": "{name}.gpu.txt"}],
             "parameters": {"size": {"type": "int", "default": 4096}, "repeat": {"type": "int", "default": 10}},
             "resources": {"gpu": 1},
             "callable": f"{_HERE}:gpumatmul"},
        ],
    )
}


def builtin_registry() -> ModuleRegistry:
    """A fresh registry holding the built-in modules (add your own to it)."""
    return ModuleRegistry(list(BUILTINS.values()))
