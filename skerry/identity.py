"""Who runs the users' code on this machine, decided once by ``skerry up`` before it starts.

    identity = decide(data_dir, "skerry-{username}")
    identity.environment()        # what the hub is told: SKERRY_ACCOUNT_TEMPLATE or SKERRY_SINGLE_USER

Rules:
- **accounts** (the normal case, ``skerry up`` as root): each hub user's micro-infrastructure
  runs as that user's own OS account (``skerry.accounts``, named by the template). Before
  anything starts, an unprivileged account (``nobody``) must be able to run this Python,
  import skerry and reach the data dir's ``users/``: where a folder on the way is closed to
  it (Python under ``/root``, a data dir under a private folder), ``decide`` raises a
  ``SetupError`` naming that folder and how to open it. Users' servers that could not start
  are never the first sign of it;
- **single-user mode**, where this process may not switch users (not root, no CAP_SETUID):
  every user's code would run as the account running ``skerry up``, so only the hub user of
  that name (and the admin, who is the same person) may log in; ``decide`` says why in
  ``reason``, for ``skerry up`` to print. Several users never share one identity.
"""

from __future__ import annotations

import getpass
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from . import config
from .accounts import HUB_NAME, Account, AccountPolicy, can_switch_users, interpreter_reachable
from .errors import SetupError

PROBE_ACCOUNT = "nobody"  # an account with no rights of its own: what every user account can reach, it can


@dataclass(frozen=True)
class Identity:
    """``policy``: users get accounts by it; else ``single_user`` alone may log in (``reason``: why)."""

    policy: AccountPolicy | None
    single_user: str | None = None
    reason: str | None = None

    def environment(self) -> dict[str, str]:
        if self.policy is not None:
            return {config.ACCOUNT_TEMPLATE.name: self.policy.template}
        return {config.SINGLE_USER.name: self.single_user}


def _probe() -> Account | None:
    try:
        entry = pwd.getpwnam(PROBE_ACCOUNT)
    except KeyError:
        return None
    return Account(PROBE_ACCOUNT, PROBE_ACCOUNT, entry.pw_uid, entry.pw_gid, Path("/"), "/bin/sh")


def check_reachable(users_dir: Path) -> str | None:
    """None if an unprivileged account can run this Python, import skerry and reach
    ``users_dir``; else the sentence naming what blocks it."""
    probe = _probe()
    if probe is None:
        return None  # no account to ask: the first user's start will say it
    python = sys.executable  # as given: a venv's python finds its own packages, its target would not
    package = str(Path(__file__).resolve().parent / "__init__.py")
    command = [python, "-c", "import os, sys, skerry; os.stat(sys.argv[1])", str(users_dir)]
    return interpreter_reachable(probe, command, paths=[sys.executable, package, str(users_dir / "x")])


def decide(users_dir: Path, template: str) -> Identity:
    """The identity of this platform's users' code (module docstring); ``users_dir`` is the
    data dir's ``users/`` (it must exist). ConfigError for a bad template, SetupError where
    accounts are possible but cannot reach Python or the data dir."""
    policy = AccountPolicy(template=template)
    why = can_switch_users(policy)
    if why is not None:
        me = getpass.getuser()
        if not HUB_NAME.match(me):
            raise SetupError(f"{why}; but {me!r} is not a hub user name (lower-case letters, digits, "
                             f"'.', '_' and '-'), so nobody could log in")
        return Identity(None, single_user=me, reason=why)
    blocked = check_reachable(users_dir)
    if blocked is not None:
        raise SetupError(f"users' servers run as their own accounts, and {blocked}")
    return Identity(policy)
