"""The admin page's profile form: a profile shown as form fields, and form fields read back.

Each field is named by its path in the profile (``resources.cpu_limit``, ``access.users``),
so a :class:`~skerry.hub.stores.profiles.ProfileError`, whose message starts with the field path,
is shown beside the field it names (:func:`field_of`).

Rules of reading a form (:func:`profile_from_form`):

- text is passed as typed to the schema, which converts and checks it (``"4"`` is 4 cores,
  ``"16Gi"`` a size); an empty field is left out, so the schema's default applies, or its
  "required (missing)" names the field; an empty image is no image (the platform's default);
- ``access.users`` and ``access.groups`` are names separated by commas or spaces;
- ``adaptors`` (a list) and ``options`` (an object) are JSON text; text that is not JSON,
  or not of that kind, is a :class:`ProfileError` naming the field.
"""

import json
import re
from dataclasses import dataclass

from skerry.hub.stores.profiles import ProfileError


@dataclass(frozen=True)
class Field:
    path: str  # the profile field it edits
    label: str
    kind: str  # text, textarea, number, size, checkbox, names, json
    help: str = ""

    @property
    def id(self) -> str:
        """An HTML id (no dots, so that CSS selectors need no escaping)."""
        return "f-" + self.path.replace(".", "-")


# the form, in sections: (title, fields)
SECTIONS = [
    ("Profile", [
        Field("display_name", "Display name", "text"),
        Field("description", "Description", "textarea"),
    ]),
    ("Resources", [
        Field("resources.cpu_limit", "CPU limit (cores)", "number", "more than 0"),
        Field("resources.cpu_guarantee", "CPU guarantee (cores)", "number", "at most the limit; empty: 0"),
        Field("resources.mem_limit", "Memory limit", "size", "bytes or a size: 512Mi, 2G, 16Gi"),
        Field("resources.mem_guarantee", "Memory guarantee", "size", "at most the limit; empty: 0"),
        Field("resources.gpus", "GPUs", "number", "0 on CPU profiles"),
    ]),
    ("Dask pool", [
        Field("dask.max_workers", "Max workers", "number"),
        Field("dask.worker_threads", "Threads per worker", "number", "empty: 1"),
        Field("dask.worker_memory", "Memory per worker", "size", "bytes or a size"),
    ]),
    ("Server", [
        Field("idle_timeout_s", "Idle timeout (seconds)", "number", "0: never stopped for being idle; empty: 3600"),
        Field("image", "Image", "text", "container image (Kubernetes); empty: the platform's default"),
    ]),
    ("Who may use it", [
        Field("access.everyone", "Everyone", "checkbox"),
        Field("access.users", "Users", "names", "names, separated by commas or spaces"),
        Field("access.groups", "Groups", "names", "JupyterHub groups, separated by commas or spaces"),
    ]),
    ("Adaptors and options", [
        Field("adaptors", "Adaptors (JSON list)", "json", "adaptor specs; {username} is the user's name"),
        Field("options", "Options (JSON object)", "json", "choices and free values, as in the REST API"),
    ]),
]
FIELDS = [f for _, fields in SECTIONS for f in fields]
JSON_DEFAULTS = {"adaptors": [], "options": {}}
_SIZES = (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024))


def _get(data: dict, path: str):
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _size(value) -> str:
    """Bytes as the largest exact binary unit (``17179869184`` -> ``16Gi``)."""
    if isinstance(value, int) and value > 0:
        for unit, factor in _SIZES:
            if value % factor == 0:
                return f"{value // factor}{unit}"
    return "" if value is None else str(value)


def form_values(profile: dict) -> dict[str, str]:
    """What each field shows for a stored profile (strings; checkboxes ``"on"`` or ``""``)."""
    values = {}
    for field in FIELDS:
        value = _get(profile, field.path)
        if field.kind == "checkbox":
            values[field.path] = "on" if value else ""
        elif field.kind == "size":
            values[field.path] = _size(value)
        elif field.kind == "number":
            values[field.path] = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        elif field.kind == "names":
            values[field.path] = ", ".join(value or [])
        elif field.kind == "json":
            values[field.path] = json.dumps(value if value is not None else JSON_DEFAULTS[field.path], indent=2)
        else:
            values[field.path] = "" if value is None else str(value)
    return values


def profile_from_form(values: dict[str, str], slug: str) -> dict:
    """The profile data the form describes, for :func:`~skerry.hub.stores.profiles.validate`."""
    data: dict = {"slug": slug}
    for field in FIELDS:
        text = values.get(field.path, "")
        head, _, leaf = field.path.partition(".")
        if field.kind == "checkbox":
            value = bool(text)
        elif field.kind == "names":
            value = [n for n in re.split(r"[,\s]+", text) if n]
        elif field.kind == "json":
            value = _json(field, text)
        elif field.path == "image":
            value = text.strip() or None
        elif not text.strip():
            continue  # the schema's default, or its "required"
        else:
            value = text.strip()
        if leaf:
            data.setdefault(head, {})[leaf] = value
        else:
            data[head] = value
    for section in ("resources", "dask"):
        data.setdefault(section, {})  # so that a missing required field is named inside it
    return data


def _json(field: Field, text: str):
    if not text.strip():
        return JSON_DEFAULTS[field.path]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{field.path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    wanted = type(JSON_DEFAULTS[field.path])
    if not isinstance(value, wanted):
        raise ProfileError(f"{field.path}: must be a JSON {'list' if wanted is list else 'object'}.")
    return value


def field_of(message: str) -> str | None:
    """The form field a ProfileError's message names (the longest field path it starts
    with: ``adaptors[0].path: ...`` -> ``adaptors``), or None (shown above the form)."""
    path = re.sub(r"\[\d+\]", "", message.partition(":")[0]) if ":" in message else ""
    best = None
    for known in ["slug", *(f.path for f in FIELDS)]:
        if path == known or path.startswith(known + "."):
            if best is None or len(known) > len(best):
                best = known
    return best
