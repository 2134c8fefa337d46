"""SFTP key set-up (LOBCDER-style): a password once, an installed key from then on.

A real OpenSSH sshd with password logins for a dedicated system user made here
(``useradd`` + ``chpasswd``; the tests run as root), and the real platform: dave gives
his password once through the API, skerry installs a key in his remote
``~/.ssh/authorized_keys``, his SFTP adaptor then works with the key alone (password
logins are switched off on that sshd), the password is nowhere on disk, and deleting
the credential removes the key there.
"""

import asyncio
import os
import pwd
import secrets
import signal
import stat
import subprocess

import asyncssh
import httpx
import pytest

from helpers import files_holding, free_port, pids_of, wait_for
from skerry.adaptors.store import AccountStore
from skerry.datadir import DataDir

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"


class PasswordSshd:
    """sshd on a high port letting ``user`` in by password (switchable) or by ~/.ssh/authorized_keys."""

    def __init__(self, base, user, authorized_keys_file=".ssh/authorized_keys"):
        self.base, self.user, self.keys_file = base, user, authorized_keys_file
        self.port = free_port()
        self.config = base / f"sshd_config_{self.port}"
        self.proc = None

    def write_config(self, passwords: bool):
        host_key = self.base / "host_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.base / f'sshd_{self.port}.pid'}", f"AuthorizedKeysFile {self.keys_file}",
            f"PasswordAuthentication {'yes' if passwords else 'no'}", "KbdInteractiveAuthentication no",
            "UsePAM no", f"AllowUsers {self.user}", "Subsystem sftp internal-sftp",
        ]) + "\n")

    def start(self):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.write_config(passwords=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.listening, 15, what="sshd")
        return self

    def listening(self):
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def passwords(self, allowed: bool):
        """Switch password logins on or off (sshd re-reads its config on SIGHUP)."""
        self.write_config(allowed)
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.listening() and self.login_with_password_works() == allowed, 15,
                 what="sshd to reload")

    def login_with_password_works(self, password=None) -> bool:
        return asyncio.run(_try_login(self.port, self.user, password=password or self.password))

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


async def _try_login(port, user, password=None, key=None) -> bool:
    options = dict(port=port, username=user, known_hosts=None, agent_path=None, config=None)
    if key is not None:
        options.update(client_keys=[key], preferred_auth="publickey")
    else:
        options.update(password=password, client_keys=None, preferred_auth="password")
    try:
        async with await asyncssh.connect("127.0.0.1", **options):
            return True
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError, OSError):
        return False


@pytest.fixture(scope="module")
def system_user():
    """A fresh system user with a random password: (name, password, home)."""
    name = f"skerry-t{secrets.token_hex(3)}"
    password = "pw-" + secrets.token_urlsafe(18)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
    # chpasswd reads stdin: the password never becomes a process argument
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
    yield name, password, pwd.getpwnam(name).pw_dir
    subprocess.run(["userdel", "-r", name], stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def sshd(system_user, tmp_path_factory):
    name, password, _ = system_user
    server = PasswordSshd(tmp_path_factory.mktemp("pwsshd"), name)
    server.password = password
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def keysdave(platform):
    platform.create_user("keysdave")
    return platform.user_token("keysdave")


def authorized_keys(home) -> bytes | None:
    path = os.path.join(home, ".ssh", "authorized_keys")
    return open(path, "rb").read() if os.path.exists(path) else None


def stored(platform, user="keysdave"):
    path = platform.data_dir / "secrets" / "credentials" / f"{user}.json"
    return path.read_bytes() if path.exists() else None


def setup_body(sshd, password, **extra):
    return {"kind": "sftp-key-setup", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user,
            "password": password, **extra}


def test_wrong_password_stores_nothing_and_leaves_the_remote_alone(platform, keysdave, sshd, system_user):
    _, password, home = system_user
    r = platform.api("PUT", API + "/users/keysdave/credentials/hpc", keysdave, json=setup_body(sshd, password + "x"))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "ssh_password_refused" and "refused the password" in r.json()["message"]
    assert stored(platform) is None
    assert not os.path.exists(os.path.join(home, ".ssh"))
    # a host that does not answer: 502, nothing stored either
    r = platform.api("PUT", API + "/users/keysdave/credentials/hpc", keysdave,
                     json={**setup_body(sshd, password), "port": free_port()})
    assert r.status_code == 502 and r.json()["error"] == "ssh_unreachable", r.text
    assert stored(platform) is None
    assert platform.api("GET", API + "/users/keysdave/credentials", keysdave).json() == {"credentials": []}


def test_key_not_accepted_is_taken_off_again(platform, keysdave, system_user, tmp_path):
    """An sshd that reads keys from elsewhere: the set-up fails and leaves authorized_keys as it was."""
    name, password, home = system_user
    other = PasswordSshd(tmp_path, name, authorized_keys_file="/nonexistent/%u").start()
    try:
        r = platform.api("PUT", API + "/users/keysdave/credentials/hpc", keysdave, json=setup_body(other, password))
    finally:
        other.stop()
    assert r.status_code == 502 and r.json()["error"] == "key_not_accepted", r.text
    assert authorized_keys(home) == b""  # the folder and file were made, our line removed again
    assert stored(platform) is None


def test_setup_installs_a_key_and_the_adaptor_works_with_it_alone(platform, keysdave, sshd, system_user):
    name, password, home = system_user
    os.remove(os.path.join(home, ".ssh", "authorized_keys"))  # left empty by the test above
    os.rmdir(os.path.join(home, ".ssh"))
    r = platform.api("PUT", API + "/users/keysdave/credentials/hpc", keysdave, json=setup_body(sshd, password))
    assert r.status_code == 200, r.text
    cred = r.json()
    assert cred["kind"] == "ssh-key" and cred["host"] == "127.0.0.1" and cred["username"] == name
    assert password not in r.text and "PRIVATE" not in r.text
    # the public key is in the remote authorized_keys, named after skerry, the user and the credential
    lines = authorized_keys(home).decode().splitlines()
    assert lines == [cred["public_key"]] and cred["public_key"].endswith(" skerry:keysdave/hpc")
    ssh_dir = os.path.join(home, ".ssh")
    assert stat.S_IMODE(os.stat(ssh_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(ssh_dir, "authorized_keys")).st_mode) == 0o600
    assert os.stat(ssh_dir).st_uid == pwd.getpwnam(name).pw_uid

    # no more passwords on that host: the adaptor must get in with the key alone
    sshd.passwords(False)
    r = platform.api("PUT", API + "/users/keysdave/adaptors/hpc", keysdave, json={
        "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": name, "credentials": "hpc"})
    assert r.status_code == 200, r.text
    platform.start_server("keysdave")
    with httpx.Client(base_url=f"{platform.url}/dav/keysdave/hpc/", auth=("keysdave", keysdave), timeout=60) as dav:
        assert dav.put("result.txt", content=b"computed on hpc").status_code == 201
        assert dav.get("result.txt").content == b"computed on hpc"
    assert open(os.path.join(home, "result.txt"), "rb").read() == b"computed on hpc"

    handed = (platform.data_dir / "run" / "users" / "keysdave" / "default.adaptors.json").read_text()
    assert "private_key" in handed and password not in handed and '"password"' not in handed
    # the password is nowhere under the data dir (logs included), nor in any process's arguments
    assert files_holding(platform.data_dir, password) == []
    assert not pids_of(password)


def test_delete_revokes_the_key_on_the_remote(platform, keysdave, sshd, system_user):
    name, _, home = system_user
    r = platform.api("DELETE", API + "/users/keysdave/credentials/hpc", keysdave)
    assert r.status_code == 409, r.text  # the hpc adaptor still uses it
    platform.stop_server("keysdave")
    assert platform.api("DELETE", API + "/users/keysdave/adaptors/hpc", keysdave).status_code == 204

    store = AccountStore.for_data_dir(DataDir(platform.data_dir))  # the test reads the key to try it
    key = asyncssh.import_private_key(store.credentials("keysdave")["hpc"]["secret"]["private_key"])
    assert asyncio.run(_try_login(sshd.port, name, key=key))
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOfTheUserKeepThisLineXXXXXXXXXXXXX someone@laptop\n"
    with open(os.path.join(home, ".ssh", "authorized_keys"), "a") as f:
        f.write(other)

    r = platform.api("DELETE", API + "/users/keysdave/credentials/hpc", keysdave)
    assert r.status_code == 204, r.text
    assert authorized_keys(home).decode() == other  # only our line is gone
    assert not asyncio.run(_try_login(sshd.port, name, key=key))
    assert platform.api("GET", API + "/users/keysdave/credentials", keysdave).json() == {"credentials": []}


def test_revoking_on_an_unreachable_host_deletes_nothing_unless_forced(platform, keysdave, sshd, system_user):
    _, password, home = system_user
    sshd.passwords(True)
    r = platform.api("PUT", API + "/users/keysdave/credentials/gone", keysdave, json=setup_body(sshd, password))
    assert r.status_code == 200, r.text
    sshd.stop()  # the host goes away (last test of the module: it stays down)
    r = platform.api("DELETE", API + "/users/keysdave/credentials/gone", keysdave)
    assert r.status_code == 502 and "force=true" in r.json()["message"], r.text
    listed = platform.api("GET", API + "/users/keysdave/credentials", keysdave).json()["credentials"]
    assert [c["name"] for c in listed] == ["gone"]
    r = platform.api("DELETE", API + "/users/keysdave/credentials/gone?force=true", keysdave)
    assert r.status_code == 204
    assert platform.api("GET", API + "/users/keysdave/credentials", keysdave).json() == {"credentials": []}
