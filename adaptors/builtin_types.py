"""The adaptor types skerry ships: one class each, registered in ``skerry.adaptor_types``.

Rules:
- backends are imported when an adaptor is made, never when this module is: a missing
  one gives an install hint (``AdaptorType.backend``);
- a type's options are its ``spec``; secrets never are (they come from the credential
  store, by name).
"""

import os
from typing import Literal

from pydantic import Field

from skerry.errors import ConfigError

from .registry import LocalRootFileSystem
from .types import AdaptorType, SpecBase


class LocalAdaptor(SpecBase):
    type: Literal["local"]
    path: str = Field(min_length=1, description="absolute folder on this machine; ~ at its start: the home of "
                                                "the process using it (a pod's home, where that is mounted)")


class MemoryAdaptor(SpecBase):
    type: Literal["memory"]
    path: str = "/"


class SftpAdaptor(SpecBase):
    type: Literal["sftp"]
    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1)
    path: str = Field("", description="folder on the remote host; empty: the login folder")
    known_hosts: str | None = Field(None, description="known_hosts file; None accepts any host key")


class S3Adaptor(SpecBase):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None


class WebdavAdaptor(SpecBase):
    type: Literal["webdav"]
    url: str = Field(pattern=r"^https?://")


class Local(AdaptorType):
    """A folder of this machine; no path, symlinks included, leads outside it."""

    name, spec, module, package, local = "local", LocalAdaptor, "fsspec.implementations.local", "fsspec", True

    def filesystem(self, spec, secrets):
        return self.backend().LocalFileSystem(auto_mkdir=True), os.path.expanduser(spec.path)

    def rooted(self, fs, root):
        return LocalRootFileSystem(root, fs)


class Memory(AdaptorType):
    """A folder in the server's memory (tests, scratch); gone when the server stops."""

    name, spec, module, package = "memory", MemoryAdaptor, "fsspec.implementations.memory", "fsspec"

    def filesystem(self, spec, secrets):
        return self.backend().MemoryFileSystem(), spec.path


class Sftp(AdaptorType):
    """A folder on an SSH host (an HPC login node), with a key or a password."""

    name, spec, module, package = "sftp", SftpAdaptor, "sshfs", "sshfs"
    needs_parents = True
    credential_kinds = frozenset({"ssh-key", "password"})
    key_setup = True

    def filesystem(self, spec, secrets):
        options = dict(host=spec.host, port=spec.port, username=spec.username, known_hosts=spec.known_hosts)
        if "private_key" in secrets:
            asyncssh = self.backend("asyncssh")
            options["client_keys"] = [asyncssh.import_private_key(secrets["private_key"])]
        if "password" in secrets:
            options["password"] = secrets["password"]
        return self.backend().SSHFileSystem(**options, skip_instance_cache=True), spec.path or "."


S3_READ_S = 600  # seconds an S3 call may wait for its answer (a multipart upload's completion)


class S3(AdaptorType):
    """A bucket (and prefix) of an S3 object store."""

    name, spec, module, package = "s3", S3Adaptor, "s3fs", "s3fs"
    object_store = True
    credential_kinds = frozenset({"s3"})

    def filesystem(self, spec, secrets):
        # without a credential entry, boto's usual chain (environment, config files) applies
        options = {k: secrets[k] for k in ("key", "secret", "token") if k in secrets}
        client = {k: v for k, v in (("endpoint_url", spec.endpoint_url), ("region_name", spec.region)) if v}
        # completing a large multipart upload can take the store minutes; at botocore's 60 s
        # read timeout the client retries a complete that is still running, and gets an error
        fs = self.backend().S3FileSystem(**options, client_kwargs=client, config_kwargs={"read_timeout": S3_READ_S},
                                         skip_instance_cache=True)
        return fs, f"{spec.bucket}/{spec.prefix.strip('/')}".rstrip("/")


class Webdav(AdaptorType):
    """A WebDAV server's folder, with a user name and password."""

    name, spec, module, package = "webdav", WebdavAdaptor, "webdav4.fsspec", "webdav4"
    needs_parents = True
    credential_kinds = frozenset({"password"})

    def filesystem(self, spec, secrets):
        auth = (secrets["username"], secrets["password"]) if "password" in secrets else None
        return self.backend().WebdavFileSystem(spec.url, auth=auth, skip_instance_cache=True), ""

    def check_credential(self, credential, entry):
        super().check_credential(credential, entry)
        if not entry["public"].get("username"):
            raise ConfigError(f"credential {credential!r} has no username, which webdav adaptors need.")
