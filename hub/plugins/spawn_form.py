"""The spawn page's form, made from the profile store at each request, and read back.

JupyterHub wraps :func:`render` in its spawn page (``<form>`` and the start button are its
own) and hands the posted fields, a dict of lists of strings, to :func:`read`, which returns
the ``user_options`` of :mod:`skerry.hub.plugins.selection`. Rules:

- the profiles listed are the enabled ones the user may use, by slug, the first one
  checked; each with its display name, description and resources, and its options: the
  choices as a ``<select>`` (the default choice selected), a free value as a text input
  with its pattern (which the spawner checks again: the form is a convenience, not the rule);
- field names: ``profile`` (the slug), ``<slug>--option--<name>`` (a choice key) and
  ``<slug>--free--<name>`` (a typed value; empty: none, the choice applies);
- with no profile in the store the form is empty: JupyterHub then spawns at once.
"""

from html import escape

PROFILE = "profile"


def _size(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def resources_text(resources: dict) -> str:
    """``2 cores, 4 GiB, no GPU`` for a profile's resources."""
    gpus = resources.get("gpus", 0)
    return (f"{resources['cpu_limit']:g} core{'s' if resources['cpu_limit'] != 1 else ''}, "
            f"{_size(resources['mem_limit'])}, " + (f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "no GPU"))


def render(profiles: list[dict], any_enabled: bool) -> str:
    """The form's HTML for ``profiles`` (the ones the user may use); "" if ``any_enabled`` is
    False (no profile at all: no form)."""
    if not any_enabled:
        return ""
    if not profiles:
        return ('<p class="alert alert-warning">No server profile is open to you: '
                "ask an admin for one.</p>")
    parts = ['<div class="skerry-profiles">']
    for i, p in enumerate(sorted(profiles, key=lambda p: p["slug"])):
        slug = escape(p["slug"])
        parts.append(
            f'<div class="form-check mb-3 skerry-profile">'
            f'<input class="form-check-input" type="radio" name="{PROFILE}" id="profile-{slug}" value="{slug}"'
            f'{" checked" if i == 0 else ""}>'
            f'<label class="form-check-label" for="profile-{slug}"><strong>{escape(p["display_name"])}</strong>'
            f' <small class="text-muted">({escape(resources_text(p["resources"]))})</small></label>')
        if p.get("description"):
            parts.append(f'<div class="form-text">{escape(p["description"])}</div>')
        for name, option in (p.get("options") or {}).items():
            parts.append(_option(slug, escape(name), option))
        parts.append("</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _option(slug: str, name: str, option: dict) -> str:
    field = f"{slug}--option--{name}"
    html = [f'<div class="ms-4 mb-2"><label class="form-label" for="{field}">{escape(option["display_name"])}</label>',
            f'<select class="form-select" name="{field}" id="{field}">']
    for key, choice in option["choices"].items():
        html.append(f'<option value="{escape(key)}"{" selected" if choice.get("default") else ""}>'
                    f'{escape(choice["display_name"])}</option>')
    html.append("</select>")
    free = option.get("free_value") or {}
    if free.get("enabled"):
        field = f"{slug}--free--{name}"
        pattern = escape(free["pattern"])
        html.append(f'<label class="form-label" for="{field}">{escape(free["display_name"])}</label>'
                    f'<input class="form-control" type="text" name="{field}" id="{field}" pattern="{pattern}"'
                    f' placeholder="empty: the choice above" title="must match {pattern}">')
    html.append("</div>")
    return "".join(html)


def read(form: dict[str, list[str]]) -> dict:
    """``user_options`` from the posted form (see the module's field names)."""
    def first(key: str) -> str:
        values = form.get(key) or [""]
        return values[0] if isinstance(values, list) else str(values)

    slug = first(PROFILE).strip()
    if not slug:
        return {}
    options, free = {}, {}
    for key in form:
        head, sep, name = key.partition("--option--")
        if sep and head == slug:
            options[name] = first(key)
        head, sep, name = key.partition("--free--")
        if sep and head == slug and first(key).strip():
            free[name] = first(key).strip()
    return {PROFILE: slug, "options": options, "free": free}
