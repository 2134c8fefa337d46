"""Webhook delivery for finished copies: one JSON POST per copy, retried until it lands.

Rules:
- each delivery is one POST of a JSON body to one URL (``http`` or ``https`` only);
- a 2xx answer ends it; a connection error, a timeout or a 5xx answer is retried with
  exponential backoff (``first_delay`` doubling, capped at ``max_delay``) until
  ``give_up_after`` seconds have passed since the first try, then it is dropped and logged;
- a 4xx answer is the receiver refusing the body: retrying cannot change it, so it is
  logged and dropped at once;
- URLs are logged without user info or query string (they may carry a token);
- one thread delivers everything, due deliveries first: a receiver that is down costs
  a timer, never a blocked thread per copy;
- each delivery ends once, told to its ``outcome`` callback: ``"delivered"`` (2xx),
  ``"refused"`` (another answer below 500) or ``"dropped"`` (given up, or an unusable URL).
"""

import heapq
import itertools
import logging
import threading
import time
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)


def check_url(url) -> str | None:
    """None when ``url`` can receive webhooks, else why not (a sentence)."""
    if not isinstance(url, str) or not url:
        return "the webhook must be a URL string"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"the webhook {url!r} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the webhook {url!r} must be an http:// or https:// URL with a host"
    return None


def shown(url: str) -> str:
    """The URL as logged: without user info or query (they may carry a receiver's token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


class WebhookSender:
    """Delivers JSON POSTs in the background; ``send(url, body)`` returns at once."""

    def __init__(self, first_delay=1.0, max_delay=30.0, give_up_after=600.0, timeout=10.0):
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.give_up_after = give_up_after
        self.timeout = timeout
        self._due = []  # heap of (when, seq, delivery)
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self.pending = 0  # deliveries neither delivered nor dropped yet
        self._thread = threading.Thread(target=self._run, name="skerry-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, body: dict, outcome=None) -> None:
        """Deliver ``body`` to ``url``; ``outcome(word)`` is called once when the delivery ends."""
        with self._wake:
            self.pending += 1
        delivery = {"url": url, "body": body, "first": time.monotonic(), "delay": self.first_delay,
                    "attempts": 0, "outcome": outcome}
        self._schedule(delivery, 0.0)

    def stop(self):
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _finished(self, delivery, outcome: str):
        with self._wake:
            self.pending -= 1
        if delivery["outcome"] is not None:
            delivery["outcome"](outcome)

    def _schedule(self, delivery, delay):
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), delivery))
            self._wake.notify()

    def _run(self):
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                with self._wake:
                    while not self._stopped and (not self._due or self._due[0][0] > time.monotonic()):
                        self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                    if self._stopped:
                        return
                    _, _, delivery = heapq.heappop(self._due)
                try:
                    self._attempt(client, delivery)
                except Exception as e:  # a URL httpx cannot use at all: no retry can help
                    log.warning("webhook %s for copy %s dropped: %s", shown(delivery["url"]),
                                delivery["body"].get("id"), type(e).__name__)
                    self._finished(delivery, "dropped")

    def _attempt(self, client, delivery):
        delivery["attempts"] += 1
        url = delivery["url"]
        where = shown(url)
        try:
            status = client.post(url, json=delivery["body"]).status_code
            problem = None if status < 500 else f"answered {status}"
        except httpx.HTTPError as e:
            status, problem = None, f"{type(e).__name__}"
        if problem is None:
            if status >= 300:
                log.warning("webhook %s refused copy %s with %s; not retried",
                            where, delivery["body"].get("id"), status)
            self._finished(delivery, "delivered" if status < 300 else "refused")
            return
        waited = time.monotonic() - delivery["first"]
        if waited + delivery["delay"] > self.give_up_after:
            log.warning("webhook %s for copy %s: giving up after %d attempts in %.0f s (%s)",
                        where, delivery["body"].get("id"), delivery["attempts"], waited, problem)
            self._finished(delivery, "dropped")
            return
        log.info("webhook %s for copy %s failed (%s); retrying in %.1f s",
                 where, delivery["body"].get("id"), problem, delivery["delay"])
        delay = delivery["delay"]
        delivery["delay"] = min(delay * 2, self.max_delay)
        self._schedule(delivery, delay)
