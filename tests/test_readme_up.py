"""Must show 1: the README's first command, run in a fresh clone, brings up the platform.

The clone gets its own virtual environment (seeing this machine's site-packages, so the
dependencies need not download again) and the command is run exactly as the README gives
it, with only the data dir and port appended.
"""

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from helpers import REPO, Platform, pids_of, wait_for
from skerry.process import is_running

pytestmark = pytest.mark.platform


def readme_command(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)\n```", text, re.S)
    assert block, f"README.md has no {marker} block"
    return block.group(1).strip()


def test_readme_up_command_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv}/bin:{os.environ['PATH']}",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = readme_command("up-command")
    assert command.endswith("skerry up")

    p = Platform(tmp_path / "data", command=["bash", "-c", command + ' "$@"', "readme"],
                 cwd=clone, env=env).start(timeout=300)
    try:
        # the platform runs from the clone's installation, not from this checkout
        hub_pid = int((p.data_dir / "run" / "hub.pid").read_text().split()[0])
        hub_cmd = open(f"/proc/{hub_pid}/cmdline", "rb").read().decode()
        assert str(venv) in hub_cmd, hub_cmd

        p.create_user("alice")
        r = p.api("POST", "/hub/api/users/alice/server")
        assert r.status_code in (201, 202)
        wait_for(lambda: (p.server("alice") or {}).get("ready"), 60, what="alice's server")
        token = p.user_token("alice")
        r = httpx.get(f"{p.url}/user/alice/api/status", headers={"Authorization": f"token {token}"})
        assert r.status_code == 200
        r = httpx.request("PROPFIND", f"{p.url}/dav/alice/", auth=("alice", token), headers={"Depth": "1"})
        assert r.status_code == 207
        pgid = p.group_of("alice")
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group
        os.killpg(p.proc.pid, signal.SIGINT)
        p.proc.wait(90)
    assert p.proc.returncode == 0
    wait_for(lambda: not is_running(pgid) and not pids_of(str(p.data_dir), environ=True),
             timeout=30, what="every process of the platform to exit")
