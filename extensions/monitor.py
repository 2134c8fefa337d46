"""The run monitor: a widget that follows one run of the platform, by its id.

    from skerry.extensions.monitor import Monitor
    Monitor(client, 42)          # or Monitor.attach(42): $SKERRY_URL, $SKERRY_TOKEN

It shows, per step (task), bars of its jobs succeeded / running / failed / queued, a
throughput plot (jobs ended per second, an SVG drawn here), the failed jobs with their
error class, sentence and a link to their log (the output notebook for a notebook step), and per
task a Cancel button and a rank field with a Rank button.

Rules:

- it holds nothing but the run's id: every view is read from the REST API, so a reopened
  notebook attaches again with ``Monitor(client, run_id)``;
- ``refresh()`` polls once (``GET runs/<id>``, ``GET jobs?task=&state=failed`` for tasks
  with failures); a background thread polls every ``poll_s`` seconds and stops when the
  run is final, or the widget is closed (``close()``), or a poll fails 5 times in a row;
- queued counts the jobs waiting to run (``defined``, ``queued``, ``retrying``, and
  ``lost``: a lost worker's job runs again); ``cancelled`` ends a job without a bar;
- the percentage is of jobs ended; a run still going shows at most 99% (upstream steps may
  still add jobs), a final run 100%;
- a log location links as ``skerry.workload.loglinks`` says (``skerry://home/<path>`` opens
  in the user's Jupyter server); another is shown as text. The job JSON of the API carries
  the log location as ``log`` when the platform gives it.
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as widgets

from skerry.errors import SkerryError
from skerry.workload.loglinks import log_href
from skerry.workload.states import FINAL, run_outcome

__all__ = ["Monitor", "TaskRow", "counts", "percent", "run_state", "run_final", "Throughput", "sparkline", "log_href"]

QUEUED = ("defined", "queued", "retrying", "lost")
BARS = (("succeeded", "success"), ("running", "info"), ("failed", "danger"), ("queued", "warning"))
FAILED_SHOWN = 20  # failed jobs listed per task
LINK_STYLE = "color: var(--jp-content-link-color, #1976d2); text-decoration: underline"
POLL_FAILURES = 5


# ---- what the view shows, from the API's JSON (no widgets) ---------------------------


def counts(task: dict) -> dict[str, int]:
    """A task's jobs as succeeded, running, failed, queued, cancelled and total."""
    by = task["jobs"].get("by_state", {})
    return {"succeeded": by.get("succeeded", 0), "running": by.get("running", 0), "failed": by.get("failed", 0),
            "queued": sum(by.get(s, 0) for s in QUEUED), "cancelled": by.get("cancelled", 0),
            "total": sum(by.values())}


def run_state(run: dict) -> str:
    """The run's state; once every task is final, the state the platform is about to give it
    (``failed`` if a task failed, else ``cancelled`` if one was, else ``succeeded``)."""
    if run["state"] in FINAL:
        return run["state"]
    return run_outcome(t["state"] for t in run.get("tasks") or []) or run["state"]


def run_final(run: dict) -> bool:
    """Whether the run has ended (its state, or every task final)."""
    return run_state(run) in FINAL


def ended(run: dict) -> int:
    return sum(counts(t)["succeeded"] + counts(t)["failed"] + counts(t)["cancelled"] for t in run.get("tasks", []))


def percent(run: dict) -> int:
    """The share of the run's jobs that ended, in percent (see the rules)."""
    if run_final(run):
        return 100
    total = sum(counts(t)["total"] for t in run.get("tasks", []))
    return min(99, ended(run) * 100 // total) if total else 0


class Throughput:
    """Jobs ended per second between polls, over the last ``keep`` polls."""

    def __init__(self, keep: int = 120):
        self.keep = keep
        self.samples: list[tuple[float, int]] = []

    def add(self, t: float, ended_jobs: int) -> None:
        self.samples = (self.samples + [(t, ended_jobs)])[-(self.keep + 1):]

    def rates(self) -> list[float]:
        return [max(0.0, (n1 - n0) / (t1 - t0)) for (t0, n0), (t1, n1) in zip(self.samples, self.samples[1:])
                if t1 > t0]


def sparkline(values: list[float], width: int = 320, height: int = 48) -> str:
    """An SVG polyline of ``values`` (scaled to the largest), with the last value written."""
    if not values:
        return f"<svg width='{width}' height='{height}'><text x='4' y='{height // 2}' font-size='11'>" \
               f"no throughput yet</text></svg>"
    top = max(values) or 1.0
    step = width / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - v / top * (height - 14):.1f}" for i, v in enumerate(values))
    return (f"<svg width='{width}' height='{height}' style='background:#fafafa'>"
            f"<polyline fill='none' stroke='#1976d2' stroke-width='1.5' points='{points}'/>"
            f"<text x='4' y='11' font-size='11'>{values[-1]:.1f} jobs/s (max {top:.1f})</text></svg>")


def failed_table(rows: list[tuple[str, dict]], prefix: str | None = None) -> str:
    """HTML rows of failed jobs: step, job, error class, what went wrong, attempts, log."""
    if not rows:
        return ""
    out = ["<table><tr><th>step</th><th>job</th><th>error class</th><th>error</th><th>attempts</th>"
           "<th>log</th></tr>"]
    for step, job in rows:
        location = job.get("log")
        href = log_href(location, prefix)
        # JupyterLab's styles show a bare <a> as plain text: it is made to look like a link
        log = (f"<a href='{html.escape(href)}' target='_blank' style='{LINK_STYLE}'>{html.escape(location)}</a>"
               if href
               else html.escape(location or "(not given by the API)"))
        out.append(f"<tr><td>{html.escape(step)}</td><td>{job['id']}</td>"
                   f"<td>{html.escape(job.get('error_class') or '?')}</td>"
                   f"<td>{html.escape(job.get('error') or '')}</td><td>{job.get('attempts', '')}</td>"
                   f"<td>{log}</td></tr>")
    return "".join(out) + "</table>"


# ---- widgets --------------------------------------------------------------------


class TaskRow(widgets.VBox):
    """One task: its bars, counts, Cancel and Rank."""

    def __init__(self, monitor: Monitor, task: dict):
        self.monitor, self.task_id = monitor, task["id"]
        self.title = widgets.HTML()
        self.bars = {state: widgets.IntProgress(value=0, min=0, max=1, description=state, bar_style=style)
                     for state, style in BARS}
        self.counts = widgets.HTML()
        self.rank = widgets.FloatText(value=task["rank"], description="rank", layout=widgets.Layout(width="160px"))
        self.rank_button = widgets.Button(description="Rank", layout=widgets.Layout(width="70px"))
        self.cancel_button = widgets.Button(description="Cancel", button_style="danger",
                                            layout=widgets.Layout(width="80px"))
        self.message = widgets.HTML()
        self.rank_button.on_click(lambda _: self.set_rank(self.rank.value))
        self.cancel_button.on_click(lambda _: self.cancel())
        super().__init__([self.title, widgets.HBox(list(self.bars.values())), self.counts,
                          widgets.HBox([self.rank, self.rank_button, self.cancel_button, self.message])])
        self.update(task)

    def update(self, task: dict) -> None:
        c = counts(task)
        self.title.value = (f"<b>{html.escape(task['step'])}</b> ({html.escape(task['module'])}): "
                            f"{html.escape(task['state'])}, rank {task['rank']:g}")
        for state, bar in self.bars.items():
            bar.max = max(1, c["total"])
            bar.value = c[state]
        self.counts.value = (f"{c['succeeded']} succeeded, {c['running']} running, {c['failed']} failed, "
                             f"{c['queued']} queued" + (f", {c['cancelled']} cancelled" if c["cancelled"] else "")
                             + f" of {c['total']} jobs")
        self.cancel_button.disabled = task["state"] in FINAL

    def set_rank(self, rank: float) -> None:
        self._act(lambda: self.monitor.client.set_rank(self.task_id, rank), f"rank set to {rank:g}")

    def cancel(self) -> None:
        self._act(lambda: self.monitor.client.cancel(self.task_id), "cancelled")

    def _act(self, call, done: str) -> None:
        try:
            call()
        except SkerryError as e:
            self.message.value = f"<span style='color:#c62828'>{html.escape(str(e))}</span>"
            return
        self.message.value = html.escape(done)
        self.monitor.refresh()


class Monitor(widgets.VBox):
    """Follows run ``run_id`` (see the module docstring); ``poll_s=None``: no background poll."""

    def __init__(self, client, run_id: int, poll_s: float | None = 1.0):
        self.client, self.run_id = client, int(run_id)
        self.header = widgets.HTML()
        self.total = widgets.IntProgress(value=0, min=0, max=100, description="run", bar_style="success")
        self.plot = widgets.HTML(sparkline([]))
        self.failed = widgets.HTML()
        self.message = widgets.HTML()
        self.rows: dict[int, TaskRow] = {}
        self.rows_box = widgets.VBox([])
        self.throughput = Throughput()
        self.run: dict | None = None
        self.failed_jobs: list[tuple[str, dict]] = []  # (step, job JSON) of the last poll, at most FAILED_SHOWN a task
        self._lock = threading.Lock()
        self._stop = threading.Event()
        super().__init__([self.header, self.total, self.rows_box, self.plot, self.failed, self.message])
        self.add_class("skerry-monitor")  # a stable name for styles and browser tests
        self.refresh()
        self._thread = None
        if poll_s is not None and not self.final:
            self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True,
                                            name=f"skerry-monitor-{self.run_id}")
            self._thread.start()

    @classmethod
    def attach(cls, run_id: int, client=None, poll_s: float | None = 1.0) -> Monitor:
        """A monitor of run ``run_id``; without a client, ``Client.connect()`` ($SKERRY_URL, $SKERRY_TOKEN)."""
        if client is None:
            from skerry.workload.client import Client

            client = Client.connect()
        return cls(client, run_id, poll_s)

    @property
    def final(self) -> bool:
        return self.run is not None and run_final(self.run)

    @property
    def state(self) -> str:
        """The run's state as shown (``run_state``)."""
        return run_state(self.run) if self.run else "unknown"

    @property
    def percent(self) -> int:
        return percent(self.run) if self.run else 0

    @property
    def polling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> dict:
        """One poll: the run's JSON, every view updated from it."""
        with self._lock:
            run = self.client.get_run(self.run_id)
            failed = []
            for task in run.get("tasks", []):
                if task["jobs"].get("by_state", {}).get("failed"):
                    jobs = self.client.jobs(task["id"], "failed", limit=FAILED_SHOWN)["jobs"]
                    failed += [(task["step"], j) for j in jobs]
            self.run, self.failed_jobs = run, failed
            self.throughput.add(time.monotonic(), ended(run))
            self._draw(run, failed)
            return run

    def _draw(self, run: dict, failed: list) -> None:
        pct = percent(run)
        self.header.value = (f"<b>run {run['id']}</b>: {html.escape(run['workflow'])} over "
                             f"{html.escape(str(run['dataset']))}: <b>{html.escape(run_state(run))}</b>, {pct}%")
        self.total.value = pct
        self.total.bar_style = "danger" if run_state(run) == "failed" else "success"
        for task in run.get("tasks", []):
            if task["id"] in self.rows:
                self.rows[task["id"]].update(task)
            else:
                self.rows[task["id"]] = TaskRow(self, task)
        if len(self.rows_box.children) != len(self.rows):
            self.rows_box.children = list(self.rows.values())
        self.plot.value = sparkline(self.throughput.rates())
        self.failed.value = failed_table(failed)

    def _poll(self, poll_s: float) -> None:
        misses = 0
        while not self._stop.wait(poll_s):
            try:
                self.refresh()
                misses = 0
            except SkerryError as e:
                misses += 1
                self.message.value = html.escape(f"poll failed: {e}")
                if misses >= POLL_FAILURES:
                    return
            if self.final:
                return

    def stop(self) -> None:
        """Stop the background poll (the widget stays, ``refresh()`` still works)."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        super().close()
