"""Idle servers stopped after their profile's ``idle_timeout_s`` (hub.service.culler), on a real platform.

- alice's server, with a profile of a 3 s idle timeout, is stopped once idle; the hub log
  says so and why; nothing of hers is left running;
- bob's server, with a profile of 0 (never), runs on though idle for longer than that;
- which servers a pass picks, from hub user models, without a platform.
"""

import json
import os
from datetime import datetime, timedelta, UTC

import pytest

from helpers import pids_of, wait_for
from skerry.config import CULL_INTERVAL
from skerry.hub.service.culler import idle_servers

API = "/services/skerry/api/v1"
POOLS = {"cpu": None, "gpu": None}  # no Dask: idle servers are the subject
TIMEOUT_S = 3
INTERVAL_S = 1


def profile(slug: str, idle_timeout_s: int) -> dict:
    return {"slug": slug, "display_name": slug, "resources": {"cpu_limit": 1, "mem_limit": "2Gi", "gpus": 0},
            "dask": {"max_workers": 1, "worker_memory": "1Gi"}, "idle_timeout_s": idle_timeout_s,
            "access": {"everyone": True}}


def server_model(platform, user) -> dict:
    return platform.api("GET", f"/hub/api/users/{user}").json()["servers"].get("") or {}


def spawn(platform, user, slug):
    r = platform.api("POST", f"/hub/api/users/{user}/server", json={"user_options": {"profile": slug}})
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: server_model(platform, user).get("ready"), 120, what=f"{user}'s server")


def culled(platform) -> list[str]:
    """The culler's lines in the hub log (the service's log)."""
    log = (platform.data_dir / "run" / "hub.log").read_text()
    return [line for line in log.splitlines() if "skerry.culler" in line]


def ours(platform, pattern: str) -> set[int]:
    """Live processes of this platform (others may run beside it) whose environment has ``pattern``."""
    return pids_of(pattern, environ=True) & pids_of(str(platform.data_dir), environ=True)


def idle_for(server: dict) -> float:
    since = datetime.fromisoformat((server["last_activity"] or server["started"]).replace("Z", "+00:00"))
    return (datetime.now(UTC) - since).total_seconds()


@pytest.mark.platform
def test_a_server_idle_past_its_profiles_timeout_is_stopped_and_one_of_zero_is_not(make_platform, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pools.json").write_text(json.dumps(POOLS))
    platform = make_platform(data_dir=data, env={**os.environ, CULL_INTERVAL.name: str(INTERVAL_S)}).start()
    for spec in (profile("quick", TIMEOUT_S), profile("forever", 0)):
        r = platform.api("POST", API + "/profiles", json=spec)
        assert r.status_code == 201, r.text
    for user in ("alice", "bob"):
        platform.create_user(user)
    spawn(platform, "bob", "forever")
    spawn(platform, "alice", "quick")
    assert server_model(platform, "alice")["state"]["profile"]["idle_timeout_s"] == TIMEOUT_S

    wait_for(lambda: not server_model(platform, "alice"), 60, what="alice's idle server to be stopped")
    culls = culled(platform)
    assert any("alice's default server" in line and f"{TIMEOUT_S} s idle timeout" in line and "'quick'" in line
               for line in culls), culls
    assert not any("bob" in line for line in culls), culls
    wait_for(lambda: not ours(platform, "SKERRY_USER=alice "), 30, what="alice's processes to end")

    # bob's server, idle for longer than alice's timeout and a few passes more, still runs
    wait_for(lambda: idle_for(server_model(platform, "bob")) > TIMEOUT_S + 3 * INTERVAL_S, 60,
             what="bob's server to be idle for a while")
    assert server_model(platform, "bob").get("ready")
    assert not any("bob" in line for line in culled(platform)), culled(platform)


def test_a_pass_picks_ready_servers_idle_past_their_own_timeout():
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)

    def server(idle_s, timeout, ready=True, pending=None, with_activity=True):
        at = (now - timedelta(seconds=idle_s)).isoformat()
        state = {"profile": {"slug": "p", "idle_timeout_s": timeout}} if timeout is not None else {}
        return {"ready": ready, "pending": pending, "last_activity": at if with_activity else None,
                "started": at, "state": state}

    users = [
        {"name": "alice", "servers": {"": server(100, 60), "hpc": server(30, 60), "old": server(100, 60, False)}},
        {"name": "bob", "servers": {"": server(10**6, 0), "x": server(10**6, None)}},
        {"name": "carol", "servers": {"": server(100, 60, pending="stop"), "y": server(61, 60, with_activity=False)}},
    ]
    picked = [(s["user"], s["server"], s["idle_s"], s["timeout_s"]) for s in idle_servers(users, now)]
    assert picked == [("alice", "", 100, 60), ("carol", "y", 61, 60)]
