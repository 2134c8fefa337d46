"""Whose storage a job sees: its owner's adaptors, on the worker that runs it.

A job reads and writes ``skerry://`` URLs of the user who owns its run (or its input
dataset): their ``home`` folder and their stored adaptors, as their own server sees them.

- In the scheduler's process, ``OwnerConfigs(data_dir, policy).path(owner)`` writes the
  owner's adaptor configuration (mode 0600, with the decrypted credentials) and names it;
  the scheduler puts that path in each job it sends. With accounts (``policy``) it is in
  the owner's handover folder (``run/users/<owner>/jobs.adaptors.json``), the owner's
  account's own: the jobs run on the owner's cluster, as that account. Without (a
  single-user platform) it is ``DIR/secrets/adaptors/<owner>--jobs.json``. It is made
  again for every task seen afresh, so adaptor changes reach new tasks, and written only
  if it changed (the same text, owner and mode 0600 already there: a new task's first
  dispatch saves a synced write).
- On the worker, ``adaptors_of(path)`` wraps the job: ``$SKERRY_ADAPTORS`` names that
  file and the federation is built from it. Jobs of one owner run side by side; a job of
  another owner waits until the worker process has none running (one process has one
  environment), so two users' jobs never see each other's storage.

The path travels; the secrets do not (the file is read on the worker, which therefore
needs the data dir's file system: true of the local pools ``skerry up`` starts).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

from .. import config
from ..adaptors.config import config_text
from ..localfiles import write_private

__all__ = ["OwnerConfigs", "adaptors_of"]

_gate = threading.Condition()
_running = 0  # jobs running in this process under ``_current``
_current: str | None = None


class OwnerConfigs:
    """Writes each job owner's adaptor configuration under the data dir (module docstring)."""

    def __init__(self, data_dir: str | os.PathLike, policy=None):
        from ..adaptors.store import AccountStore
        from ..datadir import DataDir

        self.data = DataDir(data_dir)
        self.store = AccountStore.for_data_dir(self.data)
        self.folder = self.data.secrets / "adaptors"
        self.policy = policy  # accounts.AccountPolicy: each owner's jobs run as their account

    def path(self, owner: str) -> str:
        """Write ``owner``'s configuration now; its path. ``ConfigError`` if it is broken,
        an ``AccountError`` if the owner's account cannot be had (locked: a deleted user)."""
        from ..accounts import ensure_account, give, share_folder

        specs, credentials = self.store.federation(owner, str(self.data.user_home(owner)))
        text = config_text(specs, credentials).encode()
        if self.policy is None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.folder / f"{owner}--jobs.json"
            if not _holds(path, text, os.geteuid()):
                write_private(path, text)
            return str(path)
        account = ensure_account(owner, self.data.user_home(owner), self.policy)
        folder = share_folder(self.data.handover(owner), account)
        path = folder / "jobs.adaptors.json"
        if not _holds(path, text, account.uid):
            write_private(path, text)
            give(path, account)
        return str(path)


def _holds(path, text: bytes, uid: int) -> bool:
    """Whether ``path`` is a file (not a link) of ``uid``, mode 0600, holding exactly ``text``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        return st.st_uid == uid and st.st_mode & 0o7777 == 0o600 and f.read(len(text) + 1) == text


@contextmanager
def adaptors_of(path: str | None):
    """Run the body with the federation of the configuration at ``path`` (None: as is)."""
    global _running, _current
    if path is None:
        yield
        return
    with _gate:
        _gate.wait_for(lambda: _running == 0 or _current == path)
        if _current != path or config.ADAPTORS.get() != path:
            from ..adaptors.federation import SkerryFileSystem

            config.ADAPTORS.set(path)
            SkerryFileSystem.clear_instance_cache()  # built from the previous owner's file
            _current = path
        _running += 1
    try:
        yield
    finally:
        with _gate:
            _running -= 1
            _gate.notify_all()

