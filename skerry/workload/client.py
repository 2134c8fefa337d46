"""A small client of the platform's workload REST API (``/services/skerry/api/v1/``).

    client = Client.connect(url=None, token_file=None)   # $SKERRY_URL, $SKERRY_TOKEN
    client.create_dataset("raw.run1")
    client.register_files("raw.run1", [{"uri": ..., "size": ..., "checksum": ...}])
    for f in client.files("raw.run1"): ...               # every page, in order
    client.run("checksums", "raw.run1")                  # the run's id

Rules:
- the URL comes from ``url``, else ``$SKERRY_URL``, else ``http://127.0.0.1:8000``;
- the token from ``token_file``, else ``$SKERRY_TOKEN``; never from an argument on the
  command line (every user can read a process's arguments);
- an answer that is not 2xx raises ``ApiRefused`` with the server's code and sentence;
  a platform that cannot be reached raises ``PlatformUnreachable``. Both are
  ``ClientError``, a ``SkerryError``::

    SkerryError
     └── ClientError            the API could not be used (no token, bad URL)
          ├── ApiRefused        the platform answered with an error (``status``, ``code``)
          └── PlatformUnreachable   nothing answered at the URL
"""

from pathlib import Path
from typing import Any
from collections.abc import Iterator
from urllib.parse import quote, urlparse

import httpx

from ..errors import ApiError, SkerryError
from .. import config

__all__ = ["Client", "ClientError", "ApiRefused", "PlatformUnreachable", "DEFAULT_URL", "API"]

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/services/skerry/api/v1"
TIMEOUT_S = 60


class ClientError(SkerryError):
    code = "client_error"


class ApiRefused(ApiError, ClientError):
    """The platform answered with an error: ``status`` (HTTP) and ``code`` are the server's."""


class PlatformUnreachable(ClientError):
    code = "unreachable"


def _token(token_file: str | None) -> str:
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as e:
            raise ClientError(f"cannot read the token file {token_file}: {e.strerror or e}") from None
        if not token:
            raise ClientError(f"the token file {token_file} is empty")
        return token
    token = config.TOKEN.get() or ""
    if not token:
        raise ClientError("no token: set SKERRY_TOKEN to a hub API token, or give --token-file FILE "
                          "(e.g. DATA_DIR/secrets/admin-api-token)")
    return token


def _name(name: str) -> str:
    return quote(name, safe="")


class Client:
    """The workload API of one platform, as the holder of one hub token."""

    def __init__(self, url: str, token: str, timeout: float = TIMEOUT_S):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ClientError(f"{url!r} is not a platform URL (like {DEFAULT_URL})")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + API, timeout=timeout,
                                  headers={"Authorization": f"token {token}"})

    @classmethod
    def connect(cls, url: str | None = None, token_file: str | None = None) -> "Client":
        """A client for ``url`` (or ``$SKERRY_URL``, or the default) with the token of the rules."""
        return cls(url or config.URL.get() or DEFAULT_URL, _token(token_file))

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        """The JSON answer of one call; ``ApiRefused``/``PlatformUnreachable`` otherwise."""
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise PlatformUnreachable(f"cannot reach the skerry platform at {self.url} "
                                      f"({type(e).__name__}: {e}); is it running?") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                code, message = body["error"], body["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"{self.url} answered {r.status_code} {r.reason_phrase}; is it skerry?"
            raise ApiRefused(r.status_code, code, message)
        try:
            return r.json()
        except ValueError:
            raise ApiRefused(r.status_code, "not_json", f"{self.url} did not answer JSON; is it skerry?") from None

    # ---- datasets ----

    def datasets(self) -> list[dict]:
        return self.request("GET", "/datasets")["datasets"]

    def dataset(self, name: str) -> dict:
        return self.request("GET", f"/datasets/{_name(name)}")

    def create_dataset(self, name: str, *, location: str | None = None, metadata: dict | None = None) -> dict:
        body: dict[str, Any] = {"name": name}
        if location is not None:
            body["location"] = location
        if metadata is not None:
            body["metadata"] = metadata
        return self.request("POST", "/datasets", json=body)

    def close_dataset(self, name: str) -> dict:
        return self.request("POST", f"/datasets/{_name(name)}/close")

    def register_files(self, name: str, files: list[dict]) -> int:
        """Register ``files`` in one call: all or none."""
        return self.request("POST", f"/datasets/{_name(name)}/files", json={"files": files})["registered"]

    def files(self, name: str, page: int = 1000) -> Iterator[dict]:
        """Every file of the dataset, page by page, in registration order."""
        after: int | None = 0
        while after is not None:
            answer = self.request("GET", f"/datasets/{_name(name)}/files", params={"after": after, "limit": page})
            yield from answer["files"]
            after = answer["next_after"]

    # ---- modules, workflows ----

    def modules(self) -> list[dict]:
        return self.request("GET", "/modules")["modules"]

    def workflows(self) -> list[dict]:
        return self.request("GET", "/workflows")["workflows"]

    def add_workflow(self, spec: dict) -> dict:
        return self.request("POST", "/workflows", json=spec)

    # ---- Dask ----

    def cluster(self, pool: str = "cpu") -> dict:
        """The caller's Dask cluster of ``pool``, started now if none runs (``POST
        /clusters/{pool}``): ``{"pool", "address", "tls"}``, ``tls`` the files a client
        passes to ``skerry.workload.clusters.security`` (None: a single-user platform's pool)."""
        return self.request("POST", f"/clusters/{_name(pool)}", timeout=180)

    # ---- runs, tasks, jobs ----

    def run(self, workflow: str, dataset: str, rank: float | None = None) -> int:
        """Start a run of ``workflow`` over ``dataset`` (its tasks at ``rank``); its id."""
        body = {"workflow": workflow, "dataset": dataset, **({"rank": rank} if rank is not None else {})}
        return self.request("POST", "/runs", json=body)["id"]

    def runs(self) -> list[dict]:
        return self.request("GET", "/runs")["runs"]

    def get_run(self, run_id: int, wait: float = 0) -> dict:
        """Run ``run_id`` with its tasks; with ``wait`` (seconds, at most 30), once it has
        ended or ``wait`` seconds have passed (the service watches it: no polling here)."""
        return self.request("GET", f"/runs/{int(run_id)}", params={"wait": wait} if wait else None)

    def task(self, task_id: int) -> dict:
        return self.request("GET", f"/tasks/{int(task_id)}")

    def set_rank(self, task_id: int, rank: float) -> dict:
        return self.request("POST", f"/tasks/{int(task_id)}/rank", json={"rank": rank})

    def cancel(self, task_id: int) -> dict:
        return self.request("POST", f"/tasks/{int(task_id)}/cancel")

    def jobs(self, task: int | None = None, state: str | None = None, *, after: int = 0,
             limit: int = 100) -> dict:
        """A page of jobs (of one task, in one state): ``{"jobs": [...], "next_after"}``;
        each job with its last attempt's ``log`` location and ``error``."""
        params = {"after": after, "limit": limit, **({"task": int(task)} if task is not None else {}),
                  **({"state": state} if state else {})}
        return self.request("GET", "/jobs", params=params)
