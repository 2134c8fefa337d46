"""Headless Chromium for tests of the real platform, driven over the Chrome DevTools Protocol.

The browser is the system's ``/usr/bin/chromium`` (never downloaded), driven through
websocket-client; the ``browser`` fixture skips the test where it is missing. Import the
fixture into a test module (``from chromium import browser``) to use it there.
"""

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from helpers import wait_for


class Page:
    """One page (tab) of the browser, driven over its DevTools websocket."""

    def __init__(self, debugger_url: str):
        import websocket

        self.ws = websocket.create_connection(debugger_url, timeout=120)
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

    def click(self, selector: str) -> None:
        """A mouse click (press and release) at the middle of the element ``selector`` finds,
        as a user clicks: widgets that listen for the mouse, not for ``click()``, see it too."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path


class Chromium(Page):
    """A headless Chromium, driven through its first page; ``page(...)`` reaches the others."""

    def __init__(self, executable: str, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, what="Chromium's DevTools port")
        self.port = port_file.read_text().split()[0]
        pages = wait_for(self._pages, 30, what="Chromium's first page")
        super().__init__(pages[0]["webSocketDebuggerUrl"])
        self.others: list[Page] = []

    def _pages(self) -> list[dict]:
        return [t for t in httpx.get(f"http://127.0.0.1:{self.port}/json/list").json() if t["type"] == "page"]

    def page(self, url_part: str, timeout: float = 60) -> Page:
        """Another page (a tab a link opened) whose URL holds ``url_part``."""
        found = wait_for(lambda: [t for t in self._pages() if url_part in t["url"]], timeout,
                         what=f"a page at a URL with {url_part!r}")
        page = Page(found[0]["webSocketDebuggerUrl"])
        self.others.append(page)
        return page

    def close(self) -> None:
        for page in [*self.others, self]:
            page.ws.close()
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


@contextlib.contextmanager
def logged_in(platform, name: str, password: str):
    """An HTTP client holding ``name``'s hub login cookie."""
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        page = client.get("/hub/login")
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
        r = client.post("/hub/login?next=/hub/home", data={"username": name, "password": password, "_xsrf": xsrf})
        assert r.status_code == 302 and r.headers["location"].endswith("/hub/home"), (r.status_code, r.text)
        yield client


def text_of(browser, selector: str) -> str:
    return browser.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")


def log_in(browser, platform, name: str, password: str, next_url: str) -> None:
    """``name`` logs in on the hub's login page, which then opens ``next_url`` (a path)."""
    browser.navigate(f"{platform.url}/hub/login?next={quote(next_url)}")
    wait_for(lambda: browser.js("!!document.querySelector('#password_input')"), 60, what="the login page")
    browser.js(f"""(() => {{
        document.querySelector('#username_input').value = {json.dumps(name)};
        document.querySelector('#password_input').value = {json.dumps(password)};
        document.querySelector('#login_submit').click(); }})()""")
