"""Must show 1: the README's first command, run in a fresh clone, brings up the platform;
then a new lab's first hour on it, in headless Chromium (issue 15, must show 1).

The clone gets its own plain virtual environment (no system site-packages: a dependency
missing from ``pip install .`` would be hidden by what the tests installed) and the
command is run exactly as the README gives it, with only the data dir and port appended.
pip resolves as a user's would; only its own cache makes reruns faster. The platform runs
for the whole module; its last test stops it as a terminal's Ctrl-C does.
"""

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from chromium import browser, log_in, text_of  # noqa: F401, F811 (browser: a fixture)
from helpers import REPO, Platform, kill_leftovers, pids_of, wait_for
from lab import keep, open_task_stream, run_all_cells, run_own_notebook, save, show_in_lab, wait_idle
from skerry.process import is_running

pytestmark = pytest.mark.platform


def readme_command(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)\n```", text, re.S)
    assert block, f"README.md has no {marker} block"
    return block.group(1).strip()


PASSWORD = "a-long-Passw0rd-for-the-first-hour"


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """The platform ``skerry up`` runs from a fresh clone, installed into a plain venv by
    the README's command: ``(platform, venv)``."""
    tmp_path = tmp_path_factory.mktemp("readme")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv}/bin:{os.environ['PATH']}",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = readme_command("up-command")
    assert command.endswith("skerry up")
    p = Platform(tmp_path / "data", command=["bash", "-c", command + ' "$@"', "readme"],
                 cwd=clone, env=env).start(timeout=480)  # pip install . resolves and installs everything
    yield p, venv
    if p.proc.poll() is None:  # the last test stops it; after a failure, this does
        os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait(30)
    kill_leftovers(p.data_dir)  # its proxy and servers, after a failure


@pytest.mark.timeout(600)
def test_readme_up_command_in_a_fresh_clone(readme, sshd, tmp_path):
    p, venv = readme
    # every adaptor type's backend and the tutorials' papermill came with pip install .
    subprocess.run([f"{venv}/bin/python", "-c", "import sshfs, s3fs, webdav4.fsspec, papermill"],
                   cwd=tmp_path, check=True)  # not this checkout's folder: its skerry/ would shadow
    # the platform runs from the clone's installation, not from this checkout
    hub_pid = int((p.data_dir / "run" / "hub.pid").read_text().split()[0])
    hub_cmd = open(f"/proc/{hub_pid}/cmdline", "rb").read().decode()
    assert str(venv) in hub_cmd, hub_cmd

    p.create_user("carol")
    token = p.user_token("carol")
    # an SFTP adaptor: the service reads its key (asyncssh), carol's server its files (sshfs)
    sftp_root = tmp_path / "sftp"
    sftp_root.mkdir()
    api = "/services/skerry/api/v1/users/carol"
    r = p.api("PUT", f"{api}/credentials/hpc-key", token, json={"kind": "ssh-key", "private_key": sshd.key})
    assert r.status_code == 200, r.text
    r = p.api("PUT", f"{api}/adaptors/hpc", token, json={
        "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
        "path": str(sftp_root), "credentials": "hpc-key"})
    assert r.status_code == 200, r.text
    r = p.api("POST", "/hub/api/users/carol/server")
    assert r.status_code in (201, 202)
    wait_for(lambda: (p.server("carol") or {}).get("ready"), 60, what="carol's server")
    r = httpx.get(f"{p.url}/user/carol/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    r = httpx.request("PROPFIND", f"{p.url}/dav/carol/", auth=("carol", token), headers={"Depth": "1"})
    assert r.status_code == 207 and "/dav/carol/hpc/" in r.text
    r = httpx.put(f"{p.url}/dav/carol/hpc/hello.txt", content=b"over sftp", auth=("carol", token))
    assert r.status_code == 201, r.text
    assert (sftp_root / "hello.txt").read_bytes() == b"over sftp"


def spawn_steps(browser, what: str) -> str:
    """The spawn page's event log, read until ``what`` is in it (the page leaves once ready)."""
    log = "(document.querySelector('#progress-log') || {}).textContent || ''"
    return wait_for(lambda: what in (text := browser.js(log)) and text, 120, 0.1,
                    what=f"the spawn page to say {what!r}")


def wait_for_lab(browser, platform, user: str) -> None:
    wait_for(lambda: f"/user/{user}/lab" in browser.js("location.href")
             and browser.js("!!document.querySelector('.jp-DirListing')"), 180, what="JupyterLab")


@pytest.mark.timeout(900)
def test_the_first_hour_in_a_browser(readme, browser, s3server, tmp_path):
    """The admin adds alice on the admin page; she signs up, logs in and spawns (the spawn
    page shows the real steps); her home has the tutorials; she runs 02_first_pipeline to
    100%; the Dask panel draws her task stream; she adds an S3 adaptor on the storage page,
    restarts, and reads a file of the bucket in a notebook. Screenshots of each stage."""
    p, _ = readme
    admin_password = (p.data_dir / "secrets" / "admin-password").read_text().strip()

    # the admin adds alice (the admin page's "Add Users")
    log_in(browser, p, "admin", admin_password, "/hub/admin#/add-users")
    wait_for(lambda: browser.js("!!document.querySelector('#add-user-textarea')"), 60, what="the add-users form")
    browser.click("#add-user-textarea")
    browser.send("Input.insertText", text="alice")
    browser.click("#submit")  # the textarea's blur takes its names, then the click sends them
    wait_for(lambda: p.api("GET", "/hub/api/users/alice").status_code == 200, 30, what="alice to exist")
    browser.navigate(f"{p.url}/hub/logout")

    # alice signs up (an account the admin made is approved at once), then logs in and spawns
    browser.navigate(f"{p.url}/hub/signup")
    wait_for(lambda: browser.js("!!document.querySelector('input[name=signup_password]')"), 60, what="the signup page")
    browser.js(f"""(() => {{
        document.querySelector('input[name=username]').value = 'alice';
        document.querySelector('input[name=signup_password]').value = {PASSWORD!r};
        document.querySelector('input[name=signup_password_confirmation]').value = {PASSWORD!r};
        document.querySelector('input[name=signup_password]').form.requestSubmit(); }})()""")
    answer = wait_for(lambda: browser.js("(document.querySelector('.alert') || {}).className || ''"), 60,
                      what="the signup page's answer")
    assert "alert-danger" not in answer, text_of(browser, ".alert")  # approved: her login below works
    log_in(browser, p, "alice", PASSWORD, "/hub/spawn")
    steps = spawn_steps(browser, "Your storage: home")
    assert "Your account" in steps and "is ready" in steps, steps
    keep(browser.screenshot(tmp_path / "first-hour-spawn-page.png"))
    wait_for_lab(browser, p, "alice")
    token = p.user_token("alice")

    # the tutorials are in her home: open the pipeline one from the file browser's folder
    browser.navigate(f"{p.url}/user/alice/lab/tree/home/tutorials?reset")
    listed = wait_for(lambda: "02_first_pipeline.ipynb" in (t := text_of(browser, ".jp-DirListing-content")) and t,
                      120, what="the tutorials in the file browser")
    assert "01_storage_tour.ipynb" in listed and "04_gpu_pool.ipynb" in listed, listed
    keep(browser.screenshot(tmp_path / "first-hour-tutorials.png"))
    browser.navigate(f"{p.url}/user/alice/lab/tree/home/tutorials/02_first_pipeline.ipynb?reset")
    show_in_lab(browser)
    run_all_cells(browser)
    monitor = wait_for(lambda: "100%" in text_of(browser, ".skerry-monitor") and text_of(browser, ".skerry-monitor"),
                       420, 1.0, what="the monitor at 100%")
    assert "succeeded, 100%" in monitor, monitor
    browser.js("document.querySelector('.skerry-monitor').scrollIntoView({block: 'center'})")
    keep(browser.screenshot(tmp_path / "first-hour-pipeline.png"))
    wait_idle(browser)
    save(browser)

    # her own notebook asks for her Dask client; the Dask panel then draws her task stream
    run_own_notebook(browser, p, "alice", "dask.ipynb", ["skerry.client"], "skerry/dask/cpu/status")
    assert open_task_stream(browser, p, "alice", token) >= 8
    keep(browser.screenshot(tmp_path / "first-hour-task-stream.png"))

    # an S3 bucket of hers, added on the storage page, mounted at the restart, read in a notebook
    s3server.make_bucket("alice-first-hour")
    import s3fs

    s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                      client_kwargs={"endpoint_url": s3server.url}).pipe("alice-first-hour/hello.txt", b"hello S3")
    browser.navigate(f"{p.url}/hub/skerry/storage?type=s3")
    wait_for(lambda: browser.js("!!document.querySelector('#f-bucket')"), 60, what="the storage page")
    browser.js(f"""(() => {{
        const set = (id, value) => {{ document.querySelector(id).value = value; }};
        set('#f-name', 'bucket'); set('#f-bucket', 'alice-first-hour'); set('#f-endpoint_url', {s3server.url!r});
        set('#f-credential_kind', 's3'); set('#f-cred_key', 'testing'); set('#f-cred_secret', 'first-hour-secret');
    }})()""")
    browser.js("document.querySelector('#add').click()")  # the form's own submit button
    wait_for(lambda: browser.js("!!document.querySelector('#added #restart')"), 60, what="the adaptor saved")
    assert "first-hour-secret" not in browser.js("document.documentElement.outerHTML")
    keep(browser.screenshot(tmp_path / "first-hour-storage-page.png"))
    browser.js("document.querySelector('#restart').click()")
    wait_for_lab(browser, p, "alice")
    run_own_notebook(browser, p, "alice", "read.ipynb", ["skerry.fs.cat('bucket/hello.txt').decode()"], "hello S3")
    keep(browser.screenshot(tmp_path / "first-hour-read-s3.png"))


def test_ctrl_c_stops_the_whole_platform(readme):
    p, _ = readme
    pgid = p.group_of("carol")
    # Ctrl-C in a terminal: SIGINT to the whole foreground process group
    os.killpg(p.proc.pid, signal.SIGINT)
    p.proc.wait(90)
    assert p.proc.returncode == 0
    def left() -> dict[int, str]:
        found = {}
        for pid in pids_of(str(p.data_dir), environ=True):
            try:
                found[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:160]
            except OSError:
                pass
        return found

    try:
        wait_for(lambda: not is_running(pgid) and not left(), timeout=30, what="every process of the platform to exit")
    except AssertionError:
        raise AssertionError(f"still running 30 s after Ctrl-C: {left()}") from None
