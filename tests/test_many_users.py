"""Must show 8 (issue 12), many users at once on one platform (heavy: run it alone, rarely):

- twenty users starting at once each get a working server: none fails, those still waiting
  for a slot when their start's POST is answered are told their place in the queue
  (progress events), and each completes a kernel cell and a WebDAV PUT/GET round trip;
- forty users started ten at a time: after each batch, every ``/user/<name>/`` and
  ``/dav/<name>/`` route of every running user leads to a process of that user (the process
  listening on the route's target port has that user's ``JUPYTERHUB_USER``/``SKERRY_USER``),
  answers that user's token, and WebDAV writes land in that user's home.

Real platform (``skerry up``), real servers, nothing mocked.
"""

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import progress_events, wait_for
from skerry.kernels.remote import RemoteKernel

pytestmark = [
    pytest.mark.platform,
    pytest.mark.timeout(1800),
]

READY_S = 600  # twenty starts on 2 cores, queued: generous, a failure says which user


def start_at_once(platform, names: list[str], follow: bool = False) -> dict[str, list[dict]]:
    """POST every user's server start at the same moment (each POST may block ~10 s); with
    ``follow``, each start's progress events, read from the moment its POST is answered to
    the start's end: {name: events}."""
    def post(name):
        r = platform.api("POST", f"/hub/api/users/{name}/server")
        assert r.status_code in (201, 202), f"{name}'s start was refused: {r.status_code} {r.text}"
        return progress_events(platform, name, READY_S) if follow else []

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(post, names)))


def told_about_the_queue(events: list[dict]) -> bool:
    """Whether a start's progress events told it its place in the start queue."""
    return any("ahead of yours" in m or "yours is next" in m for m in (e.get("message", "") for e in events))


def wait_all_ready(platform, names: list[str]) -> None:
    def state():
        users = {u["name"]: u for u in platform.api("GET", "/hub/api/users").json()}
        failed = [n for n in names if not users[n]["servers"].get("")]
        servers = {n: users[n]["servers"][""] for n in names if users[n]["servers"].get("")}
        return failed, [n for n, s in servers.items() if not s["ready"]]

    def done():
        failed, pending = state()
        assert not failed, f"these starts failed (no server left): {failed}; see run/hub.log"
        return not pending

    wait_for(done, READY_S, interval=2, what=f"the servers of {names} to be ready")


def listeners() -> dict[int, int]:
    """{port: pid} of the processes listening on TCP ports (root reads every /proc): one walk
    of the process table for all the routes checked."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found.setdefault(inodes[target[8:-1]], int(pid))
        except OSError:
            continue
    return found


def environ(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def check_own_routes(platform, tokens: dict[str, str]) -> None:
    """Every running user's two routes reach that user's own processes, and only them."""
    routes = platform.api("GET", "/hub/api/proxy").json()
    listening = listeners()
    wrong = []
    for name, token in tokens.items():
        for prefix, variable in ((f"/user/{name}/", "JUPYTERHUB_USER"), (f"/dav/{name}/", "SKERRY_USER")):
            route = routes.get(prefix)
            if route is None:
                wrong.append(f"{prefix}: no route")
                continue
            port = int(re.search(r":(\d+)$", route["target"].rstrip("/")).group(1))
            pid = listening.get(port)
            owner = environ(pid).get(variable) if pid else None
            if owner != name:
                wrong.append(f"{prefix} -> {route['target']} is served by pid {pid} of {owner!r}")
        me = httpx.get(f"{platform.url}/user/{name}/api/me", headers={"Authorization": f"token {token}"}, timeout=60)
        if me.status_code != 200 or me.json()["identity"]["username"] != name:
            wrong.append(f"/user/{name}/api/me with {name}'s token: {me.status_code} {me.text[:200]}")
        body = f"{name} wrote this".encode()
        put = httpx.put(f"{platform.url}/dav/{name}/home/whoami.txt", content=body, auth=(name, token), timeout=60)
        home_file = platform.data_dir / "users" / name / "whoami.txt"
        if put.status_code not in (201, 204) or home_file.read_bytes() != body:
            wrong.append(f"/dav/{name}/ PUT: {put.status_code}, {name}'s home has "
                         f"{home_file.read_bytes() if home_file.exists() else 'nothing'!r}")
    assert not wrong, "routes reaching the wrong processes or failing:\n" + "\n".join(wrong)


def kernel_and_webdav(platform, name: str, token: str) -> None:
    with RemoteKernel(f"{platform.url}/user/{name}/", token, "python3") as kernel:
        result = kernel.execute("import os; print(os.environ['JUPYTERHUB_USER'], 6 * 7)")
        assert result.error is None, f"{name}'s kernel cell failed: {result.error}"
        assert result.stdout.split() == [name, "42"], f"{name}'s kernel answered {result.stdout!r}"
    data = os.urandom(64 * 1024)
    with httpx.Client(base_url=f"{platform.url}/dav/{name}/home/", auth=(name, token), timeout=60) as dav:
        assert dav.put("roundtrip.bin", content=data).status_code == 201, f"{name}'s WebDAV PUT"
        got = dav.get("roundtrip.bin")
        assert got.status_code == 200 and got.content == data, f"{name}'s WebDAV GET: {got.status_code}"


def stop_all(platform, names: list[str]) -> None:
    for name in names:
        platform.api("DELETE", f"/hub/api/users/{name}/server")
    wait_for(lambda: all(platform.server(n) is None for n in names), 300, interval=2,
             what=f"the servers of {names} to stop")


def test_twenty_users_starting_at_once_each_get_a_working_server(platform):
    names = [f"crowd{i:02d}" for i in range(20)]
    tokens = {name: (platform.create_user(name), platform.user_token(name))[1] for name in names}
    # which POSTs the hub takes first is the threads' race: any start may get a slot at once;
    # those still waiting when their POST is answered are told their place, and every start
    # ends ready (never a time-out)
    events = start_at_once(platform, names, follow=True)
    for name, evs in events.items():
        assert evs and evs[-1].get("ready"), f"{name}'s start did not end ready: {[e.get('message') for e in evs]}"
    told = [name for name, evs in events.items() if told_about_the_queue(evs)]
    assert told, f"no start was told about the queue; {names[-1]}'s events: {events[names[-1]]}"
    wait_all_ready(platform, names)
    failures = []

    def one(name):
        try:
            kernel_and_webdav(platform, name, tokens[name])
        except Exception as e:  # collect every user's failure, not only the first
            failures.append(f"{name}: {e}")

    with ThreadPoolExecutor(2) as pool:  # 2 cores: two kernels at a time
        list(pool.map(one, names))
    assert not failures, "\n".join(failures)
    stop_all(platform, names)


def test_forty_users_ten_at_a_time_each_route_reaches_its_own_user(platform):
    names = [f"batch{i:02d}" for i in range(40)]
    tokens = {name: (platform.create_user(name), platform.user_token(name))[1] for name in names}
    running: dict[str, str] = {}
    try:
        for first in range(0, 40, 10):
            batch = names[first:first + 10]
            start_at_once(platform, batch)
            wait_all_ready(platform, batch)
            running.update({n: tokens[n] for n in batch})
            check_own_routes(platform, running)  # earlier batches too: a later port may collide with theirs
    finally:
        stop_all(platform, list(running))
