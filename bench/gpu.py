"""How busy the GPUs are while the platform runs 1,000 GPU jobs (target: at least 90%).

    python bench/gpu.py [--jobs 1000] [--repeat 50]     # as root, on a machine with NVIDIA GPUs

On a machine without a GPU it says so and exits 0. Otherwise: the platform (``skerry up``
as root, default pools: a ``gpu`` worker per GPU), alice's run of the built-in
``gpumatmul`` module (``repeat`` products of two 4096 x 4096 float32 matrices per job, on
PyTorch or CuPy) over ``--jobs`` files of her home, timed from ``POST /runs`` until
``GET /runs/<id>`` says ``succeeded``; ``nvidia-smi`` samples each GPU's utilization every
100 ms from the first job's start to the last one's end. Printed: jobs/s, the mean
utilization of each GPU over that time (the target's figure), and, as the by-hand
baseline, the same products in one process per GPU in a loop (what the GPU gives when
nothing but the work runs).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import bench_platform  # noqa: E402

from skerry.workload.pools import gpu_count  # noqa: E402
from skerry.workload.states import FINAL  # noqa: E402

API = "/services/skerry/api/v1"
BY_HAND = """
import sys, time, torch
n, repeat, jobs = 4096, int(sys.argv[1]), int(sys.argv[2])
a, b = torch.rand(n, n, device="cuda"), torch.rand(n, n, device="cuda")
for _ in range(jobs):
    for _ in range(repeat):
        a @ b
    torch.cuda.synchronize()
"""


class Sampler:
    """Each GPU's utilization (percent) every 100 ms while running, by ``nvidia-smi``."""

    def __init__(self):
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.samples.append((time.time(), [int(v) for v in out.split()]))
            self._stop.wait(0.1)

    def mean(self, start: float, end: float) -> list[float]:
        inside = [values for at, values in self.samples if start <= at <= end]
        return [sum(v[i] for v in inside) / len(inside) for i in range(len(inside[0]))] if inside else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50, help="matrix products per job")
    args = parser.parse_args()
    gpus = gpu_count()
    if not gpus:
        print("skipped: no NVIDIA GPU on this machine (nvidia-smi -L lists none); run it where there is one")
        return
    if os.geteuid() != 0:
        sys.exit("bench/gpu.py runs the platform, which makes OS accounts: run it as root")
    with tempfile.TemporaryDirectory() as tmp, bench_platform(Path(tmp)) as platform:
        data = platform.data_dir
        platform.create_user("alice")
        client = httpx.Client(base_url=platform.url + API, timeout=60,
                              headers={"Authorization": f"token {platform.user_token('alice')}"})

        def call(method, path, **kw):
            r = client.request(method, path, **kw)
            assert r.status_code < 300, r.text
            return r.json()

        folder = data / "users" / "alice" / "gpuin"
        folder.mkdir(parents=True)
        for i in range(args.jobs):
            (folder / f"f{i:05d}.txt").write_text("x")
        platform.give(folder, "alice")
        call("POST", "/workflows", json={"name": "mm", "steps": [
            {"name": "mm", "module": "gpumatmul", "inputs": {"input": "dataset"},
             "params": {"repeat": args.repeat}}]})
        for name, count in (("warm", gpus), ("in", args.jobs)):  # warm: her cluster up, CUDA loaded
            call("POST", "/datasets", json={"name": name, "location": "skerry://home/gpuin"})
            call("POST", f"/datasets/{name}/files", json={"files": [
                {"uri": f"skerry://home/gpuin/f{i:05d}.txt", "size": 1} for i in range(count)]})
            call("POST", f"/datasets/{name}/close")
            with Sampler() as sampler:
                start = time.perf_counter()
                run_id = call("POST", "/runs", json={"workflow": "mm", "dataset": name})["id"]
                while (state := call("GET", f"/runs/{run_id}")["state"]) not in FINAL:
                    time.sleep(0.1)
                took = time.perf_counter() - start
            assert state == "succeeded", call("GET", f"/runs/{run_id}")
        busy = sampler.mean(*_first_start_last_end(data, run_id))
    hand = []
    for device in range(gpus):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(device))
        hand.append(subprocess.Popen([sys.executable, "-c", BY_HAND, str(args.repeat), str(args.jobs // gpus)],
                                     env=env))
    with Sampler() as sampler:
        start = time.time()
        for proc in hand:
            proc.wait()
        by_hand = sampler.mean(start + 2, time.time())  # past CUDA's start
    print(f"{args.jobs} gpumatmul jobs ({args.repeat} products each) on {gpus} GPU(s), POST /runs to succeeded: "
          f"{args.jobs / took:,.1f} jobs/s ({took:.1f} s)")
    print("GPU utilization while they ran: " + ", ".join(f"GPU {i} {u:.0f}%" for i, u in enumerate(busy))
          + " (target >= 90%)")
    print("the same products by hand, one process per GPU in a loop: "
          + ", ".join(f"GPU {i} {u:.0f}%" for i, u in enumerate(by_hand)))


def _first_start_last_end(data: Path, run_id: int) -> tuple[float, float]:
    """When the run's first job started and its last one ended (epoch seconds), from the catalog."""
    from datetime import UTC

    from sqlalchemy import func, select

    from skerry.workload.catalog import Catalog
    from skerry.workload.models import Job, JobAttempt, Task

    catalog = Catalog.for_data_dir(data)
    try:
        with catalog.session() as s:
            jobs = select(Job.id).join(Task, Task.id == Job.task_id).where(Task.run_id == run_id)
            first, last = s.execute(select(func.min(JobAttempt.started), func.max(JobAttempt.ended))
                                    .where(JobAttempt.job_id.in_(jobs))).one()
    finally:
        catalog.dispose()
    return tuple(t.replace(tzinfo=t.tzinfo or UTC).timestamp() for t in (first, last))


if __name__ == "__main__":
    main()
