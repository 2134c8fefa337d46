"""JupyterLab in headless Chromium, as a user drives it: open a notebook, run all its cells,
open the Dask panel's task stream; screenshots kept in ``test-artifacts/``."""

import shutil
from pathlib import Path

import nbformat

from chromium import log_in, text_of
from helpers import REPO, wait_for

ARTIFACTS = REPO / "test-artifacts"

# tasks her code runs on her cluster, so that a task stream has something to draw
TASKS = """
import time
def slow(x):
    time.sleep(0.05)
    return x
for _ in range(40):
    skerry.client.gather(skerry.client.map(slow, range(8), pure=False))
"""
# the number of rectangles the task stream panel (a same-origin iframe of bokeh) draws
RECTANGLES = """(() => {
  const frame = document.querySelector('.dask-DaskDashboard-widget iframe');
  const w = frame && frame.contentWindow;
  if (!w || !w.Bokeh || !w.Bokeh.documents.length) return 0;
  let n = 0;
  for (const m of w.Bokeh.documents[0].all_models) {
    const d = m.data;
    const duration = d instanceof Map ? d.get('duration') : d && d.duration;
    if (duration) n = Math.max(n, duration.length);
  }
  return n;
})()"""


def write_notebook(path: Path, cells: list[str], kernel: str = "skerry") -> Path:
    """A notebook of code ``cells`` for the kernel ``kernel`` ("skerry" or "python3")."""
    nb = nbformat.v4.new_notebook()
    names = {"skerry": "Python 3 (skerry)", "python3": "Python 3"}
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": names[kernel], "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def open_in_lab(browser, platform, user: str, password: str, path: str) -> None:
    """``user`` logs in and JupyterLab opens their notebook at ``path`` (in their home), its
    kernel idle."""
    # the hub's login page, then JupyterLab on the notebook (the server's root: one folder per adaptor),
    # its workspace reset: the notebooks an earlier test left open stay closed
    log_in(browser, platform, user, password, f"/user/{user}/lab/tree/home/{path}?reset")
    show_in_lab(browser)


def run_own_notebook(browser, platform, user: str, name: str, cells: list[str], expected: str) -> None:
    """A notebook of ``user``'s (``name`` in their home, as if they wrote it) opened in their
    JupyterLab and run; returns once its outputs show ``expected``, the notebook saved."""
    home = platform.data_dir / "users" / user
    write_notebook(home / name, cells)
    platform.give(home / name, user)
    browser.navigate(f"{platform.url}/user/{user}/lab/tree/home/{name}?reset")
    show_in_lab(browser)
    run_all_cells(browser)
    wait_for(lambda: expected in outputs(browser), 180, what=f"{expected!r} in the outputs of {name}")
    save(browser)


def show_in_lab(browser) -> None:
    """Wait for JupyterLab's open notebook and its kernel, idle."""
    wait_for(lambda: browser.js("!!document.querySelector('.jp-Notebook .jp-Cell')"), 120,
             what="JupyterLab with the notebook open")
    # the notebook's own kernel, started and idle
    wait_for(lambda: "Python 3 (skerry)" in text_of(browser, ".jp-NotebookPanel-toolbar"), 120,
             what="the skerry kernel named in the toolbar")
    wait_idle(browser)


def wait_idle(page) -> None:
    wait_for(lambda: page.js("(document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')"
                             " || {dataset: {}}).dataset.status === 'idle'"), 120, what="the kernel to be idle")


def run_all_cells(browser) -> None:
    """Run All Cells from the command palette (Ctrl+Shift+C), as a user would; pressed once
    more if the palette has not opened 45 s later (a busy page may miss a press; it may
    also handle one late, and a press every few seconds could toggle that palette shut).
    Enter is pressed once the palette has filtered down to that command."""
    opened = ("document.activeElement && document.activeElement.closest('.jp-ModalCommandPalette,"
              " #command-palette') !== null")
    for attempt in (1, 2):
        browser.js("document.querySelector('.jp-Notebook').focus()")
        browser.key("C", "KeyC", 67, modifiers=2 | 8)
        try:
            wait_for(lambda: browser.js(opened), 45, what="the command palette")
            break
        except AssertionError:
            if attempt == 2:
                raise
    browser.send("Input.insertText", text="Run All Cells")
    # the palette filters as it is typed: Enter runs whichever command is active by then
    wait_for(lambda: browser.js("((document.querySelector('.lm-CommandPalette-item.lm-mod-active"
                                " .lm-CommandPalette-itemLabel') || {}).textContent || '') === 'Run All Cells'"),
             30, what="Run All Cells to be the palette's chosen command")
    browser.key("Enter", "Enter", 13)


def save(browser) -> None:
    """Save the open notebook (Ctrl+S), as a user does before leaving: JupyterLab asks before
    leaving a page with unsaved changes, and that question would hold the browser."""
    browser.js("document.querySelector('.jp-Notebook').focus()")
    browser.key("s", "KeyS", 83, modifiers=2)
    wait_for(lambda: browser.js("!document.querySelector('.lm-DockPanel-tabBar .jp-mod-dirty')"), 30,
             what="the notebook to be saved")


def outputs(browser) -> str:
    """The text of every output of the open notebook."""
    return browser.js("[...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText).join('\\n')")


def click_until_shown(browser, selector: str, shown: str, interval: float, what: str, timeout: float = 60) -> None:
    """Click ``selector`` until the JavaScript check ``shown`` is true (``timeout`` seconds at
    most): a click the lab was not ready for (busy, or a notice over the element) is lost, so
    click again every ``interval`` seconds while it has not shown."""

    def clicked_and_shown() -> bool:
        if browser.js(shown):
            return True
        browser.click(selector)
        return False

    wait_for(clicked_and_shown, timeout, interval, what=what)


def open_task_stream(browser, platform, user: str, token: str) -> int:
    """In the open JupyterLab, with a notebook whose kernel used ``skerry.client``: the Dask
    tab finds the dashboard from that kernel (its search button), its Task Stream panel
    opens, and ``user``'s code runs tasks on their cluster (another kernel of theirs); the
    rectangles the panel then draws."""
    from skerry.kernels.remote import RemoteKernel

    click_until_shown(browser, '.lm-TabBar-tab[data-id="dask-dashboard-launcher"]',
                      "!document.querySelector('#dask-dashboard-launcher').classList.contains('lm-mod-hidden')",
                      3.0, what="the Dask sidebar")
    # the kernel had no client when the notebook opened (skerry.client is made on first use): search
    found = ("(() => { try { return document.querySelector('.dask-URLInput-wrapper input').value"
             f".includes('/user/{user}/skerry/dask/cpu'); }} catch (e) {{ return false; }} }})()")
    click_until_shown(browser, '#dask-dashboard-launcher jp-button[title="Auto-detect dashboard URL"]', found, 15.0,
                      what="dask-labextension to find the dashboard from the kernel", timeout=120)
    task_stream = ("[...document.querySelectorAll('.dask-DashboardListing-item')]"
                   ".find(b => b.innerText.trim().toLowerCase() === 'task stream')")
    wait_for(lambda: browser.js(f"!!({task_stream})"), 60, what="the panels (checked by the browser)")
    browser.js(f"({task_stream}).scrollIntoView({{block: 'center'}})")
    browser.js(f"({task_stream}).id = 'skerry-test-task-stream'")  # for the mouse to find it

    panel = "!!document.querySelector('.dask-DaskDashboard-widget iframe')"
    click_until_shown(browser, "#skerry-test-task-stream", panel, 5.0, what="the Task Stream panel")
    src = browser.js("document.querySelector('.dask-DaskDashboard-widget iframe').src")
    assert src.startswith(f"{platform.url}/user/{user}/skerry/dask/cpu/"), src
    with RemoteKernel(f"{platform.url}/user/{user}/", token, "skerry") as kernel:
        result = kernel.execute(TASKS, timeout=300)
        assert result.error is None, "\n".join(result.error["traceback"])
    return wait_for(lambda: browser.js(RECTANGLES), 60, what="the task stream to draw the tasks")


def keep(shot: Path) -> None:
    """A screenshot, kept in ``test-artifacts/``."""
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
