"""Real storage servers on 127.0.0.1 for tests: OpenSSH sshd (SFTP) and moto (S3 API)."""

import os
import subprocess
from pathlib import Path

import httpx

from helpers import free_port, wait_for

SSHD = "/usr/sbin/sshd"


class Sshd:
    """An OpenSSH sshd on a high port with its own config, host key and authorized key.

    Logs in as the current user with ``key`` (a private key, PEM text); SFTP only.
    """

    def __init__(self, base: Path, sftp_only: bool = False):
        self.sftp_only = sftp_only  # like many HPC data movers: no shell, no remote commands
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    def start(self):
        if not os.path.exists(SSHD):
            raise RuntimeError("sshd is missing: apt-get install -y openssh-server")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        host_key = self.base / "host_key"
        user_key = self.base / "user_key"
        for key in (host_key, user_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = self.base / "authorized_keys"
        authorized.write_text((self.base / "user_key.pub").read_text())
        config = self.base / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.base / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
            # bash sources ~/.bashrc for commands run by sshd (SHLVL below 2): this machine's root
            # runs `pyenv init` there, 120 ms of CPU per remote `cp`; an HPC account's would not
            "SetEnv SHLVL=2",
        ] + (["ForceCommand internal-sftp"] if self.sftp_only else [])) + "\n")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 15, what="sshd")
        return self

    def _listening(self):
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def key(self) -> str:
        return (self.base / "user_key").read_text()

    @property
    def username(self) -> str:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


class S3Server:
    """moto's S3-API server in this process, on a free port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self):
        import moto.backends
        from moto.server import ThreadedMotoServer

        # moto lists its own package folder (about 180 stats) twice a request to route it;
        # the list never changes while the tests run, so it is listed once
        modules = tuple(moto.backends.list_of_moto_modules())
        moto.backends.list_of_moto_modules = lambda: modules
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        wait_for(lambda: self._up(), 15, what="the S3 server")
        return self

    def _up(self):
        try:
            httpx.get(self.url, timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def credentials(self) -> dict:
        return {"key": "testing", "secret": "testing"}

    def make_bucket(self, name: str):
        import s3fs

        fs = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                               client_kwargs={"endpoint_url": self.url})
        fs.mkdir(name)

    def stop(self):
        if self.server:
            self.server.stop()


