"""Quotas per user and per group, and the server sessions they are checked against.

A quota, as stored and as the REST API shows it (every limit optional: absent = unlimited)::

    {"servers": 2, "cpu": 8, "memory": "32Gi", "gpus": 1, "queued_jobs": 500}

``servers`` is the number of servers running at once, ``cpu`` (cores), ``memory`` (bytes or
a size like ``"16Gi"``, stored as bytes) and ``gpus`` the sum of what those servers were
started with, ``queued_jobs`` the jobs not yet final plus those running runs are still
owed (the checks of run creation: :func:`check_queued_jobs`). A user's quota limits that
user; a group's quota limits the sum over its members.

Sessions: :meth:`QuotaStore.admit` is called by the spawner before it starts a server. In one
``BEGIN IMMEDIATE`` transaction it closes a session of the same (user, server) still open (a hub
that died without stopping it), checks every quota of the user and of each of their groups
against the sessions open now plus the new server, and records the new session as open: two
admits at once are serialised, so two cannot both pass a limit of 1. A refusal is
:class:`QuotaExceeded`, whose message names the quota, its limit and the use::

    alice may run at most 1 server at a time (quota of user alice); 1 is running.

A server with no CPU (or memory) limit cannot be counted against a CPU (memory) quota: it is
refused while such a quota applies. ``release`` closes the session (the server stopped, or
failed to start) with the CPU seconds it used, when the spawner measured them.

A session keeps the groups its user was in when admitted: a group's use is the sessions
admitted as its member. :meth:`QuotaStore.report` turns sessions into rows per user (or
group) and UTC day: ``server_hours`` (wall time of open servers), ``gpu_seconds`` (GPUs x
seconds) and ``cpu_seconds`` (what ``release`` was given, spread over the session's days in
proportion to its time on each; an open session's CPU is not known yet: 0). Job counts and
stored bytes are not the store's: :mod:`hub.stores.usage` measures them and passes them in.

Everything lives in ``DIR/usage.sqlite`` (SQLAlchemy ``create_all``, two tables of its own).
"""

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, String, Table, Text, delete, insert, select, update

from skerry.errors import ConfigError, Forbidden, NotFound

from skerry.hub.stores.profiles import Memory
from skerry.hub.stores.sqlitefile import SQLiteFile
from skerry import config

KINDS = ("user", "group")
LIMITS = ("servers", "cpu", "memory", "gpus", "queued_jobs")
MAX_DAYS = 366


class QuotaExceeded(Forbidden):
    """A spawn or a run refused by a quota; ``message`` names the quota, the limit and the use."""

    code = "quota_exceeded"


class QuotaError(ConfigError):
    """A malformed quota; ``message`` starts with the field (``cpu: ...``)."""

    code = "bad_quota"


class NoSuchQuota(NotFound, ConfigError):
    code = "no_such_quota"


class Quota(BaseModel):
    """The limits of one user or group; None (or absent) is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: int | None = Field(None, ge=0, strict=True, description="servers running at once")
    cpu: float | None = Field(None, ge=0, strict=True, description="CPU cores of the servers running at once")
    memory: Memory | None = Field(None, description="memory of the servers running at once")
    gpus: int | None = Field(None, ge=0, strict=True, description="GPUs of the servers running at once")
    queued_jobs: int | None = Field(None, ge=0, strict=True, description="jobs not yet final")


def validate_quota(data: Any) -> Quota:
    """A :class:`Quota` from a JSON object; :class:`QuotaError` naming the first bad field."""
    if not isinstance(data, dict):
        raise QuotaError(f"quota: must be an object with some of {', '.join(LIMITS)}.")
    try:
        return Quota.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "quota"
        if first["type"] == "extra_forbidden":
            raise QuotaError(f"{where}: not a quota field (fields: {', '.join(LIMITS)}).") from None
        message = first["msg"].removeprefix("Value error, ")
        raise QuotaError(f"{where}: {message} (got {first.get('input')!r}).") from None


def size(n: float) -> str:
    """``17179869184`` -> ``"16 GiB"``: sizes in messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{round(n, 2):g} {unit}"
        n /= 1024
    return f"{n:g}"  # not reached


def _plural(n: float, one: str, many: str) -> str:
    return one if n == 1 else many


# ---- the tables ----------------------------------------------------------------

metadata = MetaData()
quotas_table = Table(
    "quotas", metadata,
    Column("kind", String(8), primary_key=True),  # "user" or "group"
    Column("name", String(255), primary_key=True),
    Column("spec", Text, nullable=False),  # the validated quota as JSON (absent limits left out)
    Column("updated", String(32), nullable=False),
    Column("updated_by", String(255), nullable=False),
)
sessions_table = Table(
    "server_sessions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False, index=True),
    Column("server", String(255), nullable=False),  # "" = the default server
    Column("groups", Text, nullable=False),  # JSON list: the user's groups when admitted
    Column("profile", String(63)),
    Column("cpu", Float),  # cores (None: no limit)
    Column("memory", BigInteger),  # bytes (None: no limit)
    Column("gpus", Integer, nullable=False),
    Column("started", Float, nullable=False),  # seconds since the epoch
    Column("ended", Float, index=True),  # None while open
    Column("cpu_seconds", Float),  # measured at release, when known
)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _midnight(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


class QuotaStore(SQLiteFile):
    """Quotas and server sessions in one SQLite file (module docstring). ``clock`` gives the
    time in seconds since the epoch (tests pass their own)."""

    FILENAME = "usage.sqlite"
    METADATA = metadata

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.clock = clock
        super().__init__(path)

    # ---- quotas ----

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise QuotaError(f"kind: a quota is of a user or a group, not {kind!r}.")

    @staticmethod
    def _quota_json(row) -> dict:
        return {"kind": row.kind, "name": row.name, "quota": json.loads(row.spec), "updated": row.updated,
                "updated_by": row.updated_by}

    def set_quota(self, kind: str, name: str, data: Any, who: str) -> dict:
        """Validate and store (replace) the quota of user or group ``name``."""
        self._check_kind(kind)
        if not isinstance(name, str) or not 0 < len(name) <= 255:
            raise QuotaError(f"name: a {kind} name of 1 to 255 characters, not {name!r}.")
        spec = validate_quota(data).model_dump(mode="json", exclude_none=True)
        at = _iso(self.clock())
        with self._write() as c:
            c.execute(delete(quotas_table).where(quotas_table.c.kind == kind, quotas_table.c.name == name))
            c.execute(insert(quotas_table).values(kind=kind, name=name, spec=json.dumps(spec), updated=at,
                                                  updated_by=who))
        return self.get_quota(kind, name)

    def get_quota(self, kind: str, name: str) -> dict:
        self._check_kind(kind)
        with self._read() as c:
            row = c.execute(select(quotas_table).where(quotas_table.c.kind == kind,
                                                       quotas_table.c.name == name)).first()
        if row is None:
            raise NoSuchQuota(f"{kind.capitalize()} {name!r} has no quota: nothing limits it.")
        return self._quota_json(row)

    def delete_quota(self, kind: str, name: str) -> None:
        self._check_kind(kind)
        with self._write() as c:
            gone = c.execute(delete(quotas_table).where(quotas_table.c.kind == kind,
                                                        quotas_table.c.name == name)).rowcount
        if not gone:
            raise NoSuchQuota(f"{kind.capitalize()} {name!r} has no quota: nothing limits it.")

    def quotas(self) -> dict[str, list[dict]]:
        """``{"users": [...], "groups": [...]}``, each sorted by name."""
        with self._read() as c:
            rows = c.execute(select(quotas_table).order_by(quotas_table.c.kind, quotas_table.c.name)).all()
        return {"users": [self._quota_json(r) for r in rows if r.kind == "user"],
                "groups": [self._quota_json(r) for r in rows if r.kind == "group"]}

    def applying(self, user: str, groups: list[str] | set[str], c=None) -> list[tuple[str, str, dict]]:
        """The quotas that limit ``user``: ``(kind, name, limits)``, the user's first, then groups by name."""
        wanted = [("user", user)] + [("group", g) for g in sorted(set(groups))]
        if c is None:
            with self._read() as c:
                return self.applying(user, groups, c)
        rows = {(r.kind, r.name): json.loads(r.spec) for r in c.execute(
            select(quotas_table).where(quotas_table.c.name.in_([n for _, n in wanted])))}
        return [(k, n, rows[(k, n)]) for k, n in wanted if (k, n) in rows]

    # ---- sessions ----

    def admit(self, user: str, groups: list[str] | set[str], server: str, profile: str | None,
              wanted: dict) -> int:
        """Check the quotas of ``user`` and their ``groups`` and record the server as open, in one
        transaction (module docstring); the session's id. :class:`QuotaExceeded` if a limit would
        be passed (nothing recorded, but a stale session of the same server is still closed)."""
        groups = sorted(set(groups or []))
        cpu = wanted.get("cpu")
        memory = wanted.get("memory")
        gpus = int(wanted.get("gpus") or 0)
        now = self.clock()
        refusal = None
        with self._write() as c:
            c.execute(update(sessions_table).where(sessions_table.c.user == user, sessions_table.c.server == server,
                                                   sessions_table.c.ended.is_(None)).values(ended=now))
            limits = self.applying(user, groups, c)
            if limits:
                open_rows = c.execute(select(sessions_table).where(sessions_table.c.ended.is_(None))).all()
                refusal = _first_refusal(user, limits, open_rows, cpu, memory, gpus)
            if refusal is None:
                return c.execute(insert(sessions_table).values(
                    user=user, server=server, groups=json.dumps(groups), profile=profile,
                    cpu=None if cpu is None else float(cpu), memory=None if memory is None else int(memory),
                    gpus=gpus, started=now, ended=None)).inserted_primary_key[0]
        raise QuotaExceeded(refusal)  # after the commit: the stale session stays closed

    def release(self, user: str, server: str, cpu_seconds: float | None = None) -> bool:
        """The server stopped (or failed to start): close its open session; whether one was open."""
        with self._write() as c:
            return bool(c.execute(update(sessions_table).where(
                sessions_table.c.user == user, sessions_table.c.server == server,
                sessions_table.c.ended.is_(None)).values(ended=self.clock(), cpu_seconds=cpu_seconds)).rowcount)

    def open_sessions(self) -> list[dict]:
        """The servers open now: user, server, groups, profile, cpu, memory, gpus, started."""
        with self._read() as c:
            rows = c.execute(select(sessions_table).where(sessions_table.c.ended.is_(None))
                             .order_by(sessions_table.c.id)).all()
        return [{"user": r.user, "server": r.server, "groups": json.loads(r.groups), "profile": r.profile,
                 "cpu": r.cpu, "memory": r.memory, "gpus": r.gpus, "started": _iso(r.started)} for r in rows]

    def totals(self) -> dict[str, dict[str, float]]:
        """All-time ``{user: {"server_seconds", "cpu_seconds", "gpu_seconds"}}`` (open sessions up to now)."""
        now = self.clock()
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"server_seconds": 0.0, "cpu_seconds": 0.0,
                                                                "gpu_seconds": 0.0})
        with self._read() as c:
            for r in c.execute(select(sessions_table)):
                seconds = max(0.0, (r.ended if r.ended is not None else now) - r.started)
                out[r.user]["server_seconds"] += seconds
                out[r.user]["cpu_seconds"] += r.cpu_seconds or 0.0
                out[r.user]["gpu_seconds"] += r.gpus * seconds
        return dict(out)

    # ---- reports ----

    def report(self, by: str = "user", days: int = 30, *, jobs: dict[tuple[str, str], int] | None = None,
               stored: dict[str, dict[str, Any]] | None = None,
               members: dict[str, list[str]] | None = None) -> list[dict]:
        """Usage rows per user (``by="user"``) or group and UTC day, over the last ``days`` days
        (today included), sorted by key then day; only rows with some use.

        Each row: ``{"user"|"group", "day", "servers", "server_hours", "cpu_seconds",
        "gpu_seconds", "jobs", "stored_bytes"}``. ``servers`` counts the sessions open that day.
        ``jobs`` (``{(owner, "YYYY-MM-DD"): count}``) and ``stored`` (``{user: {adaptor: bytes
        or "not measured"}}``, measured now: today's rows) come from :mod:`hub.stores.usage`; without
        them those fields are None. ``members`` (``{user: [groups]}``, from the hub) places
        jobs and stored bytes in groups; a user missing from it counts in the groups of their
        latest session.
        """
        if by not in KINDS:
            raise QuotaError(f"by: 'user' or 'group', not {by!r}.")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise QuotaError(f"days: a whole number from 1 to {MAX_DAYS}, not {days!r}.")
        now = self.clock()
        today = datetime.fromtimestamp(now, UTC).date()
        first = today - timedelta(days=days - 1)
        start = _midnight(first)
        with self._read() as c:
            rows = c.execute(select(sessions_table).where(
                (sessions_table.c.ended.is_(None)) | (sessions_table.c.ended > start))
                .order_by(sessions_table.c.id)).all()
            latest = {r.user: json.loads(r.groups) for r in c.execute(
                select(sessions_table.c.user, sessions_table.c.groups).order_by(sessions_table.c.id))}
        groups_of = {**latest, **(members or {})}

        def keys(user: str, recorded: list[str] | None = None) -> list[str]:
            if by == "user":
                return [user]
            return recorded if recorded is not None else groups_of.get(user, [])

        table: dict[tuple[str, str], dict] = {}

        def row(key: str, day: str) -> dict:
            if (key, day) not in table:
                table[(key, day)] = {by: key, "day": day, "servers": 0, "server_hours": 0.0, "cpu_seconds": 0.0,
                                     "gpu_seconds": 0.0, "jobs": None if jobs is None else 0, "stored_bytes": None}
            return table[(key, day)]

        for r in rows:
            end = r.ended if r.ended is not None else now
            whole = max(end - r.started, 0.0)
            d = max(datetime.fromtimestamp(r.started, UTC).date(), first)
            while _midnight(d) <= end and d <= today:
                lo, hi = max(r.started, _midnight(d)), min(end, _midnight(d + timedelta(days=1)))
                if hi > lo or (whole == 0 and lo == r.started):
                    seconds = max(hi - lo, 0.0)
                    for key in keys(r.user, json.loads(r.groups)):
                        out = row(key, d.isoformat())
                        out["servers"] += 1
                        out["server_hours"] += seconds / 3600
                        out["gpu_seconds"] += r.gpus * seconds
                        if r.cpu_seconds and whole > 0:
                            out["cpu_seconds"] += r.cpu_seconds * seconds / whole
                d += timedelta(days=1)
        for (owner, day), count in (jobs or {}).items():
            if first.isoformat() <= day <= today.isoformat():
                for key in keys(owner):
                    row(key, day)["jobs"] += count
        for user, adaptors in (stored or {}).items():
            for key in keys(user):
                out = row(key, today.isoformat())
                merged = out["stored_bytes"] or {}
                for name, value in adaptors.items():
                    if isinstance(value, int) and isinstance(merged.get(name, 0), int):
                        merged[name] = merged.get(name, 0) + value
                    else:
                        merged[name] = "not measured"
                out["stored_bytes"] = merged
        for out in table.values():
            out["server_hours"] = round(out["server_hours"], 6)
            out["cpu_seconds"] = round(out["cpu_seconds"], 3)
            out["gpu_seconds"] = round(out["gpu_seconds"], 3)
        return [table[k] for k in sorted(table)]


def _amount(field: str, value: float) -> str:
    """``4 CPU cores``, ``16 GiB of memory``, ``1 GPU``."""
    if field == "memory":
        return f"{size(value)} of memory"
    if field == "cpu":
        return f"{value:g} CPU {_plural(value, 'core', 'cores')}"
    return f"{value:g} {_plural(value, 'GPU', 'GPUs')}"


def _first_refusal(user: str, limits: list[tuple[str, str, dict]], open_rows, cpu, memory, gpus: int) -> str | None:
    """The sentence of the first quota the new server would pass, or None."""
    for kind, name, quota in limits:
        mine = [r for r in open_rows if (r.user == user if kind == "user" else name in json.loads(r.groups))]
        who = user if kind == "user" else f"The members of group {name}"
        whose = f"quota of {kind} {name}"
        if "servers" in quota and len(mine) + 1 > quota["servers"]:
            n, used = quota["servers"], len(mine)
            return (f"{who} may run at most {n} {_plural(n, 'server', 'servers')} at a time ({whose}); "
                    f"{used} {_plural(used, 'is', 'are')} running.")
        for field, what, want in (("cpu", "CPU", cpu), ("memory", "memory", memory), ("gpus", "GPU", gpus)):
            if field not in quota:
                continue
            if want is None:
                return (f"{who} may use at most {_amount(field, quota[field])} at a time ({whose}); this server "
                        f"has no {what} limit, so it cannot be counted: choose a profile that sets one.")
            used = sum(getattr(r, field) or 0 for r in mine)
            if used + want > quota[field]:
                verb = "is" if field == "memory" else _plural(used, "is", "are")  # memory is a mass noun
                return (f"{who} may use at most {_amount(field, quota[field])} at a time ({whose}); "
                        f"{_amount(field, used)} {verb} in use and this server asks for {_amount(field, want)}.")
    return None


def check_queued_jobs(store: QuotaStore, user: str, groups: list[str] | set[str], adding: int,
                      queued: Callable[[str, str], int]) -> None:
    """Refuse (:class:`QuotaExceeded`) ``adding`` more jobs for ``user`` if a ``queued_jobs``
    quota of the user or of one of their groups would be passed; ``queued(kind, name)`` counts
    the jobs not yet final of the user, or of the group's members. Call it in the transaction
    that creates the run, under the catalog's write lock (``hub.service.workload``), so that the
    count cannot change before the run exists."""
    for kind, name, quota in store.applying(user, groups):
        if "queued_jobs" not in quota:
            continue
        limit, used = quota["queued_jobs"], queued(kind, name)
        if used + adding > limit:
            who = user if kind == "user" else f"The members of group {name}"
            raise QuotaExceeded(
                f"{who} may have at most {limit} {_plural(limit, 'job', 'jobs')} queued (quota of {kind} {name}); "
                f"{used} {_plural(used, 'is', 'are')} queued and this run adds {adding}.")


_shared: dict[str, QuotaStore] = {}
_shared_lock = threading.Lock()


def shared_store(data_dir: str | os.PathLike | None = None) -> QuotaStore:
    """One store per data dir in this process (default: ``$SKERRY_DATA_DIR``), for the service's routers."""
    path = str(Path(data_dir or config.DATA_DIR.require()).expanduser().resolve())
    with _shared_lock:
        if path not in _shared:
            _shared[path] = QuotaStore.for_data_dir(path)
        return _shared[path]
