"""``SkerryAuthenticator``: NativeAuthenticator with an admin that exists from the start.

Users sign up on the login page (``/hub/signup``); an admin approves them at
``/hub/authorize``, or creates them first in the admin page, which approves them in
advance (``allow_existing_users``). Nobody logs in unapproved.

The built-in admin (``admin``) logs in with the password in
``DATA_DIR/secrets/admin-password``, generated on first start: nobody can claim
the admin name by signing up first.
"""

import hmac

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from traitlets import Unicode


class _NoTimer:
    def start(self):
        return self

    def stop(self, send=True):
        return None


class _NoStatsd:
    def timer(self, name):
        return _NoTimer()


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login page, fixed for JupyterHub 6.

    nativeauthenticator 1.3 times each login with ``self.statsd``, which JupyterHub 6
    handlers no longer have: every login POST failed with a 500.
    """

    statsd = _NoStatsd()


class SkerryAuthenticator(NativeAuthenticator):
    admin_password_file = Unicode(
        "",
        config=True,
        help="""File holding the built-in admin's password (``skerry up`` creates it, mode 0600).

        The admin is the first name in ``Authenticator.admin_users``.
        """,
    )

    @property
    def builtin_admin(self) -> str:
        return sorted(self.admin_users)[0] if self.admin_users else ""

    def admin_password(self) -> str:
        """The built-in admin's password; empty (nobody logs in as admin) if the file is missing."""
        try:
            with open(self.admin_password_file) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    async def authenticate(self, handler, data):
        username = self.normalize_username(data.get("username", ""))
        if self.admin_password_file and username and username == self.builtin_admin:
            expected = self.admin_password().encode()
            if expected and hmac.compare_digest(data.get("password", "").encode(), expected):
                return username
            return None
        return await super().authenticate(handler, data)

    def check_allowed(self, username, authentication=None):
        # JupyterHub allows only allowed_users; an admin's approval at /hub/authorize counts too
        if super().check_allowed(username, authentication):
            return True
        info = self.get_user(username)
        return bool(info and info.is_authorized)

    def get_handlers(self, app):
        return [(path, LoginHandler if path == r"/login" else handler)
                for path, handler in super().get_handlers(app)]

    def create_user(self, username, password, **kwargs):
        # the built-in admin's name cannot be signed up for
        if self.normalize_username(username) == self.builtin_admin and self.admin_password_file:
            return None
        return super().create_user(username, password, **kwargs)
