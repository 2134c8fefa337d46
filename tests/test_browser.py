"""JupyterLab in headless Chromium on a running platform: the tutorial pipeline, end to end,
and a failed run's monitor linking the output notebook of a failed job (below).

Must show 2 (issue 5): alice logs in at the hub's login page, opens the tutorial notebook
``02_first_pipeline.ipynb`` (copied into her home) in JupyterLab, runs all its cells (the
command palette's "Run All Cells", as a user would), the builder and the run monitor
render as widgets, and the monitor reaches 100% with the run succeeded. A screenshot of
the monitor is kept as a test artefact: in the test's tmp folder and in
``test-artifacts/`` at the repository's root.

The browser is the system's ``/usr/bin/chromium`` (never downloaded), driven over the
Chrome DevTools Protocol (websocket-client); the test is skipped where it is missing.
"""

import re
import shutil
import time

import nbformat

import pytest

from chromium import browser, sign_up, text_of  # noqa: F401, F811 (browser: a fixture)
from helpers import REPO, wait_for
from lab import keep, open_in_lab, open_task_stream, run_all_cells, wait_idle, write_notebook

from skerry.workload.client import Client

pytestmark = pytest.mark.platform

POOLS = {"cpu": {"workers": 1, "threads": 2}, "gpu": None}
PASSWORD = "a-long-Passw0rd-for-the-browser"
NOTEBOOK = REPO / "notebooks" / "02_first_pipeline.ipynb"


@pytest.fixture(scope="module")
def signed_up(platform, alice):
    """alice has chosen her password on the signup page; her token."""
    sign_up(platform, "alice", PASSWORD)
    return alice


@pytest.mark.timeout(600)
def test_lab_runs_the_pipeline_tutorial_and_the_monitor_reaches_100_percent(platform, signed_up, browser, tmp_path):
    alice = signed_up
    before = {r["id"] for r in platform.api("GET", "/services/skerry/api/v1/runs", token=alice).json()["runs"]}
    folder = platform.data_dir / "users" / "alice" / "tutorial"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    platform.give(folder, "alice")  # her notebook, as if she had uploaded it
    open_in_lab(browser, platform, "alice", PASSWORD, f"tutorial/{NOTEBOOK.name}")
    run_all_cells(browser)

    # the builder renders, then the monitor, which reaches 100%
    wait_for(lambda: "Pipeline name" in text_of(browser, ".skerry-builder"), 180, what="the builder widget")
    monitor = wait_for(lambda: "100%" in text_of(browser, ".skerry-monitor") and text_of(browser, ".skerry-monitor"),
                       420, 1.0, what="the monitor at 100%")
    assert "succeeded, 100%" in monitor, monitor
    assert "10 succeeded, 0 running, 0 failed, 0 queued of 10 jobs" in monitor, monitor

    browser.js("document.querySelector('.skerry-monitor').scrollIntoView({block: 'center'})")
    time.sleep(0.5)
    keep(browser.screenshot(tmp_path / "lab-pipeline-monitor.png"))

    # every cell ran (Run All stops at an error): the kernel is idle and the last cell has its number
    wait_idle(browser)
    last = "[...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].pop().querySelector('.jp-InputPrompt')"
    browser.js("(() => { const o = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
               " o.scrollTop = o.scrollHeight; })()")
    prompt = wait_for(lambda: re.search(r"\[\d+\]", browser.js(f"{last}.innerText") or "") and
                      browser.js(f"{last}.innerText"), 30, what="the last cell to show its execution number")
    errors = browser.js("[...document.querySelectorAll('.jp-OutputArea-output')]"
                        ".map(o => o.innerText).filter(t => t.includes('Traceback'))")
    assert errors == [], errors
    assert prompt

    # the platform agrees: alice's run succeeded (hers before it: other modules', sharing.py)
    runs = platform.api("GET", "/services/skerry/api/v1/runs", token=alice).json()["runs"]
    assert [r["state"] for r in runs if r["id"] not in before] == ["succeeded"], runs


@pytest.mark.timeout(600)
def test_the_monitors_link_opens_the_output_notebook_of_a_failed_notebook_job(platform, signed_up, browser,
                                                                             tmp_path):
    """Issue 15, must show 3 (the monitor's half): a notebook step fails; in JupyterLab the
    monitor lists the failed job with its sentence, and one click on its log link opens the
    job's output notebook, with the error in it, in a new tab."""
    alice = signed_up
    folder = platform.data_dir / "users" / "alice" / "failing"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    (folder / "in" / "f01.txt").write_text("one file\n")
    step = nbformat.v4.new_notebook()
    step.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("input = None\nreport = None")
    params.metadata["tags"] = ["parameters"]
    fail = "raise LookupError('no calibration for ' + input.rsplit('/', 1)[-1])"
    step.cells = [params, nbformat.v4.new_code_cell(fail)]
    nbformat.write(step, folder / "step.ipynb")
    platform.give(folder, "alice")
    client = Client(platform.url, alice)
    client.request("POST", "/modules", json={
        "name": "calibrate", "version": "1", "inputs": [{"name": "input"}],
        "outputs": [{"name": "report", "file_name": "{stem}.txt"}], "notebook": "skerry://home/failing/step.ipynb"})
    client.create_dataset("failing.in", location="skerry://home/failing/in")
    client.register_files("failing.in", [{"uri": "skerry://home/failing/in/f01.txt", "size": 9}])
    client.close_dataset("failing.in")
    client.add_workflow({"name": "calibration", "steps": [
        {"name": "calibrate", "module": "calibrate@1", "inputs": {"input": "dataset"}}]})
    run_id = client.run("calibration", "failing.in")
    wait_for(lambda: client.get_run(run_id)["state"] == "failed", 180, 1.0, what="the run to fail")
    [job] = client.jobs(client.get_run(run_id)["tasks"][0]["id"], state="failed")["jobs"]
    log = job["log"]
    assert log.startswith("skerry://home/") and log.endswith(".ipynb"), job
    write_notebook(folder / "monitor.ipynb", [f"skerry.Monitor(skerry.api, {run_id})"])
    platform.give(folder / "monitor.ipynb", "alice")

    open_in_lab(browser, platform, "alice", PASSWORD, "failing/monitor.ipynb")
    run_all_cells(browser)
    table = wait_for(lambda: text_of(browser, ".skerry-monitor table"), 120, what="the monitor's failed jobs")
    assert "LookupError" in table and "no calibration for f01.txt" in table, table
    link = "document.querySelector('.skerry-monitor table a')"
    href = browser.js(f"({link} || {{}}).href")
    assert href, browser.js("document.querySelector('.skerry-monitor table').innerHTML")
    path = log.removeprefix("skerry://")
    assert href == f"{platform.url}/user/alice/lab/tree/{path}", href
    browser.js(f"{link}.scrollIntoView({{block: 'center'}})")
    keep(browser.screenshot(tmp_path / "lab-monitor-failed-job.png"))

    browser.js(f"{link}.click()")  # one click: the output notebook opens in a new tab
    tab = browser.page(f"/lab/tree/{path}")
    wait_for(lambda: tab.js("!!document.querySelector('.jp-Notebook .jp-Cell')"), 120,
             what="the output notebook open in JupyterLab")
    shown = wait_for(lambda: "no calibration for f01.txt" in (text := tab.js(
        "[...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText).join('\\n')") or "")
        and text, 60, what="the job's error in the output notebook")
    assert "LookupError" in shown, shown
    keep(tab.screenshot(tmp_path / "lab-failed-job-output-notebook.png"))



@pytest.mark.timeout(600)
def test_the_dask_panel_in_lab_shows_alices_task_stream(platform, signed_up, browser, tmp_path):
    """Issue 15, must show 1 (its dashboard part): in JupyterLab, dask-labextension finds the
    dashboard of alice's cluster from her kernel's ``skerry.client`` (the link her server
    proxies), its Task Stream panel opens, and it draws the tasks her code runs."""
    alice = signed_up
    folder = platform.data_dir / "users" / "alice" / "dask"
    write_notebook(folder / "dashboard.ipynb", ["skerry.client.dashboard_link"])
    platform.give(folder, "alice")

    open_in_lab(browser, platform, "alice", PASSWORD, "dask/dashboard.ipynb")
    run_all_cells(browser)
    wait_idle(browser)
    link = wait_for(lambda: text_of(browser, ".jp-OutputArea-output"), 120, what="the cell's dashboard link")
    assert link.strip("'") == "/user/alice/skerry/dask/cpu/status", link

    # the Dask tab of the left sidebar finds the dashboard from the notebook's kernel; its Task
    # Stream panel draws the tasks her code runs
    drawn = open_task_stream(browser, platform, "alice", alice)
    assert drawn >= 8, drawn
    keep(browser.screenshot(tmp_path / "lab-dask-task-stream.png"))
