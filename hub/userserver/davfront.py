"""The WebDAV front: nginx answering a user's plain file transfers, the endpoint everything else.

A small request costs the endpoint's Python 0.6-0.8 ms of CPU where nginx needs a tenth of
that (bench/HISTORY.md): on the data path through the hub, 10 KB files ran at 0.6-0.7 of
``rclone serve webdav``. Where ``SKERRY_DAV_FRONT`` asks for it (``auto``, the default:
wherever nginx is installed with its Lua module, ``libnginx-mod-http-lua``), the endpoint
process starts nginx on the endpoint's port, as the same user, and serves the WebDAV app
itself on a port of its own on 127.0.0.1 behind it (``hub.userserver.webdav``).

nginx answers a request itself only when it is, in every respect, what the endpoint's
``fastfiles`` answers (``davfront.lua`` decides, per request):

- GET or HEAD of a regular file, or PUT of a regular file or a new name in an existing
  folder (a writable adaptor), on a local adaptor, inside the adaptor's folder (its folder's
  links resolved), readable (GET) or its folder writable (PUT);
- with an ``Authorization`` header the endpoint admits: asked of the endpoint itself (a
  HEAD of its root with that header); its yes for a hub token kept ``CACHE_SECONDS`` as the
  endpoint keeps it (a revoked token works at most that long either way), for a JWT never
  (the endpoint checks a JWT's expiry and key at every request);
- no conditional header, ``Range``, ``Content-Encoding``, ``Content-Range``,
  ``X-OC-Mtime``, query string; for PUT a ``Content-Length`` and no ``Date`` (nginx would
  set the file's time from it); no ``.``/``..`` segment, encoded slash, dot or backslash,
  no temporary name (``atomic.is_hidden``); a name the MIME guess reads as the endpoint's
  alone (a leading dot, a colon, a compression suffix) goes to the endpoint too;
- no lock held anywhere in the endpoint (``LOCK_FLAG``: the endpoint's ``LockStore``
  keeps a file there while any lock exists; a PUT checks again once its body is whole).

Its answers carry the endpoint's ``ETag`` (size and mtime in microseconds, computed from the
same ``stat`` double) and ``Content-Type``; a PUT is written to a temporary file and renamed
into place (nothing half-written), with the mode the endpoint's umask gives, 201 or 204, and
its write is told on the write feed (``writefeed``) as the endpoint tells its own, and to the
endpoint itself (``heard_writes``), whose listings then show it as they show its own writes.
Everything else, denials included, is proxied to the endpoint unchanged.

Not answered by nginx (the endpoint's, as before): folders, listings, locks, COPY/MOVE,
remote adaptors. Known difference: a LOCK taken while a large PUT's body is arriving does
not stop that PUT (the endpoint would have held the LOCK until the PUT ended).

Its life, as the endpoint process runs it: ``wanted_nginx()`` (what ``SKERRY_DAV_FRONT``
asks), ``private_folder(port)``, then ``run(...)`` in a thread of its own, which starts nginx
once the app listens and stops the endpoint when nginx ends.
"""

import logging
import mimetypes
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from wsgidav import util
from wsgidav.default_conf import DEFAULT_CONFIG

from skerry import config
from skerry.errors import SetupError
from skerry.hubtokens import CACHE_SECONDS
from skerry.process import die_with_parent

__all__ = ["LuaNginx", "find_nginx", "wanted_nginx", "private_folder", "run", "LocalAdaptor", "local_adaptors",
           "render", "start", "listening", "heard_writes", "LOCK_FLAG"]

log = logging.getLogger("skerry.dav")

MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")  # libnginx-mod-http-lua and the kit it needs
SETUP = "front-settings.lua"  # in the front's folder: the settings davfront.lua reads at nginx's start
LOCK_FLAG = "locks-held"  # in the front's folder: present while the endpoint holds any lock
WRITES_LOST = "writes-lost"  # in the front's folder: made when the endpoint's pipe had no room for a write
START_TIMEOUT = 10.0  # seconds nginx gets to listen


class LuaNginx:
    """An nginx binary and the folder of its Lua module."""

    def __init__(self, binary: str, modules: str):
        self.binary, self.modules = binary, modules


def find_nginx(search=("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")) -> LuaNginx | None:
    """The installed nginx with its Lua module, or None; None too on any machine but x86-64
    Linux, the one whose ``struct stat`` davfront.lua reads (an ETag from another layout's
    bytes would be wrong, silently: not tried elsewhere)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    for binary in (shutil.which("nginx"), *search):
        if not binary or not os.access(binary, os.X_OK):
            continue
        for modules in ("/usr/lib/nginx/modules", str(Path(binary).resolve().parent.parent / "modules")):
            if all(os.path.exists(os.path.join(modules, m)) for m in MODULES):
                return LuaNginx(binary, modules)
    return None


class LocalAdaptor:
    """A local adaptor as the front serves it: its name, folder (and that folder's real path), writable?"""

    def __init__(self, name: str, root: str, writable: bool):
        self.name, self.root, self.writable = name, root.rstrip("/") or "/", writable
        self.real = os.path.realpath(self.root)


def local_adaptors() -> list[LocalAdaptor]:
    """The local adaptors of the micro-infrastructure's configuration (``$SKERRY_ADAPTORS``),
    read from their specs: no filesystem is made (an fsspec one would start its IO thread in a
    process about to fork)."""
    from skerry.adaptors.config import load_specs, read_config
    from skerry.adaptors.types import adaptor_type

    found = []
    for spec in load_specs(read_config(config.ADAPTORS.require()).get("adaptors", [])):
        kind = adaptor_type(spec.type)
        if kind.local and "/" not in spec.name:
            root = kind.filesystem(spec, {})[1]  # the adaptor type's own rule for its folder
            found.append(LocalAdaptor(spec.name, root, not spec.read_only))
    return found


def content_types() -> dict:
    """The endpoint's MIME guess (wsgidav's, over ``mimetypes``, with wsgidav's default
    charset for text) as tables davfront.lua reads: ``exact`` {extension: type}, ``folded``
    {lower-case extension: type} (the guess's second look), ``default``, and ``special``:
    lower-case extensions whose type the guess reads from more of the name (compression and
    alias suffixes: such names go to the endpoint)."""
    mimetypes.init()
    options = {"default_charset": DEFAULT_CONFIG.get("default_charset")}  # the endpoint's app keeps wsgidav's

    def guess(ext: str, strict_only: bool = False) -> str | None:
        if strict_only and not mimetypes.guess_type("a" + ext)[0]:
            return None
        return util.guess_mime_type("a" + ext, options)

    exts = {*mimetypes.types_map, *util._MIME_TYPES}
    folded = {ext.lower(): guess(ext.lower(), strict_only=True) for ext in mimetypes.types_map}
    return {"exact": {ext: guess(ext) for ext in exts}, "folded": {k: v for k, v in folded.items() if v},
            "default": guess(""), "special": sorted({e.lower() for e in (*mimetypes.encodings_map,
                                                                          *mimetypes.suffix_map)})}


def _dav_access(umask: int) -> str | None:
    """nginx's ``dav_access`` for files made ``0o666 & ~umask``, or None where it cannot say it."""
    mode = 0o666 & ~umask
    words = []
    for who, shift in (("user", 6), ("group", 3), ("all", 0)):
        bits = (mode >> shift) & 0o6
        if bits == 0o2:
            return None  # write without read: nginx has no word for it
        if bits:
            words.append(f"{who}:{'rw' if bits == 0o6 else 'r'}")
    return " ".join(words) or None


def _q(text: str) -> str:
    """A string as an nginx configuration token (double-quoted)."""
    if any(c in text for c in '"\\\n$') :
        raise SetupError(f"cannot hand the path {text!r} to nginx: it holds a quote, backslash, newline or '$'")
    return f'"{text}"'


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._-+/")


def _lua(value) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans, None) as a Lua expression."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # any byte but a plain one escaped by number: no quoting rule of Lua's to get wrong
        return '"' + "".join(chr(b) if chr(b) in _PLAIN else f"\\{b:03d}" for b in value.encode()) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    return "{" + ", ".join(_lua(v) for v in value) + "}"


def render(*, nginx: LuaNginx, folder: str, ip: str, port: int, upstream_port: int, mount: str,
           adaptors: list[LocalAdaptor], feed: int | None, heard: int, umask: int,
           backlog: int = 1024) -> tuple[str, str]:
    """(nginx's configuration, the Lua rules' settings) for one endpoint (see the module's rules):
    ``start`` writes them in ``folder`` as ``nginx.conf`` and ``SETUP``."""
    mount = mount.rstrip("/")
    access = _dav_access(umask)
    setup = {"mount": mount, "flag": os.path.join(folder, LOCK_FLAG), "feed": feed, "heard": heard,
             "lost": os.path.join(folder, WRITES_LOST), "cache_seconds": CACHE_SECONDS,
             "types": content_types(),
             "adaptors": {a.name: {"root": a.root, "real": a.real, "writable": a.writable and access is not None}
                          for a in adaptors}}
    listen = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    proxy = """proxy_pass http://endpoint;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_pass_header Server;
            proxy_pass_header Date;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;"""
    locations = []
    for a in adaptors:
        locations.append(f"""
        location ^~ {_q(f"{mount}/{a.name}/")} {{
            alias {_q(a.root.rstrip("/") + "/")};
            access_by_lua_block {{ front.decide({_lua(a.name)}) }}
            header_filter_by_lua_block {{ front.headers() }}
            log_by_lua_block {{ front.tell() }}
            etag off;
            dav_methods PUT;
            {f"dav_access {access};" if access else ""}
            client_body_in_file_only clean;
        }}""")
    temp = os.path.join(folder, "temp")
    conf = f"""# the WebDAV front of one endpoint: written by skerry.hub.userserver.davfront, read once
load_module {_q(os.path.join(nginx.modules, MODULES[0]))};
load_module {_q(os.path.join(nginx.modules, MODULES[1]))};
daemon off;
master_process off;
worker_processes 1;
pid {_q(os.path.join(folder, "nginx.pid"))};
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    client_max_body_size 0;
    client_body_timeout 300s;
    send_timeout 1h;
    keepalive_timeout 90s;
    keepalive_requests 100000;
    client_body_temp_path {_q(temp)};
    proxy_temp_path {_q(temp)};
    fastcgi_temp_path {_q(temp)};
    uwsgi_temp_path {_q(temp)};
    scgi_temp_path {_q(temp)};
    default_type application/octet-stream;
    sendfile on;
    lua_package_path {_q(str(Path(__file__).parent) + "/?.lua;;")};
    init_by_lua_block {{
        front = require("davfront")
        front.setup(dofile({_q(os.path.join(folder, SETUP))}))
    }}
    upstream endpoint {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {listen} backlog={backlog};
        location / {{
            {proxy}
        }}
        location @endpoint {{
            {proxy}
        }}
        location = /_skerry_token_check {{
            internal;
            proxy_pass http://endpoint{mount}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_method HEAD;
        }}{"".join(locations)}
    }}
}}
"""
    return conf, f"-- the WebDAV front's settings (davfront.lua)\nreturn {_lua(setup)}\n"


def start(nginx: LuaNginx, folder: str, rendered: tuple[str, str], ip: str, port: int,
          fds: tuple[int, ...]) -> subprocess.Popen:
    """nginx running ``render``'s files (written in ``folder``), listening on ``ip:port``, with
    ``fds`` (the write feed's and ``heard_writes``' pipes); it dies with the thread that starts it."""
    os.makedirs(os.path.join(folder, "temp"), mode=0o700, exist_ok=True)
    path = os.path.join(folder, "nginx.conf")
    for name, text in (("nginx.conf", rendered[0]), (SETUP, rendered[1])):
        with open(os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
    process = subprocess.Popen([nginx.binary, "-q", "-p", folder, "-c", path, "-e", "stderr"],
                               stdin=subprocess.DEVNULL, pass_fds=fds,
                               preexec_fn=die_with_parent)
    if listening(ip, port, START_TIMEOUT, while_=lambda: process.poll() is None):
        return process
    if process.poll() is not None:
        raise SetupError(f"the WebDAV front (nginx) exited at its start ({process.returncode}); its errors "
                         f"are above")
    process.send_signal(signal.SIGKILL)
    raise SetupError(f"the WebDAV front (nginx) did not listen on {ip}:{port} within {START_TIMEOUT:g} s")


def listening(ip: str, port: int, timeout: float, while_=lambda: True) -> bool:
    """Whether ``ip:port`` accepts a connection within ``timeout`` s, asked every 20 ms
    while ``while_()`` holds (False at once when it stops holding)."""
    deadline = time.monotonic() + timeout
    while while_():
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
    return False


def wanted_nginx() -> LuaNginx | None:
    """The front's nginx, as ``$SKERRY_DAV_FRONT`` asks: 'auto' takes it where it is installed;
    'nginx' demands it (a SetupError where none is: a platform set up for it must not run
    without it, unseen); 'off' never looks."""
    wanted = config.DAV_FRONT.get()
    nginx = find_nginx() if wanted != "off" else None
    if nginx is None and wanted == "nginx":
        raise SetupError(f"${config.DAV_FRONT.name}=nginx, but no nginx with its Lua module is installed "
                         "(Debian: apt-get install nginx-light libnginx-mod-http-lua), or this is not an "
                         "x86-64 Linux machine, the one the front reads file metadata on")
    return nginx


def private_folder(port: int) -> str:
    """The front's own folder (its configuration, temporary uploads, lock flag), empty and
    private: in the user's cache, on the home's file system, so that an upload is renamed
    into place rather than copied; else in the system's temporary folder."""
    home_cache = os.path.join(os.path.expanduser("~"), ".cache", "skerry", f"dav-front-{port}")
    try:
        shutil.rmtree(home_cache, ignore_errors=True)  # a front killed before it could tidy up
        os.makedirs(home_cache, mode=0o700)
        return home_cache
    except OSError:
        return tempfile.mkdtemp(prefix="skerry-dav-front-")


def run(nginx: LuaNginx, folder: str, ip: str, port: int, app_port: int, heard: int, *, backlog: int,
        app_timeout: float) -> None:
    """Start the front once the endpoint's app answers on ``app_port`` (within ``app_timeout``
    s), and stop the endpoint (SIGTERM to this process) when nginx ends or cannot start. Runs
    in a thread that lives as long as the process: nginx dies with the thread that started it."""
    if not listening("127.0.0.1", app_port, app_timeout):  # the worker loads the app, then listens
        log.error("the WebDAV endpoint did not listen on 127.0.0.1:%d; stopping", app_port)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    feed = config.WRITES_OUT.get()
    try:
        rendered = render(nginx=nginx, folder=folder, ip=ip, port=port, upstream_port=app_port,
                          mount=config.DAV_PREFIX.require(), adaptors=local_adaptors(), feed=feed, heard=heard,
                          umask=umask(), backlog=backlog)
        process = start(nginx, folder, rendered, ip, port, (heard,) if feed is None else (heard, feed))
    except Exception:
        log.exception("the WebDAV front did not start; stopping the endpoint")
        os.kill(os.getpid(), signal.SIGTERM)
        return
    code = process.wait()
    log.error("the WebDAV front (nginx) exited (%s); stopping the endpoint", code)
    os.kill(os.getpid(), signal.SIGTERM)


def umask() -> int:
    """This process's umask, read without setting it (other threads may be making files)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):  # no /proc, or a kernel before 4.7
        mask = os.umask(0o077)
        os.umask(mask)
        return mask


def heard_writes(app, fd: int, folder: str, provider, adaptors: list[str]):
    """WSGI middleware: before each request, the endpoint forgets the listings the front's
    writes changed, as it forgets those its own writes change (``provider.invalidate``).

    The front tells each write on the pipe ``fd`` (a federation path a line) before it
    answers the request, so whatever a client asks next finds it there: each request first
    reads what is waiting (non-blocking). Where the pipe had no room, the front made the flag
    ``WRITES_LOST`` in ``folder``: every listing of ``adaptors`` is forgotten then.
    """
    os.set_blocking(fd, False)
    lost = os.path.join(folder, WRITES_LOST)
    waiting = b""
    lock = threading.Lock()

    def heard(environ, start_response):
        nonlocal waiting
        with lock:  # a line is whole in one read (under PIPE_BUF), but reads of two threads interleave
            try:
                while True:
                    waiting += os.read(fd, 65536)
            except BlockingIOError:
                pass
            lines, _, waiting = waiting.rpartition(b"\n")
            if os.path.lexists(lost):
                os.unlink(lost)
                provider.invalidate(*adaptors)
            elif lines:
                provider.invalidate(*{line.decode("utf-8", "replace") for line in lines.split(b"\n")})
        return app(environ, start_response)

    return heard
