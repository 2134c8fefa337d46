"""The per-user data API of the micro-infrastructure: ``<base_url>skerry/api/v1/``.

Endpoints (JSON; authenticated like every Jupyter server API, so under JupyterHub the
user's hub token works as ``Authorization: token ...``):

- ``GET adaptors``: ``{"adaptors": [{"name", "type", "read_only"}]}`` (never secrets);
- ``GET list?adaptor=A&path=P``: the folder's entries (name, path, type, size,
  modified), from one ``ls(detail=True)``;
- ``GET find/<filename>``: every location of that file name, from the find index
  (``skerry.adaptors.query``); ``complete: false`` while the first scan runs;
- ``POST copy``: a list of ``{from, to, webhook?}``; validated whole, then 202 with
  ``{"ids": [...]}`` (``skerry.adaptors.staging``);
- ``GET copy/<id>``: ``{id, state, bytes, total, error, verified, ...}``.
- ``GET copy``: ``{"copies": [...]}``, each as ``GET copy/<id>`` answers, oldest first: every
  copy kept (past ``KEEP_COPIES``, the oldest finished ones are forgotten).

Rules: every refusal is ``{"error": CODE, "message": sentence}`` with a 4xx status (5xx
only for faults that are not the caller's, without traceback text); storage errors take
their status and code from ``skerry.errors.storage_error``, as WebDAV and the contents
manager do; backend calls run in threads, never on
the server's event loop; the adaptors come from ``$SKERRY_ADAPTORS``
(``skerry.adaptors.config``): without it every endpoint answers 503 ``no_adaptors``.
"""

import asyncio
import json
import logging
import threading

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from skerry.config import ADAPTORS, WRITES_IN
from skerry.adaptors.query import FindIndex, modified_iso
from skerry.adaptors.staging import CopyRequestError, Stager
from skerry.adaptors.webhooks import WebhookSender
from skerry.adaptors.writefeed import follow_writes
from skerry.errors import ApiError, InternalError, NotAFolder, SkerryError, storage_error

PREFIX = "skerry/api/v1/"
SETTINGS_KEY = "skerry_dataapi"
AUTH_RESOURCE = "skerry"


class SkerryDataAPI(LoggingConfigurable):
    """The state behind the handlers: the federation, the find index, the stager, webhooks."""

    index_interval = Float(300.0, config=True, help="""Seconds between rescans of the find
        index (one recursive listing per adaptor; our own copies update it at once).""")
    copy_workers = Integer(4, config=True, help="Copies running at the same time.")
    copy_retries = Integer(4, config=True, help="Further tries of a file after a transient error.")
    copy_backoff = Float(1.0, config=True, help="Seconds before the first retry of a copy; doubles each time.")
    webhook_max_delay = Float(30.0, config=True, help="Longest wait between two tries of a webhook.")
    webhook_give_up = Float(600.0, config=True, help="Seconds after which an undelivered webhook is dropped (logged).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fs = self.index = self.stager = self.webhooks = None
        self.types = {}
        self.error = None
        self.redact = lambda text: text
        try:
            self._load()
        except Exception as e:  # a broken configuration must not stop the Jupyter server
            self.error = str(e)
            self.log.error("skerry data API: no adaptors: %s", self.error)

    def _load(self):
        from skerry.adaptors.config import build_federation, read_config
        from skerry.adaptors.federation import SkerryFileSystem
        from skerry.errors import ConfigError

        path = ADAPTORS.get()
        if not path:
            raise ConfigError(f"${ADAPTORS.name} is not set: this server has no adaptor configuration")
        config = read_config(path)
        self.types = {a.get("name"): a.get("type") for a in config.get("adaptors", [])}
        secrets = sorted({v for entry in config.get("credentials", {}).values() if isinstance(entry, dict)
                          for v in entry.values() if isinstance(v, str) and len(v) >= 4}, key=len, reverse=True)

        def redact(text):
            for s in secrets:
                text = text.replace(s, "***")
            return text

        self.redact = redact

        self.fs = SkerryFileSystem(*build_federation(config))
        self.index = FindIndex(self.fs, interval=self.index_interval, redact=redact).start()
        feed = WRITES_IN.get()
        if feed is not None:  # what the WebDAV endpoint beside us writes (the launcher's pipe)
            follow_writes(feed, self.index)
        self.webhooks = WebhookSender(first_delay=1.0, max_delay=self.webhook_max_delay,
                                      give_up_after=self.webhook_give_up)

        self._stop_at_exit()
        self.stager = Stager(self.fs, workers=self.copy_workers, retries=self.copy_retries,
                             backoff=self.copy_backoff, on_finished=self._finished,
                             on_file=self.index.record, redact=redact)

    def _finished(self, copy):
        if copy.state == "done":
            self.log.info("copy %s done: %s bytes, verified %s", copy.id, copy.bytes, copy.verified)
        if copy.webhook:
            copy.webhook_delivery = "pending"

            def ended(outcome):
                copy.webhook_delivery = outcome

            self.webhooks.send(copy.webhook, {"id": copy.id, "state": copy.state, "bytes": copy.bytes,
                                              "error": copy.error}, outcome=ended)

    def _stop_at_exit(self):
        # runs before the interpreter joins worker threads: running copies stop at their
        # next block and clean up, instead of holding the server's exit
        register = getattr(threading, "_register_atexit", None)
        if register:
            register(self.stop)

    def stop(self):
        for part in (self.index, self.webhooks):
            if part:
                part.stop()
        if self.stager:
            self.stager.shutdown()


def _refusal(e: Exception) -> SkerryError:
    """What answers ``e``: our own refusals as they are, storage errors by ``storage_error``'s table."""
    return e if isinstance(e, (ApiError, NotAFolder)) else storage_error(e)


class _Handler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def api(self) -> "SkerryDataAPI":
        api = self.settings[SETTINGS_KEY]
        if api.error:
            raise ApiError(503, "no_adaptors", f"this server has no adaptors: {api.error}")
        return api

    def reply(self, body: dict, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    async def run(self, method, *args):
        try:
            await method(*args)
        except Exception as e:
            err = _refusal(e)
            message = self.settings[SETTINGS_KEY].redact(err.message)
            if isinstance(err, InternalError):
                self.log.exception("skerry data API %s %s failed", self.request.method, self.request.path)
            elif err.status >= 500:
                self.log.warning("skerry data API %s %s: %s", self.request.method, self.request.path, message)
            self.reply({"error": err.code, "message": message}, err.status)

    def write_error(self, status_code, **kwargs):
        # our JSON error shape, never traceback text
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self._reason.lower().replace(" ", "_"), "message": message}))


async def _thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class AdaptorsHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self):
        await self.run(self._get)

    async def _get(self):
        fs = self.api.fs
        self.reply({"adaptors": [{"name": n, "type": self.api.types.get(n), "read_only": n in fs.read_only}
                                 for n in sorted(fs.adaptors)]})


class ListHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self):
        await self.run(self._get)

    async def _get(self):
        fs = self.api.fs
        adaptor = self.get_query_argument("adaptor", "")
        path = self.get_query_argument("path", "").strip("/")
        if not adaptor:
            raise ApiError(400, "missing_parameter", "the 'adaptor' query parameter is required")
        if adaptor not in fs.adaptors:
            raise ApiError(404, "unknown_adaptor", f"no adaptor named {adaptor!r}")
        if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/") if path):
            raise ApiError(400, "bad_path", f"invalid path {path!r}: empty, '.' and '..' segments are not allowed")
        where = f"{adaptor}/{path}" if path else adaptor
        # fresh from the storage: files change behind our back (other users, HPC jobs)
        entries = await _thread(lambda: fs.ls(where, detail=True, refresh=True))
        if len(entries) == 1 and entries[0]["name"] == where and entries[0].get("type") != "directory":
            raise NotAFolder(f"{where} is a file, not a folder")
        self.reply({"adaptor": adaptor, "path": path, "entries": [
            {"name": e["name"].rsplit("/", 1)[-1], "path": e["name"], "type": e.get("type"),
             "size": e.get("size"), "modified": modified_iso(e)} for e in entries]})


class FindHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, filename):
        await self.run(self._get, filename)

    async def _get(self, filename):
        if filename in (".", "..") or "/" in filename:
            raise ApiError(400, "bad_name", f"{filename!r} is not a file name")
        self.reply(self.api.index.lookup(filename))


class CopyHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self):
        await self.run(self._get)

    async def _get(self):
        self.reply({"copies": self.api.stager.statuses()})

    @web.authenticated
    @authorized
    async def post(self):
        await self.run(self._post)

    async def _post(self):
        try:
            items = json.loads(self.request.body or b"")
        except ValueError:
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None
        try:
            ids = self.api.stager.submit(items)
        except CopyRequestError as e:
            raise ApiError.of(e) from None  # 400, the check's code
        self.reply({"ids": ids}, 202)


class CopyStatusHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, copy_id):
        await self.run(self._get, copy_id)

    async def _get(self, copy_id):
        status = self.api.stager.status(copy_id)
        if status is None:
            raise ApiError(404, "unknown_copy", f"no copy with id {copy_id!r}")
        self.reply(status)


def handlers(base_url: str) -> list:
    base = base_url.rstrip("/") + "/" + PREFIX
    return [
        (base + "adaptors", AdaptorsHandler),
        (base + "list", ListHandler),
        (base + "find/([^/]+)", FindHandler),
        (base + "copy", CopyHandler),
        (base + "copy/([^/]+)", CopyStatusHandler),
    ]


def setup(serverapp) -> "SkerryDataAPI":
    """Create the data API's state and add its routes to ``serverapp``."""
    api = SkerryDataAPI(parent=serverapp, log=serverapp.log)
    serverapp.web_app.settings[SETTINGS_KEY] = api
    serverapp.web_app.add_handlers(".*$", handlers(serverapp.base_url))
    # our modules log through the server's handlers
    ours = logging.getLogger("skerry")
    ours.setLevel(logging.INFO)
    ours.handlers = list(serverapp.log.handlers)
    ours.propagate = False
    return api
