"""The admin pages in the hub's UI on a running platform, in headless Chromium (issue 6, must show 1).

The admin logs in at the hub's login page (password in ``DATA_DIR/secrets/admin-password``),
opens the profiles page from the nav bar, and edits a profile in its form:

- a negative CPU limit is refused beside the field, with what was typed kept, and nothing
  is saved (REST still shows the old version; the store's rows and audit entries unchanged);
- a form read before someone else's change is refused (409) with a sentence, nothing saved;
- a valid limit is saved: version + 1, the audit log names the admin, REST shows the value.

A screenshot of the inline error is kept in ``test-artifacts/admin-profile-edit.png``.
After the page edit, alice's next server carries the new values (its state), and keeps them
when the profile changes again while it runs; the profiles page says which version each
running server started with, and the usage page counts her server, per user and per group.

On the pages without a browser: a new profile's every malformed field refused beside it
(nothing saved), then created, duplicated, disabled and enabled, each audited as the admin.
A user who is not an admin gets 403 on every page and action.
"""

import html
import re
import shutil

import httpx
import pytest

from chromium import browser, logged_in, sign_up  # noqa: F401, F811 (browser: a fixture)
from chromium import log_in as browser_log_in
from helpers import REPO, wait_for
from skerry.hub.stores.profiles import ProfileStore

pytestmark = pytest.mark.platform

POOLS = {"cpu": None, "gpu": None}  # no Dask: the pages need none
API = "/services/skerry/api/v1"
ARTIFACTS = REPO / "test-artifacts"
PASSWORD = "a-long-Passw0rd-for-the-pages"
CPU = {
    "slug": "cpu", "display_name": "CPU", "description": "for everyone",
    # memory generous: on the rlimit backend it caps each process's address space
    "resources": {"cpu_limit": 1, "mem_limit": "16Gi", "gpus": 0},
    "dask": {"max_workers": 2, "worker_memory": "1Gi"},
    "access": {"everyone": True},
}
PAGES = ["/hub/skerry/profiles", "/hub/skerry/profiles/new", "/hub/skerry/profiles/cpu",
         "/hub/skerry/profiles/cpu/audit", "/hub/skerry/usage"]


@pytest.fixture(scope="module")
def profile(platform):
    r = platform.api("POST", API + "/profiles", json=CPU)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def store(platform):
    """The platform's own profile store, opened beside the hub."""
    s = ProfileStore.for_data_dir(platform.data_dir)
    yield s
    s.dispose()


def rest_profile(platform) -> dict:
    r = platform.api("GET", API + "/profiles/cpu")
    assert r.status_code == 200, r.text
    return r.json()


def shown(page, selector: str) -> bool:
    """Whether ``selector`` is in the page (False while a new page is still loading)."""
    try:
        return bool(page.js(f"!!document.querySelector({selector!r})"))
    except AssertionError:  # the page went away under the call (a navigation)
        return False


def text(page, selector: str) -> str:
    return page.js(f"(document.querySelector({selector!r}) || {{}}).innerText || ''")


def value(page, selector: str) -> str:
    return page.js(f"document.querySelector({selector!r}).value")


def submit(page, fields: dict[str, str], then: str) -> None:
    """Fill the form's ``fields`` (by id), press Save, wait for ``then`` on the next page."""
    sets = "".join(f"document.querySelector('#{k}').value = {v!r};" for k, v in fields.items())
    page.js(f"(() => {{ {sets} document.querySelector('#save').click(); }})()")
    wait_for(lambda: shown(page, then), 60, what=f"{then} after saving")


def test_a_user_who_is_not_an_admin_gets_403_on_every_page(platform, profile):
    platform.create_user("alice")
    sign_up(platform, "alice", PASSWORD)
    with logged_in(platform, "alice", PASSWORD) as client:
        home = client.get("/hub/home")
        assert home.status_code == 200 and "skerry-profiles-link" not in home.text  # no nav link for her
        for path in PAGES:
            r = client.get(path)
            assert r.status_code == 403, (path, r.status_code)
            assert "Only admins" in r.text, path
        # writes too, with a valid _xsrf (so the 403 is the page's, not the forgery check's)
        xsrf = re.search(r'xsrf_token: "([^"]+)"', home.text).group(1)
        before = rest_profile(platform)
        for path, data in [("/hub/skerry/profiles/cpu", {"resources.cpu_limit": "8"}),
                           ("/hub/skerry/profiles/cpu/disable", {}),
                           ("/hub/skerry/profiles/cpu/duplicate", {"new_slug": "mine"})]:
            r = client.post(path, data={**data, "_xsrf": xsrf})
            assert r.status_code == 403 and "Only admins" in r.text, (path, r.status_code)
        assert rest_profile(platform) == before
    # nobody logged in, or only a token (hub pages take the login cookie): the login page
    token = platform.user_token("alice")
    for headers in ({}, {"Authorization": f"token {token}"}):
        r = httpx.get(platform.url + "/hub/skerry/profiles", headers=headers)
        assert r.status_code == 302 and "/hub/login" in r.headers["location"], (r.status_code, headers.keys())


@pytest.mark.timeout(600)
def test_admin_edits_a_profile_on_the_page_and_the_next_spawn_gets_it(platform, profile, store, browser,
                                                                      tmp_path):
    admin_password = (platform.data_dir / "secrets" / "admin-password").read_text().strip()
    browser_log_in(browser, platform, "admin", admin_password, "/hub/home")
    wait_for(lambda: shown(browser, "#skerry-profiles-link"), 60, what="the Profiles link in the nav bar")
    browser.js("document.querySelector('#skerry-profiles-link').click()")
    wait_for(lambda: shown(browser, "#profiles-table"), 60, what="the profiles page")
    row = "tr.profile-row[data-slug='cpu']"
    assert text(browser, f"{row} .profile-version") == "1"
    assert "enabled" in text(browser, f"{row} .profile-state")
    browser.js(f"document.querySelector(\"{row} a.edit-profile\").click()")
    wait_for(lambda: shown(browser, "#profile-form"), 60, what="the profile's form")
    assert value(browser, "#f-resources-cpu_limit") == "1"
    assert value(browser, "#f-resources-mem_limit") == "16Gi"

    # a negative limit: refused beside the field, what was typed kept, nothing saved
    counts = store.counts()
    submit(browser, {"f-resources-cpu_limit": "-2", "f-description": "typed, not saved"},
           "#f-resources-cpu_limit-error")
    error = text(browser, "#f-resources-cpu_limit-error")
    assert error.startswith("resources.cpu_limit:") and "greater than 0" in error, error
    assert value(browser, "#f-resources-cpu_limit") == "-2"
    assert value(browser, "#f-description") == "typed, not saved"
    assert "is-invalid" in browser.js("document.querySelector('#f-resources-cpu_limit').className")
    assert browser.js("document.querySelectorAll('.invalid-feedback').length") == 1
    browser.js("window.scrollTo(0, 0)")  # the hub's nav bar, the form, the error beside the field
    shot = browser.screenshot(tmp_path / "admin-profile-edit.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    stored = rest_profile(platform)
    assert (stored["version"], stored["resources"]["cpu_limit"], stored["description"]) == (1, 1, "for everyone")
    assert store.counts() == counts

    # a valid limit: saved as the admin, version 2
    submit(browser, {"f-resources-cpu_limit": "2"}, "#saved")
    assert text(browser, "#profile-version") == "2"
    stored = rest_profile(platform)
    assert (stored["version"], stored["resources"]["cpu_limit"], stored["updated_by"]) == (2, 2, "admin")
    assert stored["description"] == "typed, not saved"  # the whole form is saved
    last = platform.api("GET", API + "/profiles/cpu/audit").json()["audit"][-1]
    assert (last["who"], last["action"]) == ("admin", "update")
    assert last["changes"]["resources"]["new"]["cpu_limit"] == 2
    browser.navigate(f"{platform.url}/hub/skerry/profiles/cpu/audit")
    wait_for(lambda: shown(browser, "#audit-table"), 60, what="the audit page")
    assert text(browser, "tr.audit-row .audit-who") == "admin"  # newest first
    assert text(browser, "tr.audit-row .audit-action") == "update"

    # alice's next server gets the new values, with no hub restart
    assert platform.api("POST", "/hub/api/groups/lab").status_code in (201, 409)
    assert platform.api("POST", "/hub/api/groups/lab/users", json={"users": ["alice"]}).status_code == 200
    r = platform.api("POST", "/hub/api/users/alice/server", json={"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: (platform.server("alice") or {}).get("ready"), 120, what="alice's server")
    assert server_profile(platform)["version"] == 2
    assert server_profile(platform)["resources"]["cpu_limit"] == 2

    # a form read before someone else's change is refused, nothing saved
    browser.navigate(f"{platform.url}/hub/skerry/profiles/cpu")
    wait_for(lambda: shown(browser, "#profile-form"), 60, what="the profile's form")
    r = platform.api("PUT", API + "/profiles/cpu", json={**CPU, "resources": {**CPU["resources"], "cpu_limit": 3}})
    assert r.status_code == 200 and r.json()["version"] == 3, r.text
    counts = store.counts()
    submit(browser, {"f-resources-cpu_limit": "4"}, "#error")
    assert "someone changed it meanwhile" in text(browser, "#error")
    assert value(browser, "#f-resources-cpu_limit") == "4"
    assert rest_profile(platform)["resources"]["cpu_limit"] == 3 and store.counts() == counts

    # alice's running server keeps what it started with, and the page says so
    assert server_profile(platform)["version"] == 2
    browser.navigate(f"{platform.url}/hub/skerry/profiles")
    wait_for(lambda: shown(browser, "#servers-table"), 60, what="the profiles page")
    alice = "tr.server-row[data-user='alice'][data-server='']"
    assert text(browser, f"{alice} .server-profile") == "cpu"
    assert text(browser, f"{alice} .server-version") == "2"
    assert text(browser, "tr.profile-row[data-slug='cpu'] .profile-version") == "3"

    # usage: alice's server, per user and per group
    browser.js("document.querySelector('#skerry-usage-link').click()")
    wait_for(lambda: shown(browser, "#usage-table"), 60, what="the usage page")
    cells = browser.js("[...document.querySelectorAll('tr.usage-row')].map(r => [r.querySelector('.usage-user')"
                       ".innerText, r.querySelector('.usage-servers').innerText])")
    assert ["alice", "1"] in cells, cells
    browser.js("document.querySelector('#usage-by-group').click()")
    wait_for(lambda: shown(browser, "tr.usage-row .usage-group"), 60, what="the usage per group")
    assert "lab" in browser.js("[...document.querySelectorAll('tr.usage-row .usage-group')].map(c => c.innerText)")
    platform.stop_server("alice")


def server_profile(platform) -> dict:
    """The profile alice's server started with, from its state (the admin reads it)."""
    r = platform.api("GET", "/hub/api/users/alice?include_stopped_servers")
    state = r.json()["servers"][""].get("state") or {}
    assert state.get("profile"), state
    return state["profile"]


def field_error(page: str, field_id: str) -> str:
    found = re.search(rf'id="{field_id}-error">([^<]*)<', page)
    return html.unescape(found.group(1)) if found else ""


def test_admin_creates_duplicates_disables_and_enables_on_the_pages(platform, profile, store):
    password = (platform.data_dir / "secrets" / "admin-password").read_text().strip()
    with logged_in(platform, "admin", password) as client:
        page = client.get("/hub/skerry/profiles/new")
        assert page.status_code == 200 and 'id="f-slug"' in page.text
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
        form = {"_xsrf": xsrf, "slug": "gpu", "display_name": "GPU", "resources.cpu_limit": "4",
                "resources.mem_limit": "32Gi", "resources.gpus": "1", "dask.max_workers": "4",
                "dask.worker_memory": "4Gi", "access.groups": "physics, chemistry", "adaptors": "[]", "options": "{}"}

        # refused beside the field it names, nothing saved
        counts = store.counts()
        for change, field_id, expected in [
            ({"adaptors": "[{"}, "f-adaptors", "adaptors: not JSON"),
            ({"adaptors": '[{"name": "x", "type": "nope"}]'}, "f-adaptors", "adaptors[0]"),
            ({"options": "[]"}, "f-options", "options: must be a JSON object"),
            ({"resources.mem_limit": ""}, "f-resources-mem_limit", "resources.mem_limit: required"),
            ({"resources.gpus": "-1"}, "f-resources-gpus", "resources.gpus:"),
            ({"dask.worker_memory": "lots"}, "f-dask-worker_memory", "dask.worker_memory:"),
            ({"slug": "Not A Slug"}, "f-slug", "slug:"),
        ]:
            r = client.post("/hub/skerry/profiles/new", data={**form, **change})
            assert r.status_code == 400, (change, r.status_code)
            assert field_error(r.text, field_id).startswith(expected), (change, field_error(r.text, field_id))
            assert r.text.count('class="invalid-feedback') == 1, change
        assert store.counts() == counts

        # created as the admin, then shown with its values
        r = client.post("/hub/skerry/profiles/new", data=form)
        assert r.status_code == 303 and r.headers["location"] == "/hub/skerry/profiles/gpu?saved=1", r.status_code
        created = platform.api("GET", API + "/profiles/gpu").json()
        assert (created["version"], created["updated_by"]) == (1, "admin")
        assert created["resources"]["mem_limit"] == 32 * 1024**3
        assert created["access"]["groups"] == ["physics", "chemistry"]
        page = client.get(r.headers["location"]).text
        assert 'id="saved"' in page and 'value="32Gi"' in page and 'value="physics, chemistry"' in page
        r = client.post("/hub/skerry/profiles/new", data=form)  # the slug is taken
        assert r.status_code == 409 and "exists already" in r.text

        # duplicated under a new slug; a taken one is refused on the list
        r = client.post("/hub/skerry/profiles/cpu/duplicate", data={"_xsrf": xsrf, "new_slug": "cpu-big"})
        assert r.status_code == 303 and r.headers["location"] == "/hub/skerry/profiles/cpu-big", r.status_code
        copy = platform.api("GET", API + "/profiles/cpu-big").json()
        original = platform.api("GET", API + "/profiles/cpu").json()
        assert copy["version"] == 1 and copy["resources"] == original["resources"]
        r = client.post("/hub/skerry/profiles/cpu/duplicate", data={"_xsrf": xsrf, "new_slug": "gpu"})
        assert r.status_code == 409 and "exists already" in html.unescape(r.text)

        # disabled, then enabled again, each in the audit log as the admin
        r = client.post("/hub/skerry/profiles/gpu/disable", data={"_xsrf": xsrf})
        assert r.status_code == 303, r.status_code
        assert platform.api("GET", API + "/profiles/gpu").json()["disabled"] is True
        listing = client.get(r.headers["location"]).text
        assert "Profile gpu disabled." in listing
        row = re.search(r'data-slug="gpu">(.*?)</tr>', listing, re.S).group(1)
        assert ">disabled<" in row and "enable-profile" in row
        r = client.post("/hub/skerry/profiles/gpu/enable", data={"_xsrf": xsrf})
        assert r.status_code == 303 and platform.api("GET", API + "/profiles/gpu").json()["disabled"] is False
        audit = platform.api("GET", API + "/profiles/gpu/audit").json()["audit"]
        assert [(a["who"], a["action"]) for a in audit] == [("admin", "create"), ("admin", "disable"),
                                                              ("admin", "enable")]

        # an unknown profile is 404; a form without its _xsrf is refused and changes nothing
        assert client.get("/hub/skerry/profiles/nope").status_code == 404
        assert client.post("/hub/skerry/profiles/nope/disable", data={"_xsrf": xsrf}).status_code == 404
        r = client.post("/hub/skerry/profiles/gpu/disable")
        assert r.status_code == 403
        assert platform.api("GET", API + "/profiles/gpu").json()["disabled"] is False
