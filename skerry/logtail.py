"""What went wrong, read from the end of a log: the error lines a process wrote since an
offset, and one of them as a sentence.

    lines = error_lines(path, offset)        # ['[C 2026-12-04 19:16:18.468 ServerApp] Bad config ...']
    sentence(lines[-1])                      # 'Bad config encountered during initialization: ...'

Used by ``skerry up`` (a hub that exited) and the spawner (a user's server that exited at
start). Rules: an error line is a Jupyter/tornado line of level C or E (``[C ...]``,
``[E ...]``), uvicorn's ``ERROR:`` or a traceback's last line (``SomeError: ...``); at most
``count`` of the last ones are given, in order; an unreadable log gives none. A sentence
is the line without its level, time and logger (``[C 2026-12-04 19:16:18.468 ServerApp] ``)
or ``ERROR: ``, at most ``limit`` characters.
"""

import re
from pathlib import Path

__all__ = ["error_lines", "sentence"]

_ERROR = re.compile(r"^\[[CE] |^ERROR: |^[\w.]*(Error|Exception)\b.*: ")
_PREFIX = re.compile(r"^(\[[A-Z] [^\]]*\]\s*|ERROR:\s*)")


def error_lines(log: str | Path, offset: int = 0, count: int = 3) -> list[str]:
    """The last ``count`` error lines written to ``log`` after byte ``offset``."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if _ERROR.match(line)][-count:]


def sentence(line: str, limit: int = 300) -> str:
    """An error line as a sentence (see the rules)."""
    text = _PREFIX.sub("", line).strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"
