"""The tutorial notebooks every new home starts with: ``~/tutorials/`` (``notebooks/`` of
the repository, installed as the package data of ``skerry.notebooks``).

Rules:
- only a home that does not exist yet gets them (``new_home`` makes the home): a user who
  deleted or changed a tutorial never finds it put back;
- the copies are plain files of the home's owner (the caller hands the home over after);
  the tutorials are committed without outputs, so they start clean.
"""

from __future__ import annotations

import os
import shutil
from importlib.resources import files
from pathlib import Path

__all__ = ["FOLDER", "notebooks", "new_home"]

FOLDER = "tutorials"


def notebooks() -> list[Path]:
    """The tutorial notebooks, in their order."""
    return sorted(Path(str(files("skerry.notebooks"))).glob("*.ipynb"))


def new_home(home: str | os.PathLike) -> bool:
    """Make ``home`` (mode 0700) with the tutorials in ``tutorials/``, if it does not exist;
    False when it did (nothing is touched)."""
    home = Path(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(home, 0o700)
    except FileExistsError:
        return False
    folder = home / FOLDER
    folder.mkdir(0o700)
    for notebook in notebooks():
        shutil.copyfile(notebook, folder / notebook.name)
    return True
