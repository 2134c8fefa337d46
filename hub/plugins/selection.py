"""Which profile a spawn gets: a spawn's ``user_options`` checked against the profile store.

``user_options`` (JupyterHub REST body of ``POST /hub/api/users/<u>/server[s/<name>]``, or the
spawn form through ``options_from_form``), every key optional::

    {"profile": "<slug>", "options": {"<option>": "<choice key>"}, "free": {"<option>": "<typed value>"}}

Rules (:func:`select`):

- no enabled profile in the store at all: None, the server starts with the platform's
  defaults and no limits (``user_options`` are then ignored);
- otherwise the server needs a profile the user may use (enabled, :func:`profiles.allowed`);
  without ``profile``, the first the user may use (by slug);
- refused (:class:`Refused`, HTTP 403, a sentence saying why): no profile the user may use,
  an unknown, disabled or forbidden profile, an unknown option or choice, a free value not
  matching its pattern; ``user_options`` not of the shape above: :class:`BadOptions` (400);
- the result is a snapshot of the resolved profile (:func:`snapshot`): what the server keeps
  in its state for as long as it runs, whatever the store says later.
"""

from typing import Any

from skerry.errors import BadRequest, Forbidden

from skerry.hub.stores.profiles import META, Profile, ProfileError, allowed, render_adaptor, resolve

KEYS = ("profile", "options", "free")


class Refused(Forbidden):
    """A spawn the user may not make; ``status`` is the HTTP status of the refusal."""

    code = "spawn_refused"


class BadOptions(BadRequest, Refused):
    """``user_options`` not of the documented shape (400); still a Refused spawn."""

    code = "bad_user_options"


def parse(user_options: Any) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(slug or None, options, free) from ``user_options``; BadOptions if not of the documented shape."""
    user_options = user_options or {}
    if not isinstance(user_options, dict):
        raise BadOptions("user_options: must be a JSON object.")
    unknown = sorted(set(user_options) - set(KEYS))
    if unknown:
        raise BadOptions(f"user_options.{unknown[0]}: unknown key (only {', '.join(KEYS)}).")
    slug = user_options.get("profile")
    if slug is not None and not isinstance(slug, str):
        raise BadOptions("user_options.profile: must be a profile's slug (a string).")
    parts = []
    for key in ("options", "free"):
        value = user_options.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise BadOptions(f"user_options.{key}: must map option names to strings.")
        parts.append(value)
    return slug or None, parts[0], parts[1]


def select(profiles: list[dict], user: str, groups: list[str], user_options: Any) -> dict | None:
    """The snapshot of the profile ``user`` (in ``groups``) gets for ``user_options``, from
    ``profiles`` (every stored profile, as :meth:`ProfileStore.list_profiles` gives them);
    None if no profile is enabled; Refused or BadOptions as the module says."""
    enabled = [p for p in profiles if not p.get("disabled")]
    if not enabled:
        return None
    slug, options, free = parse(user_options)
    if slug is None:
        usable = sorted((p for p in enabled if allowed(p, user, groups)), key=lambda p: p["slug"])
        if not usable:
            raise Refused(f"No server profile is open to {user}: ask an admin for one.")
        chosen = usable[0]
    else:
        chosen = next((p for p in profiles if p["slug"] == slug), None)
        if chosen is None:
            raise Refused(f"There is no profile named {slug!r}.")
        if chosen.get("disabled"):
            raise Refused(f"Profile {slug!r} is disabled: choose another one.")
        if not allowed(chosen, user, groups):
            raise Refused(f"Profile {slug!r} is not open to {user}: choose another one or ask an admin.")
    spec = Profile.model_validate({k: v for k, v in chosen.items() if k not in META})
    try:
        result = resolve(spec, options, free)
    except ProfileError as e:
        raise Refused(f"Profile {spec.slug!r}: {e.message}") from None
    return snapshot(result, chosen.get("version"), user)


def snapshot(profile: Profile, version: int | None, user: str) -> dict:
    """What a running server keeps of its profile: its adaptors rendered for ``user``."""
    data = profile.model_dump(mode="json")
    return {"slug": data["slug"], "version": version, "display_name": data["display_name"],
            "resources": data["resources"], "adaptors": [render_adaptor(a, user) for a in data["adaptors"]],
            "dask": data["dask"], "idle_timeout_s": data["idle_timeout_s"], "image": data["image"]}
