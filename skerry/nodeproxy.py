"""Find configurable-http-proxy (the npm one), installing it once into skerry's cache.

The npm proxy is used, not the Python port on PyPI: the port stalled on large
transfers (tens of KB/s on a 1 GiB GET), the npm one carries about 1 GB/s.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from . import config
from .errors import SetupError

PACKAGE = "configurable-http-proxy@^5"


def cache_dir() -> Path:
    return (config.CACHE_HOME.get() or Path.home() / ".cache") / "skerry" / "configurable-http-proxy"


def find_proxy(install: bool = True, log=print) -> str:
    """Path of the ``configurable-http-proxy`` program.

    Looks in ``$SKERRY_PROXY_COMMAND``, then skerry's cache, then ``$PATH``; if none
    has it and ``install`` is true, runs ``npm install`` into the cache (a few seconds).
    """
    explicit = config.PROXY_COMMAND.get()
    if explicit:
        if not shutil.which(explicit):
            raise SetupError(f"SKERRY_PROXY_COMMAND={explicit!r} is not an executable program")
        return shutil.which(explicit)
    cached = cache_dir() / "node_modules" / ".bin" / "configurable-http-proxy"
    if cached.exists():
        return str(cached)
    on_path = shutil.which("configurable-http-proxy")
    if on_path and _is_node_proxy(on_path):
        return on_path
    if not install:
        raise SetupError("configurable-http-proxy is not installed")
    npm = shutil.which("npm")
    if not npm:
        raise SetupError(
            "configurable-http-proxy is needed and npm was not found: install Node.js "
            "(Debian: apt-get install -y nodejs npm) or set SKERRY_PROXY_COMMAND"
        )
    log(f"skerry: installing {PACKAGE} into {cache_dir()} (once) ...")
    cache_dir().mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-fund", "--no-audit", "--prefix", str(cache_dir()), PACKAGE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0 or not cached.exists():
        sys.stderr.write(done.stdout)
        raise SetupError(f"npm install {PACKAGE} failed (exit {done.returncode})")
    return str(cached)


def _is_node_proxy(path: str) -> bool:
    # the Python port installs a program of the same name: skip it
    with open(path, "rb") as f:
        head = f.read(200)
    return b"python" not in head
