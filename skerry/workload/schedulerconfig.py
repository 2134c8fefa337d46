"""The scheduler's tunables as one typed, checked value: ``SchedulerConfig``.

    Scheduler(catalog, runner, config=SchedulerConfig(window=4, job_timeout=3600))
    SchedulerConfig.for_data_dir(data_dir)   # DIR/scheduler.json, or the defaults where it is absent

``DIR/scheduler.json`` (optional) is one JSON object naming only the fields it changes:

    {"window": 4, "job_timeout": 3600, "retry": {"limit": 5, "rules": {"memory": "no_retry"}},
     "rank": {"cap": 50}}

Rules:
- every field has a default (the scheduler's behaviour with no file); ``FIELDS`` says what
  each one means, and the README's configuration section lists them;
- a bad value raises ``ConfigError`` naming the field and the value (and the file, when it
  came from one): numbers must be finite numbers, not booleans or strings; an unknown field
  is refused with the known ones, so a typo never passes silently;
- ``retry`` is a ``states.RetryPolicy`` (its ``from_dict``: rules given are added to the
  default rules) and ``rank`` a ``states.RankParams``, each checked by its own rules;
- the manager (``skerry.workload.manager``) reads the file once, at start: a change takes
  effect when the scheduler restarts (``skerry up`` again).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import states as S

__all__ = ["SchedulerConfig", "FIELDS", "FILENAME", "reference"]

FILENAME = "scheduler.json"

# field -> (lowest allowed, whether the lowest itself is allowed, what it means)
FIELDS: dict[str, tuple[float, bool, str]] = {
    "window": (0.0, False, "a pool's window of jobs handed to Dask, in multiples of its slots"),
    "horizon": (0.0, False, "seconds of work a pool's window holds (about how long a job waits in Dask; "
                            "longer on shared cores); also how fast rank changes apply"),
    "batch_time": (0.0, True, "seconds of work one Dask task of short jobs carries (0: one job per Dask task)"),
    "job_timeout": (0.0, False, "seconds an attempt may run before it is lost with 'timeout' (null: no limit)"),
    "heartbeat": (0.0, False, "seconds between a running job's heartbeats"),
    "heartbeat_timeout": (0.0, False, "seconds without a heartbeat before an attempt is lost with 'timeout'"),
    "rank_interval": (0.0, False, "seconds between updates of the tasks' ranks"),
    "plan_interval": (0.0, False, "seconds between the planner's passes (new jobs, cancels, task states)"),
}
_NESTED = {"retry": "the retry policy: limit, backoff, max_backoff, default and rules (error class -> "
                    "retry, no_retry or another_pool)",
           "rank": "the rank parameters: alpha, beta, gamma, floor, cap"}


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's tunables (module docstring; ``FIELDS`` for their meaning)."""

    window: float = 2.0
    horizon: float = 0.2
    batch_time: float = 0.05
    job_timeout: float | None = None
    heartbeat: float = 5.0
    heartbeat_timeout: float = 60.0
    rank_interval: float = 10.0
    plan_interval: float = 0.2
    retry: S.RetryPolicy = field(default=S.DEFAULT_POLICY)
    rank: S.RankParams = field(default_factory=S.RankParams)

    def __post_init__(self):
        for name, (low, inclusive, _) in FIELDS.items():
            value = getattr(self, name)
            if name == "job_timeout" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < low or (value == low and not inclusive):
                must = f"a number of at least {low:g}" if inclusive else f"a number above {low:g}"
                raise ConfigError(f"scheduler setting {name!r} must be {must}, not {value!r}")
        if not isinstance(self.retry, S.RetryPolicy):
            raise ConfigError(f"scheduler setting 'retry' must be a RetryPolicy, not {self.retry!r}")
        if not isinstance(self.rank, S.RankParams):
            raise ConfigError(f"scheduler setting 'rank' must be RankParams, not {self.rank!r}")

    @classmethod
    def from_dict(cls, data: Any) -> SchedulerConfig:
        """From configuration (the file's object): unknown fields and bad values are refused."""
        if not isinstance(data, dict):
            raise ConfigError(f"the scheduler settings must be a JSON object, not {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown scheduler setting {unknown[0]!r} (known: {', '.join(known)})")
        values = dict(data)
        try:
            if "retry" in values:
                values["retry"] = S.RetryPolicy.from_dict(values["retry"])
        except (S.InvalidValue, TypeError) as e:
            raise ConfigError(f"scheduler setting 'retry': {e}") from None
        try:
            if "rank" in values:
                rank = values["rank"]
                if not isinstance(rank, dict):
                    raise TypeError(f"it must be an object, not {rank!r}")
                values["rank"] = S.RankParams(**rank)
        except (S.InvalidValue, TypeError) as e:
            raise ConfigError(f"scheduler setting 'rank': {e}") from None
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> SchedulerConfig:
        """The settings of the file at ``path``: the defaults where it does not exist."""
        path = Path(path)
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):  # no file (or no data dir yet: it says so itself)
            return cls()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def for_data_dir(cls, data_dir: str | Path) -> SchedulerConfig:
        """The platform's scheduler settings: ``DIR/scheduler.json``, or the defaults."""
        return cls.load(Path(data_dir) / FILENAME)


def reference() -> str:
    """The README's table of the file's fields (``tests/test_config.py`` keeps them equal)."""
    defaults = SchedulerConfig()
    rows = ["| Field | Default | Meaning |", "| --- | --- | --- |"]
    for name, (_, _, meaning) in FIELDS.items():
        value = getattr(defaults, name)
        rows.append(f"| `{name}` | `{'null' if value is None else value}` | {meaning} |")
    for name, meaning in _NESTED.items():
        rows.append(f"| `{name}` | (object) | {meaning} |")
    return "\n".join(rows) + "\n"
