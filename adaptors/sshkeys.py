"""SFTP key set-up and revocation, as LOBCDER does it: a password once, a key from then on.

``install_key`` logs in once with the user's password, generates an ed25519 key pair,
appends the public key (with a comment naming skerry, the user and the credential) to
the remote ``~/.ssh/authorized_keys`` (making ``.ssh`` 0700 and the file 0600 when
missing), and checks that the key itself logs in. ``revoke_key`` logs in with the key
and removes its line. Rules:

- the password lives only in this call's memory: never stored, logged or put in an error;
- all-or-nothing: if any step after the append fails, the line is removed again before
  the error is raised, so a failed set-up leaves the remote as it was;
- the remote file is rewritten whole through SFTP (a temp file renamed over it), so a
  broken connection never leaves it half-written; only SFTP is needed, no remote shell;
- errors are ``SshKeyError`` with an HTTP status: 400 for what the user can fix (wrong
  password, bad key text), 502 for a server that cannot be reached or misbehaves;
- asyncssh (which sshfs brings) is imported by each call, not by this module, so the
  service imports without it; a call without it is a ConfigError naming sshfs.
"""

import asyncio

from skerry.errors import ApiError, ConfigError

from . import atomic
from .registry import need

AUTHORIZED_KEYS = ".ssh/authorized_keys"  # relative to the login folder
TIMEOUT = 30  # seconds for each login or SFTP step


class SshKeyError(ApiError):
    """A key could not be installed or revoked on a host: ``status`` (502: the host, 400: the
    login) and ``code`` say why."""


def public_key_of(private_key: str) -> str:
    """The OpenSSH public key line of a private key; ConfigError if it is not one we can use."""
    asyncssh = need("sftp", "asyncssh")
    try:
        key = asyncssh.import_private_key(private_key)
    except asyncssh.KeyImportError as e:
        if "assphrase" in str(e):
            raise ConfigError("the private key is encrypted: give it without a passphrase.") from None
        raise ConfigError("private_key is not a private key asyncssh can read "
                          "(OpenSSH, PKCS#8 or PEM).") from None
    return key.export_public_key("openssh").decode().strip()


def _known_hosts(text: str | None):
    asyncssh = need("sftp", "asyncssh")
    if not text:
        return None  # like adaptor specs: no known_hosts accepts any host key
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.Error):
        raise SshKeyError(400, "bad_known_hosts", "known_hosts is not in OpenSSH known_hosts format.") from None


async def _connect(host: str, port: int, username: str, known_hosts: str | None, *,
                   password: str | None = None, key=None):
    """An SSH connection with exactly one way to log in (no agent, no ~/.ssh, no config)."""
    asyncssh = need("sftp", "asyncssh")
    options = dict(port=port, username=username, known_hosts=_known_hosts(known_hosts),
                   agent_path=None, config=None, connect_timeout=TIMEOUT)
    if password is not None:
        options.update(password=password, client_keys=None,
                       preferred_auth="password,keyboard-interactive")
    else:
        options.update(client_keys=[key], password=None, preferred_auth="publickey")
    try:
        return await asyncio.wait_for(asyncssh.connect(host, **options), TIMEOUT + 5)
    except asyncssh.PermissionDenied:
        how = "password" if password is not None else "key"
        raise SshKeyError(400 if password is not None else 502, f"ssh_{how}_refused",
                          f"{host}:{port} refused the {how} of {username!r}.") from None
    except asyncssh.HostKeyNotVerifiable:
        raise SshKeyError(502, "ssh_host_key_mismatch",
                          f"the host key of {host}:{port} is not in the known_hosts given.") from None
    except (TimeoutError, OSError, asyncssh.Error) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise SshKeyError(502, "ssh_unreachable", f"cannot log in to {host}:{port} ({reason}).") from None


async def _read_authorized(sftp) -> tuple[bytes, int | None]:
    """(content, mode) of the remote authorized_keys; (b"", None) when it does not exist."""
    asyncssh = need("sftp", "asyncssh")
    try:
        attrs = await sftp.stat(AUTHORIZED_KEYS)
        async with sftp.open(AUTHORIZED_KEYS, "rb") as f:
            return await f.read(), attrs.permissions
    except asyncssh.SFTPNoSuchFile:
        return b"", None


async def _write_authorized(sftp, content: bytes, mode: int | None) -> None:
    """Replace the remote authorized_keys whole: a temporary file beside it (``atomic``'s
    name), renamed over it (asyncssh's own SFTP client: the host is no adaptor)."""
    asyncssh = need("sftp", "asyncssh")
    if not await sftp.isdir(".ssh"):
        await sftp.mkdir(".ssh")
        await sftp.chmod(".ssh", 0o700)
    tmp = atomic.temp_path(AUTHORIZED_KEYS)
    try:
        async with sftp.open(tmp, "wb") as f:
            await f.write(content)
        await sftp.chmod(tmp, (mode & 0o7777) if mode is not None else 0o600)
        await sftp.posix_rename(tmp, AUTHORIZED_KEYS)
    except BaseException:
        try:
            await sftp.remove(tmp)
        except (asyncssh.Error, OSError):
            pass
        raise


def _blob(public_line: str) -> str:
    return public_line.split()[1]


def _without(content: bytes, blob: str) -> bytes:
    lines = content.decode(errors="surrogateescape").splitlines(keepends=True)
    kept = [line for line in lines if blob not in line.split()]
    return "".join(kept).encode(errors="surrogateescape")


async def install_key(host: str, port: int, username: str, password: str,
                      known_hosts: str | None, comment: str) -> tuple[str, str]:
    """(private key, public key line), the public key installed and checked on the remote."""
    asyncssh = need("sftp", "asyncssh")
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    public = key.export_public_key("openssh").decode().strip()
    conn = await _connect(host, port, username, known_hosts, password=password)
    del password  # not needed any more; nothing below may mention it
    try:
        async with conn:
            try:
                sftp = await asyncio.wait_for(conn.start_sftp_client(), TIMEOUT)
                content, mode = await asyncio.wait_for(_read_authorized(sftp), TIMEOUT)
            except (TimeoutError, asyncssh.Error, OSError):
                raise SshKeyError(502, "sftp_failed", f"cannot read ~/{AUTHORIZED_KEYS} on {host} "
                                                      "through SFTP.") from None
            if content and not content.endswith(b"\n"):
                content += b"\n"
            try:
                await asyncio.wait_for(_write_authorized(sftp, content + public.encode() + b"\n", mode), TIMEOUT)
            except (TimeoutError, asyncssh.Error, OSError):
                raise SshKeyError(502, "sftp_failed", f"cannot write ~/{AUTHORIZED_KEYS} on {host} "
                                                      "through SFTP.") from None
            try:
                check = await _connect(host, port, username, known_hosts, key=key)
                check.close()
            except BaseException as e:
                # leave the remote as it was: remove our line again through the password login
                try:
                    now, mode = await asyncio.wait_for(_read_authorized(sftp), TIMEOUT)
                    await asyncio.wait_for(_write_authorized(sftp, _without(now, _blob(public)), mode), TIMEOUT)
                except (TimeoutError, asyncssh.Error, OSError):
                    pass
                if isinstance(e, SshKeyError):
                    raise SshKeyError(502, "key_not_accepted",
                                      f"{host}:{port} did not accept the key installed in ~/{AUTHORIZED_KEYS} "
                                      "(does its sshd read that file? AuthorizedKeysFile, StrictModes); "
                                      "it was removed again.") from None
                raise
    except asyncssh.Error:
        raise SshKeyError(502, "ssh_failed", f"the SSH connection to {host}:{port} broke.") from None
    return key.export_private_key().decode(), public


async def revoke_key(host: str, port: int, username: str, private_key: str,
                     known_hosts: str | None) -> bool:
    """Remove the key's line from the remote authorized_keys, logging in with the key itself.

    False when the key no longer logs in (already removed there); SshKeyError(502) when
    the server cannot be reached.
    """
    asyncssh = need("sftp", "asyncssh")
    key = asyncssh.import_private_key(private_key)
    public = key.export_public_key("openssh").decode().strip()
    try:
        conn = await _connect(host, port, username, known_hosts, key=key)
    except SshKeyError as e:
        if e.code == "ssh_key_refused":
            return False
        raise
    try:
        async with conn:
            sftp = await asyncio.wait_for(conn.start_sftp_client(), TIMEOUT)
            content, mode = await asyncio.wait_for(_read_authorized(sftp), TIMEOUT)
            kept = _without(content, _blob(public))
            if kept != content:
                await asyncio.wait_for(_write_authorized(sftp, kept, mode), TIMEOUT)
    except (TimeoutError, asyncssh.Error, OSError):
        raise SshKeyError(502, "sftp_failed", f"cannot update ~/{AUTHORIZED_KEYS} on {host} "
                                              "through SFTP; the key stays installed.") from None
    return True
