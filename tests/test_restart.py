"""Must show 4 and the stop rules of `skerry up`: kill -9 and restart keep users and running
servers without duplicates; SIGTERM/Ctrl-C, a killed `skerry up` and a hub that fails after
its proxy started leave no process."""

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from helpers import (MICRO_PROCESSES, descendants, free_port, kill_leftovers, open_for_accounts, pids_of, proxies_of,
                     wait_for)
from skerry.datadir import DataDir
from skerry.process import group_members, is_running

pytestmark = pytest.mark.platform


def micro_processes(data_dir):
    """Pids of the user servers' processes of this data dir (they carry it in their environment)."""
    return {p for p in pids_of(str(data_dir / "users"), environ=True)}


def test_kill_9_hub_then_up_again_finds_running_servers(make_platform):
    p = make_platform().start()
    p.create_user("alice")
    p.start_server("alice")
    token = p.user_token("alice")
    r = httpx.put(f"{p.url}/dav/alice/home/keep.txt", content=b"kept", auth=("alice", token))
    assert r.status_code == 201
    pgid = p.group_of("alice")
    before = set(group_members(pgid))
    assert len(before) == MICRO_PROCESSES

    hub_pid = int((p.data_dir / "run" / "hub.pid").read_text().split()[0])
    os.kill(hub_pid, signal.SIGKILL)
    assert p.proc.wait(30) == 1  # skerry up reports the dead hub and exits
    assert set(group_members(pgid)) == before  # user servers outlive the hub

    p.start()  # the same data dir, the same port
    assert p.server("alice")["ready"]
    assert set(group_members(pgid)) == before  # found again, not started twice
    assert len(micro_processes(p.data_dir)) == MICRO_PROCESSES
    assert p.group_of("alice") == pgid
    # tokens and routes are back
    r = httpx.get(f"{p.url}/dav/alice/home/keep.txt", auth=("alice", token))
    assert r.status_code == 200 and r.content == b"kept"
    r = httpx.get(f"{p.url}/user/alice/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    # exactly one proxy and one service for this data dir
    assert len(proxies_of(p.data_dir)) == 1
    assert len(pids_of("skerry.hub.service.app") & pids_of(str(p.data_dir), environ=True)) == 1

    p.stop()
    assert group_members(pgid) == []
    assert micro_processes(p.data_dir) == set()


def test_sigterm_stops_every_child(make_platform):
    p = make_platform().start()
    p.create_user("erin")
    p.start_server("erin")
    children = descendants(p.proc.pid)
    pgid = p.group_of("erin")
    token = p.user_token("erin")
    assert len(children) >= 4  # hub, proxy, service, (user servers are in their own group)
    p.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert p.proc.wait(60) == 0
    assert b"skerry stopped." in p.proc.stdout.read()
    for pid in children | set(group_members(pgid)):
        wait_for(lambda pid=pid: not is_running(pid), timeout=10, what=f"process {pid} to exit")
    assert micro_processes(p.data_dir) == set()

    # a clean restart keeps users and their tokens; servers were stopped with the platform
    p.start()
    r = p.api("GET", "/hub/api/user", token=token)
    assert r.status_code == 200 and r.json()["name"] == "erin"
    assert p.server("erin") is None


def test_kill_9_of_skerry_up_takes_the_hub_down(make_platform):
    p = make_platform().start()
    p.create_user("frank")
    p.start_server("frank")
    pgid = p.group_of("frank")
    hub_pid = int((p.data_dir / "run" / "hub.pid").read_text().split()[0])
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    # the hub gets SIGTERM from the kernel (PDEATHSIG) and stops everything it started
    wait_for(lambda: not is_running(hub_pid), timeout=60, what="the hub to stop")
    wait_for(lambda: group_members(pgid) == [], timeout=30, what="frank's server to stop")
    wait_for(lambda: not proxies_of(p.data_dir), timeout=30, what="the proxy to stop")


def test_hub_failing_after_its_proxy_started_leaves_nothing(tmp_path):
    data = DataDir(open_for_accounts(tmp_path / "data")).ensure()
    port = free_port()
    # the service's internal port taken: the proxy starts, the service cannot listen, the hub exits
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", data.ports()["service"]))
        taken.listen()
        try:
            done = subprocess.run([sys.executable, "-m", "skerry", "up", "--data-dir", str(data.path),
                                   "--port", str(port)], capture_output=True, text=True, timeout=180)
        finally:
            leftovers = pids_of(str(data.path), environ=True)
            kill_leftovers(data.path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "skerry: the hub exited with status" in done.stderr
    assert "Service skerry exited" in done.stderr, done.stderr  # the reason, from hub.log
    log = (data.run / "hub.log").read_text()
    assert any(line in log for line in ("[ConfigProxy]", "Traefik (pid", "HAProxy (pid"))  # the proxy had started
    assert leftovers == set()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as skerry up checks it
        s.bind(("127.0.0.1", port))  # the public port is free again
