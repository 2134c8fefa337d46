"""hub/limits.py on plain subprocesses: the limits are set in the child before exec and its
children inherit them.

- the affinity and RLIMIT_AS of the child, as /proc shows them;
- a 2-process CPU burn under cpu_limit=1 uses at most about one core (CPU seconds / wall
  time: a check of the limit, not a timing of speed);
- memory above mem_limit fails with MemoryError in the child, below it works.

This machine has a read-only cgroup v1 hierarchy: the rlimits mechanism is what runs here.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from skerry.hub.limits import Enforcement, Limits, choose_cores, cpu_seconds

MIB = 1024**2
CORES = sorted(os.sched_getaffinity(0))


def run(enforcement: Enforcement, code: str, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], preexec_fn=enforcement.preexec,
                          capture_output=True, text=True, timeout=timeout)


def test_cores_are_the_limit_rounded_up_and_spread_by_name():
    assert choose_cores(1, "alice--default", {0, 1, 2, 3}) == choose_cores(1, "alice--default", {0, 1, 2, 3})
    assert len(choose_cores(0.25, "a", {0, 1, 2, 3})) == 1
    assert len(choose_cores(1.5, "a", {0, 1, 2, 3})) == 2
    assert choose_cores(8, "a", {0, 1, 2, 3}) == [0, 1, 2, 3]  # more than there are: all, no cap
    assert choose_cores(2, "a", {5, 7, 9}) in ([5, 7], [7, 9], [5, 9])  # only cores the hub may use
    firsts = {choose_cores(1, f"user{i}--default", set(range(8)))[0] for i in range(40)}
    assert len(firsts) > 1  # servers do not all land on one core


def test_no_limits_nothing_is_set():
    plan = Enforcement.plan(Limits.from_resources(None), "alice--default")
    assert plan.describe() == {"mechanism": "none", "cpu": None, "memory": None, "cores": []}
    out = run(plan, "import os, resource; print(len(os.sched_getaffinity(0)), resource.getrlimit(resource.RLIMIT_AS))")
    assert out.stdout.split(None, 1) == [str(len(CORES)), "(-1, -1)\n"], out


@pytest.mark.skipif(len(CORES) < 2, reason="one core: a one-core cap cannot be told from none")
def test_affinity_and_rlimit_are_set_in_the_child_as_proc_shows():
    plan = Enforcement.plan(Limits.from_resources({"cpu_limit": 0.5, "mem_limit": 1024 * MIB}), "alice--default")
    assert plan.mechanism == "rlimits" and len(plan.cores) == 1  # 0.5 core: one whole core
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             preexec_fn=plan.preexec)
    try:
        status = Path(f"/proc/{child.pid}/status").read_text()
        limits = Path(f"/proc/{child.pid}/limits").read_text()
    finally:
        child.communicate(b"")
    allowed = next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
    assert allowed == str(plan.cores[0])
    address = next(line.split() for line in limits.splitlines() if line.startswith("Max address space"))
    assert address[3:5] == [str(1024 * MIB), str(1024 * MIB)]  # soft and hard: a process cannot raise it


BURN = """
import json, multiprocessing, os, time

def burn(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

if __name__ == "__main__":
    start = time.monotonic()
    workers = [multiprocessing.Process(target=burn, args=(3,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - start
    t = os.times()
    print(json.dumps({"cpu": t.children_user + t.children_system, "wall": wall}))
"""


@pytest.mark.skipif(len(CORES) < 2, reason="one core: a one-core cap cannot be told from none")
def test_two_processes_under_cpu_limit_1_use_at_most_one_core():
    plan = Enforcement.plan(Limits(cpu=1), "alice--default")
    out = run(plan, BURN)
    assert out.returncode == 0, out.stderr
    used = json.loads(out.stdout)
    cores = used["cpu"] / used["wall"]
    print(f"2 burning processes under cpu_limit=1: {cores:.2f} cores")
    assert cores <= 1.15, used


def test_memory_above_the_limit_is_a_memory_error_in_the_child():
    plan = Enforcement.plan(Limits(memory=512 * MIB), "alice--default")
    out = run(plan, """
        small = bytearray(64 * 1024**2)  # well below the limit: works
        try:
            big = bytearray(1024 * 1024**2)
        except MemoryError:
            print("MemoryError")
        else:
            print("allocated")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MemoryError"


def test_cpu_seconds_counts_a_process_and_what_it_reaped():
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.5\\n"
                        "while time.process_time() < end: pass"])
        sys.stdin.read()
    """)], stdin=subprocess.PIPE)
    try:
        for _ in range(100):  # the grandchild's 0.5 s count once it is reaped
            if cpu_seconds([child.pid]) >= 0.5:
                break
            time.sleep(0.2)
        assert cpu_seconds([child.pid]) >= 0.5
    finally:
        child.communicate(b"")
    assert cpu_seconds([child.pid]) == 0  # gone: nothing to read
