"""The login page: per-user passwords, nobody in without an admin's say (NativeAuthenticator),
and a built-in admin whose password is in the data dir."""

import re
from contextlib import closing

import httpx
import pytest

pytestmark = pytest.mark.platform

PASSWORD = "a-long-Passw0rd-for-tests"


def xsrf(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200
    return re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)


def login(platform, name, password) -> httpx.Client:
    client = httpx.Client(base_url=platform.url, timeout=30)
    token = xsrf(client, "/hub/login")
    r = client.post("/hub/login", data={"username": name, "password": password, "_xsrf": token})
    client.logged_in = r.status_code == 302
    client.login_page = r.text
    return client


def signup(platform, name, password) -> str:
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        token = xsrf(client, "/hub/signup")
        r = client.post("/hub/signup", data={"username": name, "signup_password": password,
                                             "signup_password_confirmation": password, "_xsrf": token})
        assert r.status_code == 200
        return r.text


def test_login_page_is_served(platform):
    r = httpx.get(platform.url + "/hub/login")
    assert r.status_code == 200
    assert 'name="password"' in r.text and "/hub/signup" in r.text


def test_admin_logs_in_with_the_generated_password(platform):
    password = (platform.data_dir / "secrets" / "admin-password").read_text().strip()
    assert len(password) >= 16
    with closing(login(platform, "admin", password)) as client:
        assert client.logged_in
        assert client.get("/hub/admin").status_code == 200
    with closing(login(platform, "admin", password + "x")) as client:
        assert not client.logged_in
        assert "Invalid username or password" in client.login_page


def test_nobody_can_sign_up_as_admin(platform):
    signup(platform, "admin", PASSWORD)
    with closing(login(platform, "admin", PASSWORD)) as client:
        assert not client.logged_in


def test_self_signup_waits_for_approval(platform):
    signup(platform, "mallory", PASSWORD)
    with closing(login(platform, "mallory", PASSWORD)) as client:
        assert not client.logged_in
        assert "has not been authorized" in client.login_page
    password = (platform.data_dir / "secrets" / "admin-password").read_text().strip()
    with closing(login(platform, "admin", password)) as admin:
        r = admin.get("/hub/authorize/mallory")
        assert r.status_code == 302
    with closing(login(platform, "mallory", PASSWORD)) as client:
        assert client.logged_in


def test_user_created_by_admin_is_approved_on_signup(platform):
    platform.create_user("grace")
    signup(platform, "grace", PASSWORD)
    with closing(login(platform, "grace", PASSWORD)) as client:
        assert client.logged_in
        # and a logged-in user reaches only their own things
        assert client.get("/hub/admin").status_code == 403


def test_weak_password_is_refused(platform):
    page = signup(platform, "heidi", "short")
    assert "at least 8 characters" in page
    with closing(login(platform, "heidi", "short")) as client:
        assert not client.logged_in


def test_dev_flag_lets_anyone_in_and_says_so(make_platform):
    import sys

    p = make_platform(command=[sys.executable, "-m", "skerry", "up", "--dev"]).start()
    assert b"WARNING --dev: ANY user name and password logs in" in p.output
    with closing(login(p, "anyone", "anything")) as client:
        assert client.logged_in
