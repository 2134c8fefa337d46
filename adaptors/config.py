"""The adaptor configuration handed to a running micro-infrastructure.

One JSON file, named by ``$SKERRY_ADAPTORS``, mode 0600 (refused otherwise)::

    {"adaptors": [<adaptor spec>, ...],
     "credentials": {"<name>": {"private_key": "...", "password": "...", "key": "...", ...}}}

The hub writes it when it starts the server; secrets reach the processes through
this file only, never through arguments or the environment.
"""

import functools
import json
import os
import stat

from skerry.config import ADAPTORS
from skerry.errors import ConfigError
from skerry.localfiles import write_private

from .registry import Adaptors, make_filesystem
from .specs import load_specs
from .types import adaptor_type



def private(st: os.stat_result) -> bool:
    """Whether a file's mode keeps it to this process's user: nothing for others, nothing
    written by the group; read by the group only where the group is this process's own (a
    Kubernetes Secret's files are root's, of the pod's group, mode 0440)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o027:
        return False
    return not mode & 0o040 or st.st_gid == os.getgid()


def read_config(path: str) -> dict:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"adaptor configuration {path} does not exist") from None
    if not private(st):
        raise ConfigError(f"adaptor configuration {path} holds secrets: it must be mode 0600 "
                          "(or 0440 in the reader's own group)")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ConfigError(f"adaptor configuration {path} is not valid JSON: {e}") from None


def config_text(adaptors: list[dict], credentials: dict | None = None) -> str:
    """The configuration as the file holds it (the specs validated first); ConfigError if not valid."""
    load_specs(adaptors)
    return json.dumps({"adaptors": adaptors, "credentials": credentials or {}})


def write_config(path: str, adaptors: list[dict], credentials: dict | None = None) -> None:
    """Write the configuration atomically with mode 0600 (validating the specs first)."""
    write_private(path, config_text(adaptors, credentials))


def build_federation(config: dict):
    """(Adaptors, read-only names, names needing parents made) from a configuration:
    the arguments of ``SkerryFileSystem``.

    Specs and credential references are checked here; each filesystem is made (and
    connects) on first use. A backend that is not installed fails its own adaptor only,
    when used (a ``ConfigError`` naming the package to install): the others keep working.
    """
    specs = load_specs(config.get("adaptors", []))
    credentials = config.get("credentials", {})
    factories, kinds, read_only, make_parents = {}, {}, set(), set()
    for spec in specs:
        if spec.credentials and spec.credentials not in credentials:
            raise ConfigError(f"adaptor {spec.name!r} needs credentials {spec.credentials!r}, which are not set")
        factories[spec.name] = functools.partial(make_filesystem, spec, credentials.get(spec.credentials))
        kinds[spec.name] = spec.type
        if spec.read_only:
            read_only.add(spec.name)
        if adaptor_type(spec.type).needs_parents:
            make_parents.add(spec.name)
    return Adaptors(factories, kinds), read_only, make_parents


def load_federation():
    path = ADAPTORS.get()
    if not path:
        raise ConfigError(f"no adaptors configured: ${ADAPTORS.name} is not set (it is inside a micro-infrastructure)")
    return build_federation(read_config(path))
