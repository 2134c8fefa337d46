"""JupyterLab in headless Chromium on a running platform: the tutorial pipeline, end to end.

Must show 2 (issue 5): alice logs in at the hub's login page, opens the tutorial notebook
``02_first_pipeline.ipynb`` (copied into her home) in JupyterLab, runs all its cells (the
command palette's "Run All Cells", as a user would), the builder and the run monitor
render as widgets, and the monitor reaches 100% with the run succeeded. A screenshot of
the monitor is kept as a test artefact: in the test's tmp folder and in
``test-artifacts/`` at the repository's root.

The browser is the system's ``/usr/bin/chromium`` (never downloaded), driven over the
Chrome DevTools Protocol (websocket-client); the test is skipped where it is missing.
"""

import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from helpers import REPO, wait_for

pytestmark = pytest.mark.platform

POOLS = {"cpu": {"workers": 1, "threads": 2}, "gpu": None}
PASSWORD = "a-long-Passw0rd-for-the-browser"
NOTEBOOK = REPO / "notebooks" / "02_first_pipeline.ipynb"
ARTIFACTS = REPO / "test-artifacts"


class Chromium:
    """A headless Chromium and its first page, driven over the DevTools Protocol."""

    def __init__(self, executable: str, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, what="Chromium's DevTools port")
        port = port_file.read_text().split()[0]
        pages = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                                  if t["type"] == "page"], 30, what="Chromium's first page")
        import websocket

        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=120)
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        """One DevTools command; its result (events on the way are dropped)."""
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def key(self, key: str, code: str, keycode: int, modifiers: int = 0) -> None:
        """Press and release a key (modifiers: 2 Ctrl, 8 Shift)."""
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=keycode,
                      modifiers=modifiers)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("no chromium here (apt-get install -y chromium)")
    b = Chromium(chromium, tmp_path / "chromium")
    yield b
    b.close()


def sign_up(platform, name: str, password: str) -> None:
    """``name`` (made by the admin: approved) chooses a password on the hub's signup page."""
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        page = client.get("/hub/signup")
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
        r = client.post("/hub/signup", data={"username": name, "signup_password": password,
                                             "signup_password_confirmation": password, "_xsrf": xsrf})
        assert r.status_code == 200, r.text


def text_of(browser, selector: str) -> str:
    return browser.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")


@pytest.mark.timeout(600)
def test_lab_runs_the_pipeline_tutorial_and_the_monitor_reaches_100_percent(platform, alice, browser, tmp_path):
    wait_for((platform.data_dir / "run" / "dask-pools.json").exists, 120, what="the scheduler's pools")
    sign_up(platform, "alice", PASSWORD)
    folder = platform.data_dir / "users" / "alice" / "tutorial"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)

    # the hub's login page, then JupyterLab on the notebook (the server's root: one folder per adaptor)
    lab = f"/user/alice/lab/tree/home/tutorial/{NOTEBOOK.name}"
    browser.navigate(f"{platform.url}/hub/login?next={quote(lab)}")
    wait_for(lambda: browser.js("!!document.querySelector('#password_input')"), 60, what="the login page")
    browser.js(f"""(() => {{
        document.querySelector('#username_input').value = 'alice';
        document.querySelector('#password_input').value = {json.dumps(PASSWORD)};
        document.querySelector('#login_submit').click(); }})()""")
    wait_for(lambda: browser.js("!!document.querySelector('.jp-Notebook .jp-Cell')"), 120,
             what="JupyterLab with the notebook open")
    # the notebook's own kernel, started and idle
    wait_for(lambda: "Python 3 (skerry)" in text_of(browser, ".jp-NotebookPanel-toolbar"), 120,
             what="the skerry kernel named in the toolbar")
    wait_for(lambda: browser.js("(document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')"
                                " || {dataset: {}}).dataset.status === 'idle'"), 120, what="the kernel to be idle")

    # Run All Cells from the command palette (Ctrl+Shift+C), as a user would
    browser.js("document.querySelector('.jp-Notebook').focus()")
    browser.key("C", "KeyC", 67, modifiers=2 | 8)
    wait_for(lambda: browser.js("document.activeElement && document.activeElement.closest('.jp-ModalCommandPalette,"
                                " #command-palette') !== null"), 30, what="the command palette")
    browser.send("Input.insertText", text="Run All Cells")
    time.sleep(0.5)  # the palette filters as it is typed
    browser.key("Enter", "Enter", 13)

    # the builder renders, then the monitor, which reaches 100%
    wait_for(lambda: "Pipeline name" in text_of(browser, ".skerry-builder"), 180, what="the builder widget")
    monitor = wait_for(lambda: "100%" in text_of(browser, ".skerry-monitor") and text_of(browser, ".skerry-monitor"),
                       420, 1.0, what="the monitor at 100%")
    assert "succeeded, 100%" in monitor, monitor
    assert "10 succeeded, 0 running, 0 failed, 0 queued of 10 jobs" in monitor, monitor

    browser.js("document.querySelector('.skerry-monitor').scrollIntoView({block: 'center'})")
    time.sleep(0.5)
    shot = browser.screenshot(tmp_path / "lab-pipeline-monitor.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)

    # every cell ran (Run All stops at an error): the kernel is idle and the last cell has its number
    wait_for(lambda: browser.js("(document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')"
                                " || {dataset: {}}).dataset.status === 'idle'"), 120, what="the kernel to be idle")
    last = "[...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].pop().querySelector('.jp-InputPrompt')"
    browser.js("(() => { const o = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
               " o.scrollTop = o.scrollHeight; })()")
    prompt = wait_for(lambda: re.search(r"\[\d+\]", browser.js(f"{last}.innerText") or "") and
                      browser.js(f"{last}.innerText"), 30, what="the last cell to show its execution number")
    errors = browser.js("[...document.querySelectorAll('.jp-OutputArea-output')]"
                        ".map(o => o.innerText).filter(t => t.includes('Traceback'))")
    assert errors == [], errors
    assert prompt

    # the platform agrees: alice's run succeeded
    runs = platform.api("GET", "/services/skerry/api/v1/runs", token=alice).json()["runs"]
    assert [r["state"] for r in runs] == ["succeeded"], runs
