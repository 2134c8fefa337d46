"""One user's micro-infrastructure as one process: ``python -m skerry.hub.userserver.launcher CMD...``.

It starts the WebDAV endpoint (``skerry.hub.userserver.webdav``) and the Jupyter server
(``CMD...``, normally ``jupyterhub.singleuser`` through ``skerry.quickstart``) as its children, in its own process
group, and lives exactly as long as both do:

- if either child exits, the other is stopped and this process exits, so the hub's
  ``poll`` sees the whole micro-infrastructure as dead;
- SIGINT/SIGTERM are passed to both children; SIGKILL follows after a grace period.

Both children inherit the environment the spawner prepared (hub API URL and token,
``SKERRY_DAV_*``): nothing secret is passed as an argument. They share one pipe, on which
the WebDAV endpoint tells the Jupyter server's find index what it wrote
(``skerry.adaptors.writefeed``).
"""

import os
import signal
import subprocess
import sys
import time

from skerry import config

GRACE = 5.0  # seconds a child gets to exit after SIGTERM


def _stop(children: list[subprocess.Popen], sig: int) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(sig)
    deadline = time.monotonic() + GRACE
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m skerry.hub.userserver.launcher JUPYTER-SERVER-COMMAND...", file=sys.stderr)
        return 2
    # what the WebDAV endpoint writes, its Jupyter server's find index learns at once (writefeed)
    feed_in, feed_out = os.pipe()
    os.set_blocking(feed_out, False)
    children = [
        subprocess.Popen([sys.executable, "-m", "skerry.hub.userserver.webdav"], pass_fds=(feed_out,),
                         env=config.environment({config.WRITES_OUT.name: str(feed_out)})),
        subprocess.Popen(argv, pass_fds=(feed_in,), env=config.environment({config.WRITES_IN.name: str(feed_in)})),
    ]
    os.close(feed_in)
    os.close(feed_out)
    received = []

    def forward(signum, frame):
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    # wait for the first child to exit, whichever it is
    pid, status = os.wait()
    first = next(c for c in children if c.pid == pid)
    first.returncode = os.waitstatus_to_exitcode(status)
    if not received:
        name = "WebDAV server" if first is children[0] else "Jupyter server"
        print(f"skerry: {name} exited ({first.returncode}); stopping the micro-infrastructure",
              file=sys.stderr, flush=True)
    _stop(children, signal.SIGTERM)
    return 0 if received else (first.returncode or 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
