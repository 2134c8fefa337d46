"""Writes the chart's values.schema.json and VALUES.md from values.schema.yaml; ``--check``
says which of them is out of date instead (exit 1), as CI's tests do.

    python helm/tools/schema.py [--check]

values.schema.yaml is the one source: ``$profile`` in it becomes skerry's own profile schema
(the one the hub's REST API validates profiles with), so the chart refuses what the hub
would. VALUES.md lists every value with its type, its default (from values.yaml) and its
description.
"""

import json
import sys
from pathlib import Path

import yaml

from skerry.hub.service.toolkit import inline_refs
from skerry.hub.stores.profiles import Profile

CHART = Path(__file__).resolve().parent.parent / "skerry"


def schema() -> dict:
    """values.schema.yaml with ``$profile`` replaced by the profile schema."""
    source = yaml.safe_load((CHART / "values.schema.yaml").read_text())
    source["definitions"]["profile"] = inline_refs(Profile.model_json_schema())
    return source


def _type(node: dict, root: dict) -> str:
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    kind = node.get("type", "object")
    if kind == "array":
        return f"list of {_type(node.get('items', {}), root)}"
    if "enum" in node:
        return " \\| ".join(str(v) for v in node["enum"])
    return " or ".join(kind) if isinstance(kind, list) else kind


def _rows(node: dict, values, root: dict, path: str):
    if "$ref" in node and "properties" not in node:
        target = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        if "properties" in target and not node.get("description"):
            node = {**target, "description": node.get("description", "")}
    for key, child in node.get("properties", {}).items():
        where = f"{path}.{key}" if path else key
        value = values.get(key) if isinstance(values, dict) else None
        described = child.get("description", "")
        if "properties" in child:
            if described:
                yield where, "object", "", described
            yield from _rows(child, value, root, where)
            continue
        default = "" if value is None or isinstance(value, dict) and not value else f"`{json.dumps(value)}`"
        yield where, _type(child, root), default, described


def reference(full: dict) -> str:
    """VALUES.md: every value, in the order of the schema."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    lines = ["# The skerry chart's values", "",
             "Written by `python helm/tools/schema.py` from `values.schema.yaml`; defaults from `values.yaml`.",
             "Every object refuses a key it does not name.", "",
             "| value | type | default | what it is |", "|---|---|---|---|"]
    for where, kind, default, described in _rows(full, values, full, ""):
        cell = described.replace("|", r"\|")
        lines.append(f"| `{where}` | {kind} | {default} | {cell} |")
    lines += ["", "A profile (`users.profiles[]`) is skerry's profile, as the hub's REST API takes it: see "
              "`hub/stores/profiles.py`.", ""]
    return "\n".join(lines)


def outputs() -> dict[Path, str]:
    full = schema()
    return {CHART / "values.schema.json": json.dumps(full, indent=2) + "\n", CHART / "VALUES.md": reference(full)}


def main(argv: list[str]) -> int:
    stale = []
    for path, text in outputs().items():
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python helm/tools/schema.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
