"""Find HAProxy, the platform's proxy wherever it is installed (Debian's ``haproxy``).

It moves a body from one socket to the other in the kernel (``splice``): in front of nginx
on these 2 cores, a 1 GiB GET through it ran at 0.9 of nginx alone where Traefik ran at
0.5, and 10 KB GETs cost it 0.07 ms of CPU each, Traefik 0.18 (bench/webdav). No Python
package carries it, so without it ``skerry up`` runs Traefik (which comes with skerry) and
says so.
"""

import os
import re
import shutil
import subprocess

from . import config

MIN_VERSION = (2, 4)  # the runtime API's map commands and the set-dst action the routes use
# Debian installs it in /usr/sbin, which an admin's own PATH may leave out
SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin"])


def find_haproxy() -> str | None:
    """The path of an HAProxy of at least ``MIN_VERSION``, or None."""
    program = shutil.which("haproxy") or shutil.which("haproxy", path=SBIN)
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
