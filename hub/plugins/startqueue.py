"""The hub's start queue: at most ``limit`` micro-infrastructures start at once, the rest wait
in line (FIFO) and are told their place.

Twenty starts at once on 2 cores made every start slow enough to hit JupyterHub's
``start_timeout``/``http_timeout`` (56 of 180 steps failed; at forty every start failed with
``Spawn failed: `` and an empty ``TimeoutError``). Starting is mostly CPU (Python imports of the
Jupyter server and the WebDAV endpoint): past two starts per core more at once add latency,
not throughput (:func:`default_limit` has the figures); the queue turns the excess into a
visible wait.

Rules:

- one queue per hub process (:func:`start_queue`); a ticket per spawn, keyed by the server
  (``"<user>/<server name>"``); joining again with a key whose ticket is still in the queue
  releases the old one (the hub runs one spawn per server at a time: it is a leftover);
- FIFO: slots are granted in the order of :meth:`StartQueue.join`;
- a place is released, exactly once, by whatever ends first: :meth:`Ticket.release`, the
  cancellation of :meth:`Ticket.turn` (the user stops the pending start, the hub gives up),
  or the end of the future given to :meth:`Ticket.release_when_done`; a slot is never lost to
  an exception or a cancellation;
- the queue never fails a start: it has no timeout of its own. JupyterHub applies
  ``start_timeout`` with ``asyncio.wait_for`` around ``spawner.start()`` only; the wait
  happens before that, in ``Spawner.run_pre_spawn_hook`` (awaited by ``User.spawn`` with no
  timeout, before ``start()``), so ``start_timeout`` counts from the moment the start leaves
  the queue (``tests/test_startqueue.py`` checks that order in the installed JupyterHub);
- waiting starts report their place as JupyterHub progress events (``{"progress": int,
  "message": str}``) through :meth:`StartQueue.progress`, for ``Spawner.progress``.

Wiring in ``SkerrySpawner`` (hub process, one event loop)::

    async def run_pre_spawn_hook(self):
        ticket = start_queue().join(self.queue_key)
        ticket.release_when_done(self._spawn_future)  # safety net: the whole spawn's future
        self._start_ticket = ticket
        await ticket.turn()          # cancelled -> place released, CancelledError re-raised
        return await maybe_future(super().run_pre_spawn_hook())

    async def start(self):
        try:
            ...                      # unchanged; returns once both endpoints answer
        finally:
            self._release_start_ticket()      # the slot goes to the next start

    async def progress(self):
        async for event in start_queue().progress(self.queue_key):
            yield event
        yield {"progress": 50, "message": "Starting your Jupyter server and WebDAV endpoint"}

    def clear_state(self):           # the hub calls it when a start ends before start() ran
        super().clear_state(); self._release_start_ticket()
"""

import asyncio
import collections
import os
from collections.abc import AsyncIterator

from skerry.errors import Conflict

QUEUED_PROGRESS = 10  # a waiting start: after "Server requested" (0), before "Spawning server" (50)
TURN_PROGRESS = 20


def default_limit(cores: int | None = None) -> int:
    """Starts at once on a machine with ``cores`` (default: the CPUs this process may use)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # measured on 2 cores, real platform (time until all ready, throughput): 1 at once 8.5 s
    # (7.1/min), 2: 14.1 s (8.5/min), 4: 20.4 s (11.8/min); a start also waits (accounts,
    # polling), so 2 per core still gains, each start staying well inside start_timeout (60 s)
    return max(2, 2 * cores)


class LeftQueue(Conflict):
    """turn() of a ticket released (by someone else) while it waited."""

    code = "left_start_queue"


class Ticket:
    """One spawn's place in the queue, then its slot."""

    def __init__(self, queue: "StartQueue", key: str):
        self.queue = queue
        self.key = key
        self.state = "waiting"  # -> "holding" -> "released" (or "waiting" -> "released")
        self._granted = asyncio.get_running_loop().create_future()

    def __repr__(self):
        return f"<Ticket {self.key!r} {self.state}>"

    @property
    def ahead(self) -> int | None:
        """Starts waiting in line before this one (0: next); None once it holds a slot or left."""
        if self.state != "waiting":
            return None
        return self.queue._waiting.index(self)

    async def turn(self) -> None:
        """Wait until this start holds a slot. Cancelled: its place (or slot) is released."""
        if self.state == "released":
            raise LeftQueue(f"the start of {self.key} left the start queue already; join again")
        try:
            await self._granted
        except BaseException:
            self.release()  # cancellation while waiting, or just after the grant: nothing is kept
            raise

    def release(self) -> None:
        """Give back this ticket's place or slot; again: nothing."""
        self.queue._release(self)

    def release_when_done(self, future) -> None:
        """Release this ticket when ``future`` ends, however it ends (None: nothing to watch)."""
        if future is not None:
            future.add_done_callback(lambda _: self.release())

    def message(self) -> dict:
        """This ticket's progress event now."""
        q = self.queue
        if self.state == "holding":
            return {"progress": TURN_PROGRESS, "message": "Your turn: starting your server"}
        if self.state == "released":
            return {"progress": TURN_PROGRESS, "message": "Left the start queue"}
        ahead, busy = self.ahead, len(q._holding)
        at_once = f"{q.limit} start{'s' if q.limit != 1 else ''} at once on this machine"
        if ahead == 0:
            text = f"Waiting to start: yours is next ({busy} starting now, {at_once})"
        else:
            text = f"Waiting to start: {ahead} start{'s' if ahead != 1 else ''} ahead of yours ({at_once})"
        return {"progress": QUEUED_PROGRESS, "message": text}

    async def events(self) -> AsyncIterator[dict]:
        """Progress events: the place now and at each change, then one "your turn" event."""
        last = None
        while True:
            changed = self.queue._changed  # taken before reading the state: no change is missed
            event = self.message()
            if event != last:
                yield event
                last = event
            if self.state != "waiting":
                return
            await changed.wait()


class StartQueue:
    """At most ``limit`` tickets hold a slot; the others wait, first come, first served."""

    def __init__(self, limit: int | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"a start queue needs a limit of 1 or more, not {limit}")
        self._limit = limit or default_limit()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._holding: set[Ticket] = set()
        self._tickets: dict[str, Ticket] = {}
        self._changed = asyncio.Event()

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"a start queue needs a limit of 1 or more, not {value}")
        self._limit = value
        self._grant()

    @property
    def starting(self) -> list[str]:
        return sorted(t.key for t in self._holding)

    @property
    def waiting(self) -> list[str]:
        return [t.key for t in self._waiting]

    def ticket(self, key: str) -> Ticket | None:
        """The ticket of ``key`` still in the queue (waiting or holding), if any."""
        return self._tickets.get(key)

    def join(self, key: str) -> Ticket:
        """A new ticket at the end of the line (granted at once if a slot is free)."""
        old = self._tickets.get(key)
        if old is not None:
            old.release()  # one spawn per server at a time: an earlier ticket is a leftover
        ticket = Ticket(self, key)
        self._tickets[key] = ticket
        self._waiting.append(ticket)
        self._grant()
        self._notify()
        return ticket

    async def progress(self, key: str, appear_within: float = 5.0) -> AsyncIterator[dict]:
        """Progress events of ``key``'s ticket until it holds a slot; nothing if it is not in the
        queue within ``appear_within`` seconds (the progress request may come before the join)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + appear_within
        ticket = self._tickets.get(key)
        while ticket is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return
            ticket = self._tickets.get(key)
        async for event in ticket.events():
            yield event

    def _grant(self) -> None:
        granted = False
        while self._waiting and len(self._holding) < self._limit:
            ticket = self._waiting.popleft()
            ticket.state = "holding"
            self._holding.add(ticket)
            if not ticket._granted.done():
                ticket._granted.set_result(None)
            granted = True
        if granted:
            self._notify()

    def _release(self, ticket: Ticket) -> None:
        if ticket.state == "released":
            return
        if ticket.state == "waiting":
            self._waiting.remove(ticket)
        else:
            self._holding.discard(ticket)
        ticket.state = "released"
        if not ticket._granted.done():  # a turn() still waiting on it ends, saying why
            ticket._granted.set_exception(LeftQueue(
                f"the start of {ticket.key} was taken out of the start queue before its turn"))
            ticket._granted.exception()  # retrieved: no "never retrieved" warning if nobody waits
        if self._tickets.get(ticket.key) is ticket:
            del self._tickets[ticket.key]
        self._grant()
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every events() listener; they wait on the new event next


_QUEUE: StartQueue | None = None


def start_queue(limit: int | None = None) -> StartQueue:
    """The hub process's queue (made at the first call, in the hub's event loop); ``limit``,
    if given, sets its limit."""
    global _QUEUE
    if _QUEUE is None:
        _QUEUE = StartQueue(limit)
    elif limit is not None:
        _QUEUE.limit = limit
    return _QUEUE
