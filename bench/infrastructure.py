"""Micro-infrastructure API round trip: create (POST until 201) and tear down (DELETE until 204).

    python bench/infrastructure.py [--runs 5]

On one fresh platform, each run POSTs ``/services/skerry/api/v1/infrastructure`` for a
named server with one extra adaptor (memory; its credential is a password, so the
store's encryption is on the path) and times it until the 201 (the server is ready), then
checks its WebDAV answers (PROPFIND 207) and times the DELETE until its 204 (stopped,
deleted, adaptors removed). For comparison, the same named server started and deleted
through the hub's own REST API (``POST``/``DELETE /hub/api/users/<u>/servers/<name>``,
polling until ready / gone). Prints each run and the medians. Asserts nothing.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Platform, wait_for  # noqa: E402

API = "/services/skerry/api/v1"
BODY = {"name": "bench", "adaptors": [{"name": "scratch", "type": "webdav", "url": "http://127.0.0.1:9/",
                                       "credentials": {"kind": "password", "username": "u", "password": "pw-bench"}}]}


def api_run(p: Platform, token: str) -> tuple[float, float]:
    headers = {"Authorization": f"token {token}"}
    start = time.perf_counter()
    r = httpx.post(p.url + API + "/infrastructure", json=BODY, headers=headers, timeout=300)
    created = time.perf_counter() - start
    assert r.status_code == 201, r.text
    dav = r.json()["endpoints"]["webdav"]["url"]
    assert httpx.request("PROPFIND", dav, headers={**headers, "Depth": "0"}, timeout=60).status_code == 207
    start = time.perf_counter()
    r = httpx.delete(p.url + API + "/infrastructure/bench", headers=headers, timeout=300)
    deleted = time.perf_counter() - start
    assert r.status_code == 204, r.text
    return created, deleted


def hub_run(p: Platform) -> tuple[float, float]:
    def server():
        return p.api("GET", "/hub/api/users/bencher?include_stopped_servers=1").json()["servers"].get("plain")

    start = time.perf_counter()
    r = p.api("POST", "/hub/api/users/bencher/servers/plain")
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: (server() or {}).get("ready"), 120, interval=0.05, what="the named server")
    created = time.perf_counter() - start
    start = time.perf_counter()
    r = p.api("DELETE", "/hub/api/users/bencher/servers/plain", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    while server() is not None:
        time.sleep(0.05)
        if r.status_code == 202:
            r = p.api("DELETE", "/hub/api/users/bencher/servers/plain", json={"remove": True})
    return created, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results = {"api": [], "hub": []}
    with tempfile.TemporaryDirectory() as tmp:
        p = Platform(Path(tmp) / "data").start()
        try:
            p.create_user("bencher")
            token = p.user_token("bencher")
            api_run(p, token)  # warm-up
            for i in range(args.runs):  # interleaved: a slow moment of the machine hits both
                results["api"].append(api_run(p, token))
                results["hub"].append(hub_run(p))
                print(f"  run {i + 1}: API create {results['api'][-1][0]:.2f} s, delete {results['api'][-1][1]:.2f} s; "
                      f"hub REST create {results['hub'][-1][0]:.2f} s, delete {results['hub'][-1][1]:.2f} s",
                      flush=True)
        finally:
            p.stop()
    for kind, label in (("api", "infrastructure API"), ("hub", "hub REST, bare   ")):
        create = statistics.median(r[0] for r in results[kind])
        delete = statistics.median(r[1] for r in results[kind])
        print(f"{label} median: create {create:.2f} s, delete {delete:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
