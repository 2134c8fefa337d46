"""Find HAProxy, the platform's proxy wherever it is installed (Debian's ``haproxy``).

It moves a large response from the server to the client in the kernel (``splice``), so a
GiB through the hub costs the proxy almost no CPU: 1.5-1.8 GB/s on these 2 cores where
Traefik carried 0.6-0.9 and the server alone 1.4-1.7 (bench/webdav). No Python package
carries it, so without it ``skerry up`` runs Traefik (which comes with skerry) and says so.
"""

import os
import re
import shutil
import subprocess

from . import config

MIN_VERSION = (2, 4)  # the runtime API's map commands and the set-dst action the routes use
# Debian installs it in /usr/sbin, which an admin's own PATH may leave out
SEARCH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/local/sbin"])


def find_haproxy() -> str | None:
    """The path of an HAProxy of at least ``MIN_VERSION``, or None."""
    program = shutil.which("haproxy", path=SEARCH)
    if not program:
        return None
    try:
        out = subprocess.run([program, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"version (\d+)\.(\d+)", out)
    return program if found and tuple(map(int, found.groups())) >= MIN_VERSION else None


def chosen_proxy() -> str:
    """``$SKERRY_PROXY`` where set, else HAProxy where installed, else Traefik."""
    return config.PROXY.get() or ("haproxy" if find_haproxy() else "traefik")
