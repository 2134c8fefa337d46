"""Adaptor specs: what storage a user has, validated when loaded.

An adaptor is one top-level folder of the user's ``skerry://`` federation::

    {"name": "hpc", "type": "sftp", "host": "login.hpc.example", "username": "alice",
     "path": "/scratch/alice", "credentials": "hpc-key", "read_only": false}

``credentials`` names an entry of the user's credential store (never the secret
itself): specs can be shown, logged and returned by APIs; secrets cannot.
"""

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from skerry.errors import ConfigError

NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Adaptor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME, description="top-level folder name in skerry://")
    read_only: bool = False
    credentials: str | None = Field(None, description="name of an entry in the credential store")


class LocalAdaptor(_Adaptor):
    type: Literal["local"]
    path: str = Field(min_length=1, description="absolute folder on this machine")


class MemoryAdaptor(_Adaptor):
    type: Literal["memory"]
    path: str = "/"


class SftpAdaptor(_Adaptor):
    type: Literal["sftp"]
    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1)
    path: str = Field("", description="folder on the remote host; empty: the login folder")
    known_hosts: str | None = Field(None, description="known_hosts file; None accepts any host key")


class S3Adaptor(_Adaptor):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None


class WebdavAdaptor(_Adaptor):
    type: Literal["webdav"]
    url: str = Field(pattern=r"^https?://")


AdaptorSpec = Annotated[
    Union[LocalAdaptor, MemoryAdaptor, SftpAdaptor, S3Adaptor, WebdavAdaptor],
    Field(discriminator="type"),
]
_specs = TypeAdapter(list[AdaptorSpec])
_spec = TypeAdapter(AdaptorSpec)


def load_spec(data: dict[str, Any]) -> AdaptorSpec:
    """Validate one adaptor spec; raises ConfigError naming the bad field (never its value)."""
    try:
        return _spec.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])  # loc[0] is the type tag
        if first["type"].startswith("union_tag"):
            raise ConfigError("adaptor spec: 'type' must be one of local, memory, sftp, s3, webdav.") from None
        if not where:
            raise ConfigError(f"adaptor spec: {first['msg']}.") from None
        raise ConfigError(f"adaptor spec field {where!r}: {first['msg']}.") from None


def load_specs(data: list[dict[str, Any]]) -> list[AdaptorSpec]:
    """Validate a list of adaptor specs; raises ConfigError naming the first bad field."""
    try:
        specs = _specs.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"adaptor spec {where}: {first['msg']}") from None
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"adaptor names must be unique: {', '.join(dupes)} appear more than once")
    return specs
