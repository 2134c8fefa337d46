"""Under ``CI``, a skipped test fails the run unless :data:`EXPECTED_SKIPS` names it.

A tool ``.ci/run`` installs that went missing would otherwise make its tests skip and
silently stop counting. CI systems set ``CI``; a skip CI accepts is listed here with the
words its reason must contain and why it may skip. Expected failures (xfail) are left alone.
"""

import os
import re

import pytest

# the only skips CI accepts: (test id pattern, what the skip reason must say, why it may skip)
EXPECTED_SKIPS = [
    (r"tests/test_limits\.py::test_two_processes_under_cpu_limit_1_get_one_core",
     "the machine stayed busy",
     "the 1-core floor is measured only when the rest of the machine leaves a core free"),
    (r"tests/test_gpu\.py::test_(each_gpu_worker_sees|the_gpu_kernels_client|the_gpu_tutorial)\w*",
     "no NVIDIA GPU on this machine",
     "the GPU pool check is opt-in: it needs an NVIDIA GPU, which CI machines do not have"),
    (r"tests/test_gpu\.py::test_gpumatmul_without_pytorch_or_cupy_fails_saying_what_it_needs",
     "PyTorch or CuPy is installed here",
     "where a CUDA library is installed the module runs for real instead (the GPU tests)"),
]


def expected_skip(nodeid: str, reason: str) -> bool:
    """Whether a skip of ``nodeid`` with ``reason`` is on :data:`EXPECTED_SKIPS`."""
    return any(re.fullmatch(pattern, nodeid) and says in reason for pattern, says, _ in EXPECTED_SKIPS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not expected_skip(report.nodeid, reason):
        report.outcome = "failed"
        report.longrepr = (f"unexpected skip under CI: {reason}\n"
                           "(a skip CI accepts is listed, with its reason, in tests/ciskips.py EXPECTED_SKIPS)")
