"""The manager's local socket (skerry.workload.clusterask): the service wakes the scheduler
when it starts a run; only the platform's own uid can, and a missing manager is no error."""

import os
import subprocess
import sys
import threading

import pytest

from skerry.workload.clusterask import _address, serve, wake

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another account's attempt needs root to switch to it")


def test_the_service_wakes_the_manager_and_no_other_account_can(tmp_path):
    woken = threading.Event()
    listener = serve(tmp_path, lambda user, pool: {}, woken.set)
    try:
        # an account writing the wake line itself, past the client's own check of the manager's uid
        # (the manager may close the connection before the line is even sent: that is nothing too)
        script = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(b'\\0' + sys.argv[1].encode())\n"
                  "try: s.sendall(b'{\"op\": \"wake\"}\\n'); print(len(s.recv(1)))\n"
                  "except (BrokenPipeError, ConnectionResetError): print(0)")
        other = subprocess.run([sys.executable, "-c", script, _address(tmp_path)[1:].decode()],
                               user="nobody", group="nogroup", extra_groups=[], capture_output=True, timeout=10)
        assert other.returncode == 0 and other.stdout == b"0\n", other.stderr  # it connected, and got nothing
        assert not woken.is_set()
        assert wake(tmp_path) is True
        assert woken.wait(5)
    finally:
        listener.close()
    # no manager listening (another data dir's): the run waits for the manager's own look, nothing fails
    assert wake(tmp_path / "elsewhere") is False
