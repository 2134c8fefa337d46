"""Profiles: what a user's server gets, validated by a schema when written, kept with an audit log.

A profile, as stored and as the REST API shows it (``version``, ``disabled``, ``updated``
and ``updated_by`` are added by the store)::

    {"slug": "gpu-small", "display_name": "Small GPU", "description": "...",
     "resources": {"cpu_limit": 4, "cpu_guarantee": 1, "mem_limit": "16Gi", "mem_guarantee": "4Gi",
                   "gpus": 1},
     "adaptors": [{"name": "scratch", "type": "local", "path": "/scratch/{username}"}],
     "dask": {"max_workers": 8, "worker_threads": 2, "worker_memory": "4Gi"},
     "idle_timeout_s": 3600, "image": null,
     "kubernetes": {"node_selector": {"skerry.io/pool": "gpu"},
                    "tolerations": [{"key": "skerry.io/pool", "value": "gpu", "effect": "NoSchedule"}]},
     "access": {"everyone": false, "users": ["alice"], "groups": ["physics"]},
     "options": {"image": {"display_name": "Image",
                           "choices": {"base": {"display_name": "Base", "default": true, "overrides": {}},
                                       "torch": {"display_name": "PyTorch",
                                                 "overrides": {"image": "skerry/torch:1"}}},
                           "free_value": {"enabled": true, "display_name": "Other image",
                                          "pattern": "^skerry/[a-z-]+:[0-9.]+$", "sets": "image"}}}}

Rules (every refusal is a :class:`ProfileError` whose message starts with the field path):

- unknown keys are refused everywhere; ``resources.gpus`` must be given (0 on CPU profiles);
- limits are not negative, guarantees are at most their limits; memory sizes are bytes or
  ``"512Mi"``, ``"2G"``... (stored as bytes);
- ``adaptors`` are adaptor specs (:mod:`skerry.adaptors.specs`) in which ``{username}`` is
  replaced by the user's name; another ``{placeholder}`` or an unknown ``type`` is refused;
- ``kubernetes``: where the profile's pods run on Kubernetes (node selector, tolerations);
  the local backend ignores it;
- options: a choice's ``overrides`` may set only ``resources``, ``dask`` (merged key by key),
  ``adaptors``, ``idle_timeout_s``, ``image`` and ``kubernetes``; the result of every choice
  must itself be a valid profile; a free value's ``pattern`` must compile, and ``sets`` names one field;
- **override order**: the profile's own values < the chosen option choices (options in their
  order in ``options``) < free values (:func:`resolve`);
- who may use it: ``access.everyone``, or the user is in ``access.users``, or in one of
  ``access.groups`` (JupyterHub groups) (:func:`allowed`); admins see every profile but are
  held to the same rule at spawn time.

The store (:class:`ProfileStore`) keeps profiles in ``DIR/profiles.sqlite`` (created with
SQLAlchemy ``create_all``: two tables of their own, no migrations to share with the catalog).
Profiles are never deleted, only disabled, so audit entries and past servers keep their
meaning. Every write records ``{who, when, action, slug, changes}`` in the same transaction,
``changes`` being ``{top-level key: {"old", "new"}}``.
"""

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, Text, insert, select, update

from skerry.adaptors.specs import load_spec
from skerry.errors import ConfigError, Conflict, NotFound
from skerry.workload.modules import parse_memory

from skerry.hub.stores.sqlitefile import SQLiteFile

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
SAMPLE_USER = "sample-user"  # adaptor templates are checked with this name in place of {username}
OVERRIDABLE = ("resources", "dask", "adaptors", "idle_timeout_s", "image", "kubernetes")
FREE_FIELDS = ("image", "idle_timeout_s", "resources.cpu_limit", "resources.cpu_guarantee", "resources.mem_limit",
               "resources.mem_guarantee", "resources.gpus", "dask.max_workers", "dask.worker_threads",
               "dask.worker_memory")
META = ("version", "disabled", "created", "updated", "updated_by")  # added by the store, never part of the spec


class ProfileError(ConfigError):
    """A refused profile or request; ``message`` starts with the field path (``resources.gpus: ...``)."""

    code = "bad_profile"


class NoSuchProfile(NotFound, ConfigError):
    code = "no_such_profile"


class ProfileConflict(Conflict, ConfigError):
    code = "conflict"


def _memory(value: Any) -> int:
    try:
        return parse_memory(value)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from None


Memory = Annotated[int, BeforeValidator(_memory), Field(ge=0),
                   WithJsonSchema({"type": ["integer", "string"],
                                   "description": "bytes, or a size like '512Mi', '2G'"})]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Spec):
    """CPU in cores, memory in bytes; guarantees are what is reserved, limits what may be used."""

    cpu_limit: float = Field(gt=0)
    cpu_guarantee: float = Field(0, ge=0)
    mem_limit: Memory
    mem_guarantee: Memory = 0
    gpus: int = Field(ge=0, description="required: 0 on CPU profiles")

    @field_validator("cpu_guarantee", "mem_guarantee")
    @classmethod
    def _at_most_limit(cls, value, info):
        limit = info.field_name.replace("guarantee", "limit")
        if limit in info.data and value > info.data[limit]:
            raise ValueError(f"{value:g} is above {limit} ({info.data[limit]:g})")
        return value


class DaskLimits(_Spec):
    """The user's Dask pool: at most ``max_workers`` workers of ``worker_threads`` and ``worker_memory``."""

    max_workers: int = Field(ge=0)
    worker_threads: int = Field(1, ge=1)
    worker_memory: Memory


LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"


class Toleration(_Spec):
    """A Kubernetes toleration: pods of the profile may run on nodes with this taint."""

    key: str = Field(pattern=LABEL_KEY)
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = Field("", pattern=LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Placement(_Spec):
    """Where the profile's pods run on Kubernetes (ignored by the local backend)."""

    node_selector: dict[Annotated[str, Field(pattern=LABEL_KEY)], Annotated[str, Field(pattern=LABEL_VALUE)]] = {}
    tolerations: list[Toleration] = []


class Access(_Spec):
    everyone: bool = False
    users: list[str] = []
    groups: list[str] = []


class Choice(_Spec):
    display_name: str = Field(min_length=1)
    default: bool = False
    overrides: dict[str, Any] = {}

    @field_validator("overrides")
    @classmethod
    def _overridable(cls, value):
        for key in value:
            if key not in OVERRIDABLE:
                raise ValueError(f"{key!r} cannot be overridden (only {', '.join(OVERRIDABLE)})")
        return value


class FreeValue(_Spec):
    """A value the user types, checked against ``pattern`` (whole match), which sets one field."""

    enabled: bool = False
    display_name: str = Field(min_length=1)
    pattern: str
    sets: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value):
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e})") from None
        return value

    @field_validator("sets")
    @classmethod
    def _settable(cls, value):
        if value not in FREE_FIELDS:
            raise ValueError(f"must be one of {', '.join(FREE_FIELDS)}")
        return value


class Option(_Spec):
    display_name: str = Field(min_length=1)
    choices: dict[str, Choice] = Field(min_length=1)
    free_value: FreeValue | None = None

    @field_validator("choices")
    @classmethod
    def _one_default(cls, value):
        if sum(c.default for c in value.values()) > 1:
            raise ValueError("at most one choice may be the default")
        return value


class Profile(_Spec):
    slug: str = Field(pattern=SLUG)
    display_name: str = Field(min_length=1)
    description: str = ""
    resources: Resources
    adaptors: list[dict[str, Any]] = Field([], description="adaptor specs; {username} is the user's name")
    dask: DaskLimits
    idle_timeout_s: int = Field(3600, ge=0, description="0: never stopped for being idle")
    image: str | None = Field(None, description="container image (Kubernetes); None: the platform's default")
    kubernetes: Placement = Placement()
    access: Access = Access()
    options: dict[str, Option] = {}


def _check_adaptors(profile: Profile, where: str = "") -> None:
    """Each adaptor template, rendered for a sample user, is a valid adaptor spec; names are unique."""
    names = set()
    for i, template in enumerate(profile.adaptors):
        field = f"{where + '.' if where else ''}adaptors[{i}]"
        try:
            spec = load_spec(render_adaptor(template, SAMPLE_USER))
        except ConfigError as e:
            raise ProfileError(f"{field}: {e.message[:1].lower() + e.message[1:]}") from None
        if spec.name in names:
            raise ProfileError(f"{field}.name: a second adaptor named {spec.name!r}.")
        names.add(spec.name)


def render_adaptor(template: Any, username: str) -> Any:
    """``template`` with ``{username}`` replaced in every string; another placeholder is an error."""
    if isinstance(template, dict):
        return {k: render_adaptor(v, username) for k, v in template.items()}
    if isinstance(template, list):
        return [render_adaptor(v, username) for v in template]
    if isinstance(template, str):
        other = set(re.findall(r"\{([^{}]*)\}", template)) - {"username"}
        if other:
            raise ConfigError(f"unknown placeholder {{{sorted(other)[0]}}} (only {{username}}).")
        return template.replace("{username}", username)
    return template


def _where(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _first_error(e: ValidationError, prefix: str = "") -> ProfileError:
    first = e.errors()[0]
    where = _where(first["loc"]) if first["loc"] else ""
    where = ".".join(p for p in (prefix, where) if p) or "profile"
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required (missing)"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        msg = msg[:1].lower() + msg[1:]
    return ProfileError(f"{where}: {msg.rstrip('.')}.")


def validate(data: Any) -> Profile:
    """A valid profile from JSON data, every choice checked by resolving it; else ProfileError."""
    if not isinstance(data, dict):
        raise ProfileError("profile: must be a JSON object.")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        raise _first_error(e) from None
    _check_adaptors(profile)
    for name, option in profile.options.items():
        for key, choice in option.choices.items():
            _apply(profile, choice.overrides, f"options.{name}.choices.{key}.overrides")
    return profile


def _apply(profile: Profile, overrides: dict, where: str) -> Profile:
    """``profile`` with ``overrides`` applied (``resources`` and ``dask`` merged key by key)."""
    data = profile.model_dump(mode="json")
    for key, value in overrides.items():
        if key in ("resources", "dask") and isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data["options"] = {}  # the result is one concrete profile
    try:
        result = Profile.model_validate(data)
    except ValidationError as e:
        raise _first_error(e, where) from None
    _check_adaptors(result, where)
    return result


def resolve(profile: Profile, selected: dict[str, str] | None = None, free: dict[str, str] | None = None) -> Profile:
    """The concrete profile for a user's form: ``selected`` maps option -> choice key (the
    default choice, else none, where absent), ``free`` option -> typed value (wins over the choice).

    Order: profile values < choices (in ``options`` order) < free values.
    """
    selected, free = selected or {}, free or {}
    for name in [*selected, *free]:
        if name not in profile.options:
            raise ProfileError(f"options.{name}: this profile has no such option.")
    result = profile
    for name, option in profile.options.items():
        key = selected.get(name) or next((k for k, c in option.choices.items() if c.default), None)
        if key is None:
            continue
        if key not in option.choices:
            raise ProfileError(f"options.{name}: no choice {key!r} (choose one of {', '.join(option.choices)}).")
        result = _apply(result, option.choices[key].overrides, f"options.{name}.choices.{key}.overrides")
    for name, value in free.items():
        fv = profile.options[name].free_value
        if fv is None or not fv.enabled:
            raise ProfileError(f"options.{name}.free_value: this option takes no free value.")
        if not isinstance(value, str) or not re.fullmatch(fv.pattern, value):
            raise ProfileError(f"options.{name}.free_value: the value does not match {fv.pattern!r}.")
        head, _, leaf = fv.sets.partition(".")
        override = {head: {leaf: value}} if leaf else {head: value}
        result = _apply(result, override, f"options.{name}.free_value")
    return result


def allowed(profile: Profile | dict, user_name: str, groups: list[str] | set[str]) -> bool:
    """Whether ``user_name`` (member of JupyterHub ``groups``) may use ``profile``."""
    access = profile.access if isinstance(profile, Profile) else Access.model_validate(profile.get("access", {}))
    return access.everyone or user_name in access.users or bool(set(access.groups) & set(groups))


def diff(old: dict | None, new: dict) -> dict:
    """``{key: {"old", "new"}}`` for each top-level key whose value changed."""
    old = old or {}
    return {k: {"old": old.get(k), "new": new.get(k)} for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


# ---- the store -----------------------------------------------------------------

metadata = MetaData()
profiles_table = Table(
    "profiles", metadata,
    Column("slug", String(63), primary_key=True),
    Column("spec", Text, nullable=False),  # the validated profile as JSON
    Column("version", Integer, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created", String(32), nullable=False),
    Column("updated", String(32), nullable=False),
    Column("updated_by", String(255), nullable=False),
)
audit_table = Table(
    "profile_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(32), nullable=False),
    Column("who", String(255), nullable=False),
    Column("action", String(16), nullable=False),
    Column("slug", String(63), nullable=False, index=True),
    Column("changes", Text, nullable=False),
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ProfileStore(SQLiteFile):
    """Profiles and their audit log in one SQLite file. Methods return profile dicts:
    the spec plus ``version``, ``disabled``, ``created``, ``updated``, ``updated_by``."""

    FILENAME = "profiles.sqlite"
    METADATA = metadata

    @staticmethod
    def _json(row) -> dict:
        return {**json.loads(row.spec), "version": row.version, "disabled": row.disabled, "created": row.created,
                "updated": row.updated, "updated_by": row.updated_by}

    def _row(self, c, slug: str):
        row = c.execute(select(profiles_table).where(profiles_table.c.slug == slug)).first()
        if row is None:
            raise NoSuchProfile(f"No profile named {slug!r}.")
        return row

    @staticmethod
    def _audit(c, who: str, action: str, slug: str, changes: dict, at: str) -> None:
        c.execute(insert(audit_table).values(at=at, who=who, action=action, slug=slug, changes=json.dumps(changes)))

    def create(self, data: dict, who: str) -> dict:
        """Validate and store a new profile; ProfileConflict if the slug is taken."""
        spec = validate(_without_meta(data)).model_dump(mode="json")
        at = _now()
        with self._write() as c:
            if c.execute(select(profiles_table.c.slug).where(profiles_table.c.slug == spec["slug"])).first():
                raise ProfileConflict(f"A profile named {spec['slug']!r} exists already.")
            c.execute(insert(profiles_table).values(slug=spec["slug"], spec=json.dumps(spec), version=1,
                                                    disabled=False, created=at, updated=at, updated_by=who))
            self._audit(c, who, "create", spec["slug"], diff(None, spec), at)
            return self._json(self._row(c, spec["slug"]))

    def get(self, slug: str) -> dict:
        with self._read() as c:
            return self._json(self._row(c, slug))

    def profile(self, slug: str) -> Profile:
        """The validated :class:`Profile` (for the spawner)."""
        return Profile.model_validate(_without_meta(self.get(slug)))

    def list_profiles(self, user: str | None = None, groups: list[str] | None = None) -> list[dict]:
        """All profiles (``user`` None: for admins, disabled ones too), or the enabled ones ``user`` may use."""
        with self._read() as c:
            found = [self._json(r) for r in c.execute(select(profiles_table).order_by(profiles_table.c.slug))]
        if user is None:
            return found
        return [p for p in found if not p["disabled"] and allowed(p, user, groups or [])]

    def update(self, slug: str, data: dict, who: str, version: int | None = None) -> dict:
        """Replace the whole profile (same slug); ``version``, if given, must be the stored one."""
        spec = validate(_without_meta(data)).model_dump(mode="json")
        if spec["slug"] != slug:
            raise ProfileError(f"slug: a profile keeps its slug ({slug!r}); duplicate it for a new one.")
        at = _now()
        with self._write() as c:
            row = self._row(c, slug)
            if version is not None and version != row.version:
                raise ProfileConflict(f"Profile {slug!r} is at version {row.version}, not {version}: "
                                      "someone changed it meanwhile; read it again.")
            changes = diff(json.loads(row.spec), spec)
            if changes:
                c.execute(update(profiles_table).where(profiles_table.c.slug == slug).values(
                    spec=json.dumps(spec), version=row.version + 1, updated=at, updated_by=who))
                self._audit(c, who, "update", slug, changes, at)
            return self._json(self._row(c, slug))

    def duplicate(self, slug: str, new_slug: str, who: str) -> dict:
        """A copy of ``slug`` named ``new_slug`` (enabled, version 1)."""
        data = {**_without_meta(self.get(slug)), "slug": new_slug}
        return self.create(data, who)

    def set_disabled(self, slug: str, disabled: bool, who: str) -> dict:
        at = _now()
        with self._write() as c:
            row = self._row(c, slug)
            if row.disabled != disabled:
                c.execute(update(profiles_table).where(profiles_table.c.slug == slug).values(
                    disabled=disabled, version=row.version + 1, updated=at, updated_by=who))
                self._audit(c, who, "disable" if disabled else "enable", slug,
                            {"disabled": {"old": row.disabled, "new": disabled}}, at)
            return self._json(self._row(c, slug))

    def audit(self, slug: str | None = None) -> list[dict]:
        """Audit entries, oldest first (of one profile, or all)."""
        query = select(audit_table).order_by(audit_table.c.id)
        if slug is not None:
            query = query.where(audit_table.c.slug == slug)
        with self._read() as c:
            return [{"at": r.at, "who": r.who, "action": r.action, "slug": r.slug, "changes": json.loads(r.changes)}
                    for r in c.execute(query)]

    def counts(self) -> tuple[int, int]:
        """(profiles, audit entries): what tests compare before and after a refused write."""
        with self._read() as c:
            return (len(c.execute(select(profiles_table.c.slug)).all()),
                    len(c.execute(select(audit_table.c.id)).all()))


def _without_meta(data: Any) -> Any:
    return {k: v for k, v in data.items() if k not in META} if isinstance(data, dict) else data
