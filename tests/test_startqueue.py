"""The hub's start queue (hub/plugins/startqueue.py): order, limit, place messages, releases on
cancellation, failure and the end of the spawn; and the JupyterHub behaviour it relies on
(the pre-spawn hook is awaited before, and outside, ``start_timeout``). Real asyncio, no mocks."""

import asyncio
import inspect

import pytest

from skerry.hub.plugins.startqueue import LeftQueue, StartQueue, default_limit


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def settle():
    for _ in range(5):  # let every task the last change woke run
        await asyncio.sleep(0)


def test_default_limit_is_two_per_core():
    assert default_limit(1) == 2
    assert default_limit(2) == 4
    assert default_limit(16) == 32
    assert default_limit() >= 2
    with pytest.raises(ValueError, match="limit of 1 or more"):
        asyncio.run(_make(0))


async def _make(limit):
    return StartQueue(limit)


def test_at_most_limit_start_at_once_in_join_order():
    async def main():
        queue = StartQueue(2)
        order, running, peak = [], set(), []

        async def spawn(name, release: asyncio.Event):
            ticket = queue.join(name)
            await ticket.turn()
            try:
                order.append(name)
                running.add(name)
                peak.append(len(running))
                await release.wait()
            finally:
                running.discard(name)
                ticket.release()

        events = {n: asyncio.Event() for n in "abcdef"}
        tasks = [asyncio.create_task(spawn(n, events[n])) for n in "abcdef"]
        await settle()
        assert order == ["a", "b"], "only the first two may start"
        assert queue.starting == ["a", "b"] and queue.waiting == ["c", "d", "e", "f"]
        for n in "badcfe":  # finish out of order: the line still moves first come, first served
            events[n].set()
            await settle()
        await asyncio.gather(*tasks)
        assert order == list("abcdef")
        assert max(peak) == 2
        assert queue.starting == [] and queue.waiting == []

    run(main())


def test_waiting_starts_are_told_their_place_as_progress_events():
    async def main():
        queue = StartQueue(1)
        first = queue.join("alice/")
        await first.turn()
        second, third = queue.join("bob/"), queue.join("carol/")
        seen = []

        async def listen():
            async for event in queue.progress("carol/"):
                seen.append(event)

        listener = asyncio.create_task(listen())
        await settle()
        assert seen == [{"progress": 10, "message":
                         "Waiting to start: 1 start ahead of yours (1 start at once on this machine)"}]
        first.release()  # bob starts, carol is next
        await settle()
        assert seen[-1] == {"progress": 10, "message":
                            "Waiting to start: yours is next (1 starting now, 1 start at once on this machine)"}
        second.release()
        await asyncio.wait_for(listener, 5)
        assert seen[-1] == {"progress": 20, "message": "Your turn: starting your server"}
        assert all(set(e) == {"progress", "message"} and isinstance(e["progress"], int) for e in seen)
        assert third.state == "holding"

        queue.limit = 3
        many = [queue.join(f"u{i}/") for i in range(6)]
        await settle()
        assert many[5].message()["message"] == (
            "Waiting to start: 3 starts ahead of yours (3 starts at once on this machine)")

    run(main())


def test_progress_waits_for_a_ticket_that_joins_later_and_ends_if_none_comes():
    async def main():
        queue = StartQueue(1)
        queue.join("alice/")

        async def collect(key, within):
            return [e async for e in queue.progress(key, appear_within=within)]

        early = asyncio.create_task(collect("bob/", 5))
        await settle()
        queue.join("bob/")  # the progress request came before the spawn joined
        await settle()
        assert not early.done()
        queue.ticket("alice/").release()
        events = await asyncio.wait_for(early, 5)
        assert [e["message"] for e in events] == [
            "Waiting to start: yours is next (1 starting now, 1 start at once on this machine)",
            "Your turn: starting your server"]
        assert await collect("nobody/", 0.1) == []

    run(main())


def test_cancelling_a_waiting_start_releases_its_place():
    async def main():
        queue = StartQueue(1)
        holder = queue.join("alice/")
        await holder.turn()
        bob = queue.join("bob/")
        carol = queue.join("carol/")
        waiting = asyncio.create_task(bob.turn())
        await settle()
        waiting.cancel()  # bob stops his pending start
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert bob.state == "released" and queue.waiting == ["carol/"]
        assert carol.ahead == 0
        holder.release()
        await asyncio.wait_for(carol.turn(), 5)
        assert queue.starting == ["carol/"]

    run(main())


def test_a_start_that_fails_or_is_cancelled_holding_a_slot_releases_it():
    async def main():
        queue = StartQueue(1)

        async def failing_start():
            ticket = queue.join("alice/")
            await ticket.turn()
            try:
                raise RuntimeError("the micro-infrastructure exited at start")
            finally:
                ticket.release()

        with pytest.raises(RuntimeError, match="exited at start"):
            await failing_start()
        assert queue.starting == []

        # the hub gives up (wait_for around start()): the task holding the slot is cancelled
        async def slow_start():
            ticket = queue.join("bob/")
            await ticket.turn()
            try:
                await asyncio.sleep(60)
            finally:
                ticket.release()

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow_start(), 0.1)
        assert queue.starting == []
        carol = queue.join("carol/")
        await asyncio.wait_for(carol.turn(), 1)

    run(main())


def test_the_end_of_the_spawn_releases_a_ticket_nobody_released():
    async def main():
        queue = StartQueue(1)
        spawn = asyncio.get_running_loop().create_future()
        alice = queue.join("alice/")
        alice.release_when_done(spawn)
        await alice.turn()
        bob = queue.join("bob/")
        waiting_bob = asyncio.create_task(bob.turn())
        await settle()
        assert not waiting_bob.done()
        spawn.set_exception(RuntimeError("spawn failed before start() ran"))
        await asyncio.wait_for(waiting_bob, 1)
        assert queue.starting == ["bob/"] and alice.state == "released"
        alice.release()  # again: nothing
        assert queue.starting == ["bob/"]

        # a ticket released by someone else while it waits: turn() says so
        carol = queue.join("carol/")
        waiting_carol = asyncio.create_task(carol.turn())
        await settle()
        again = queue.join("carol/")  # a leftover of the same server is replaced
        with pytest.raises(LeftQueue, match="carol/ was taken out of the start queue"):
            await waiting_carol
        assert queue.waiting == ["carol/"] and queue.ticket("carol/") is again

    run(main())


def test_jupyterhub_awaits_the_pre_spawn_hook_before_and_outside_start_timeout():
    """The queue waits in run_pre_spawn_hook: that must stay outside wait_for(start_timeout)."""
    from jupyterhub.user import User

    source = inspect.getsource(User.spawn)
    hook = source.index("spawner.run_pre_spawn_hook()")
    start = source.index("spawner.start()")
    timeout = source.index("asyncio.wait_for(f, timeout=spawner.start_timeout)")
    assert hook < start < timeout, "JupyterHub changed the order of pre_spawn_hook, start() and start_timeout"
    assert "wait_for" not in source[hook - 60:hook], "the pre-spawn hook is now under a timeout"
