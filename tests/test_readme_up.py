"""Must show 1: the README's first command, run in a fresh clone, brings up the platform.

The clone gets its own plain virtual environment (no system site-packages: a dependency
missing from ``pip install .`` would be hidden by what the tests installed) and the
command is run exactly as the README gives it, with only the data dir and port appended.
pip resolves as a user's would; only its own cache makes reruns faster.
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


@pytest.mark.timeout(600)  # pip install . resolves and installs everything: a minute or two
def test_readme_up_command_in_a_fresh_clone(tmp_path, sshd):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv}/bin:{os.environ['PATH']}",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = readme_command("up-command")
    assert command.endswith("skerry up")

    p = Platform(tmp_path / "data", command=["bash", "-c", command + ' "$@"', "readme"],
                 cwd=clone, env=env).start(timeout=480)
    try:
        # every adaptor type's backend and the tutorials' papermill came with pip install .
        subprocess.run([f"{venv}/bin/python", "-c", "import sshfs, s3fs, webdav4.fsspec, papermill"],
                       cwd=tmp_path, check=True)  # not this checkout's folder: its skerry/ would shadow
        # the platform runs from the clone's installation, not from this checkout
        hub_pid = int((p.data_dir / "run" / "hub.pid").read_text().split()[0])
        hub_cmd = open(f"/proc/{hub_pid}/cmdline", "rb").read().decode()
        assert str(venv) in hub_cmd, hub_cmd

        p.create_user("alice")
        token = p.user_token("alice")
        # an SFTP adaptor: the service reads its key (asyncssh), alice's server its files (sshfs)
        sftp_root = tmp_path / "sftp"
        sftp_root.mkdir()
        api = "/services/skerry/api/v1/users/alice"
        r = p.api("PUT", f"{api}/credentials/hpc-key", token, json={"kind": "ssh-key", "private_key": sshd.key})
        assert r.status_code == 200, r.text
        r = p.api("PUT", f"{api}/adaptors/hpc", token, json={
            "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
            "path": str(sftp_root), "credentials": "hpc-key"})
        assert r.status_code == 200, r.text
        r = p.api("POST", "/hub/api/users/alice/server")
        assert r.status_code in (201, 202)
        wait_for(lambda: (p.server("alice") or {}).get("ready"), 60, what="alice's server")
        r = httpx.get(f"{p.url}/user/alice/api/status", headers={"Authorization": f"token {token}"})
        assert r.status_code == 200
        r = httpx.request("PROPFIND", f"{p.url}/dav/alice/", auth=("alice", token), headers={"Depth": "1"})
        assert r.status_code == 207 and "/dav/alice/hpc/" in r.text
        r = httpx.put(f"{p.url}/dav/alice/hpc/hello.txt", content=b"over sftp", auth=("alice", token))
        assert r.status_code == 201, r.text
        assert (sftp_root / "hello.txt").read_bytes() == b"over sftp"
        pgid = p.group_of("alice")
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group
        os.killpg(p.proc.pid, signal.SIGINT)
        p.proc.wait(90)
    assert p.proc.returncode == 0
    wait_for(lambda: not is_running(pgid) and not pids_of(str(p.data_dir), environ=True),
             timeout=30, what="every process of the platform to exit")
