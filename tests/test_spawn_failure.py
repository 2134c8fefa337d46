"""The spawn page: the steps of a start as they happen, and a server that cannot start says
why (issue 15, must show 2); its user reads its log, and only their own, at ``/hub/skerry/log``.

alice's own Jupyter configuration (``~/.jupyter/jupyter_server_config.py``, hers to edit)
sets a setting to a value Jupyter refuses: her Jupyter server exits at start. In headless
Chromium she starts her server from the hub; the spawn page shows the sentence Jupyter
printed, and where her log is (screenshot kept in ``test-artifacts/``). Real components:
the platform, alice's own OS account, Jupyter's own start-up, Chromium.
"""

import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from chromium import browser, log_in, logged_in, sign_up, text_of  # noqa: F401, F811 (browser: a fixture)
from helpers import REPO, progress_events, wait_for

pytestmark = pytest.mark.platform

PASSWORD = "a-long-Passw0rd-for-the-spawn-page"
ARTIFACTS = REPO / "test-artifacts"
BROKEN = "c.ServerApp.max_body_size = 'lots'  # an int is wanted\n"
JUPYTER_SAYS = "The 'max_body_size' trait of a ServerApp instance expected an int, not the str 'lots'."


@pytest.mark.timeout(300)
def test_the_spawn_page_says_why_a_server_could_not_start_and_she_reads_her_log(platform, browser, tmp_path):
    for name in ("alice", "bob"):
        platform.create_user(name)
        sign_up(platform, name, PASSWORD)
    config = platform.data_dir / "users" / "alice" / ".jupyter" / "jupyter_server_config.py"
    config.parent.mkdir(parents=True)
    config.write_text(BROKEN)
    platform.give(config.parent, "alice")  # her own file, as if she had written it

    # she logs in and asks for her server on the hub's spawn page, as a user does
    log_in(browser, platform, "alice", PASSWORD, "/hub/spawn")
    # the spawn page shows the start's progress; a start that fails within its first second
    # gets the hub's error page at once, at the same address (JupyterHub waits 1 s for it)
    wait_for(lambda: browser.js("!!document.querySelector('#spawn_form, #progress-message, .progress')")
             or "exited at start" in text_of(browser, "body"), 60, what="the spawn page")
    if browser.js("!!document.querySelector('#spawn_form')"):  # the profile form: its default, started
        browser.js("document.querySelector('#spawn_form [type=submit]').click()")
    page = wait_for(lambda: "exited at start" in (text := text_of(browser, "body")) and text, 120, 1.0,
                    what="the spawn page to say the start failed")
    assert JUPYTER_SAYS in page, page
    assert "alice's server log: /hub/skerry/log" in page, page
    time.sleep(0.5)
    shot = browser.screenshot(tmp_path / "spawn-page-failed-start.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert platform.server("alice") is None  # nothing left running

    # her log, in the same browser: Jupyter's own lines of that start
    browser.navigate(f"{platform.url}/hub/skerry/log")
    log = wait_for(lambda: "Bad config" in (text := text_of(browser, "body")) and text, 60, what="her log")
    assert re.search(r"\[C [^\]]+ServerApp\] Bad config encountered during initialization: " + re.escape(JUPYTER_SAYS),
                     log), log
    log_file = platform.data_dir / "run" / "users" / "alice" / "default.log"
    mode, group = log_file.stat().st_mode & 0o777, log_file.stat().st_gid
    assert mode == 0o640 and group == platform.account("alice").pw_gid  # her account reads it, nobody else

    # bob reads his own (none yet), never hers; the admin may read hers
    with logged_in(platform, "bob", PASSWORD) as bob:
        own = bob.get("/hub/skerry/log")
        assert own.status_code == 404 and "has no log yet" in own.text
        for path in ("/hub/skerry/log?user=alice", "/hub/skerry/log?user=..", "/hub/skerry/log/x?user=alice"):
            theirs = bob.get(path)
            assert theirs.status_code == 404 and "Bad config" not in theirs.text, (path, theirs.status_code)
    admin = (platform.data_dir / "secrets" / "admin-password").read_text().strip()
    with logged_in(platform, "admin", admin) as client:
        hers = client.get("/hub/skerry/log?user=alice")
        assert hers.status_code == 200 and JUPYTER_SAYS in hers.text
        assert hers.headers["content-type"].startswith("text/plain")

    # mended, her server starts; the new start's lines follow the old ones in the same log
    config.write_text("c.ServerApp.max_body_size = 1 << 30\n")
    platform.start_server("alice")
    text = log_file.read_text()
    assert text.index("Bad config") < text.rindex("Jupyter Server") and "skerry extension loaded" in text


def test_the_spawn_page_streams_the_real_steps_of_a_start(platform):
    """The events the spawn page shows (JupyterHub's progress API), in order: the start queue,
    then the server's own steps, each when it has happened."""
    platform.create_user("carol")
    with ThreadPoolExecutor(1) as pool:  # the POST answers once the start is done (or after 10 s)
        posted = pool.submit(platform.api, "POST", "/hub/api/users/carol/server")
        wait_for(lambda: platform.api("GET", "/hub/api/users/carol").json()["pending"] == "spawn", 30, 0.05,
                 what="carol's start to be pending")
        events = progress_events(platform, "carol")
        assert posted.result().status_code in (201, 202), posted.result().text
    messages = [e.get("message", "") for e in events]
    account = platform.account("carol").pw_name
    wanted = [f"Your account {account} is ready", "Your storage: home",
              "Starting your Jupyter server and WebDAV endpoint", "Your WebDAV endpoint answers at /dav/carol/",
              "Your Jupyter server answers"]
    steps = [m for m in messages if m in wanted]
    assert steps == wanted, messages
    progress = [e["progress"] for e in events if "progress" in e]
    assert progress == sorted(progress) and events[-1].get("ready"), events
