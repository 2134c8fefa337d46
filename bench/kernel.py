"""Kernel start to a ready skerry session: adaptors, Dask client to the pool, workload API.

    python bench/kernel.py [--runs 7] [--workers 2]

Starts its own platform (``skerry up`` in a temporary data dir; pools.json: a local
``cpu`` pool of ``--workers`` worker processes, no ``gpu`` pool; as root each user's
cluster is carved from it, started at her first ask and kept while used: the warm-up
starts it), a user with a running server, then ``--runs`` times: a "skerry" kernel is
asked for through the user's Jupyter server (``POST /user/<name>/api/kernels``, as
JupyterLab does), and its first cell touches ``skerry.client`` and asks the session
(``ready()``) when each part was ready. Figures per run:

- request -> answers: until the kernel answered its first cell, a cell that uses the
  Dask pool (connected on first use) with the session ready: what a user waits for. The figure the target is
  on: <= 2 s, and its ratio to a plain kernel's;
- request -> ready: from the start request until the last part (adaptors, pool, api) was
  ready (the kernel runs on this machine: one clock): a part of the above;
- process -> ready: the same from the kernel process's own start;
- kernel CPU: the CPU seconds the kernel process spent until its first cell ran (all its
  threads): the part of the figure a busy machine does not stretch;
- plain kernel: request -> answers of a plain "python3" kernel (ipykernel alone), for scale.

Runs are interleaved (skerry, plain), after one warm-up of each; the script prints each
run and the medians.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import bench_platform  # noqa: E402

from skerry.kernels.remote import RemoteKernel  # noqa: E402

TARGET_S = 2.0
USER = "bench"
# the first cell uses the pool (connected on first use), so every part is in its answer
PROBE = ("import json, time; from skerry.kernels.session import current; skerry.client; s = current(); "
         "ready = s.ready(); print(json.dumps({'started': s.started, 'ready': ready, 'cpu': time.process_time()}))")


def skerry_once(url: str, token: str) -> dict:
    start = time.time()
    with RemoteKernel(url, token, "skerry") as kernel:
        result = kernel.execute(PROBE)
        answered = time.time()
    if result.error:
        raise SystemExit("the skerry kernel failed: " + "\n".join(result.error["traceback"]))
    probe = json.loads(result.stdout)
    parts = probe["ready"]
    broken = {k: v for k, v in parts.items() if not isinstance(v, float)}
    if broken:
        raise SystemExit(f"the session is not ready: {broken}")
    last = max(parts.values())
    return {"request_ready": probe["started"] + last - start, "process_ready": last,
            "answers": answered - start, "cpu": probe["cpu"], **parts}


def plain_once(url: str, token: str) -> float:
    start = time.time()
    with RemoteKernel(url, token, "python3") as kernel:
        kernel.execute("1")
        return time.time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the cpu pool")
    args = ap.parse_args()
    runs, plain = [], []
    pools = {"cpu": {"workers": args.workers, "threads": 1}, "gpu": None}
    with tempfile.TemporaryDirectory() as tmp, bench_platform(Path(tmp), pools) as p:  # as root: hers run as her
        p.create_user(USER)
        p.start_server(USER)
        token = p.user_token(USER)
        url = f"{p.url}/user/{USER}/"
        # warm-up: the OS's file cache, and her Dask cluster (started at her first ask, then kept)
        skerry_once(url, token), plain_once(url, token)
        for i in range(args.runs):
            runs.append(skerry_once(url, token))
            plain.append(plain_once(url, token))
            r = runs[-1]
            print(f"  run {i + 1}: request->ready {r['request_ready']:.2f} s (adaptors {r['adaptors']:.2f}, "
                  f"pool {r['pool']:.2f}, api {r['api']:.2f} after the process start), "
                  f"request->answers {r['answers']:.2f} s, kernel CPU {r['cpu']:.2f} s; "
                  f"plain kernel answers {plain[-1]:.2f} s", flush=True)

    def median(key):
        return statistics.median(r[key] for r in runs)

    answers, base = median("answers"), statistics.median(plain)
    print(f"skerry kernel, request -> first cell answered (session ready: adaptors, pool, API): median "
          f"{answers:.2f} s over {args.runs} starts (target <= {TARGET_S:g} s: "
          f"{'met' if answers <= TARGET_S else 'NOT met'}); a plain python3 kernel {base:.2f} s: "
          f"{answers / base:.2f}x")
    print(f"  request -> session ready: median {median('request_ready'):.2f} s; kernel process start -> "
          f"session ready: {median('process_ready'):.2f} s (adaptors {median('adaptors'):.2f}, "
          f"pool {median('pool'):.2f}, api {median('api'):.2f})")
    print(f"  kernel CPU until its first cell ran: median {median('cpu'):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
