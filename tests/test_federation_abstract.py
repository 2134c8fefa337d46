"""Must show 1 (issue 3), first part: fsspec's own abstract test suite (copy, get, put,
open, pipe) against ``SkerryFileSystem`` over local, memory, SFTP (a real OpenSSH sshd)
and S3 (a real S3-API server) adaptors."""

import uuid

import fsspec.tests.abstract as abstract
import pytest

from skerry.adaptors.config import build_federation
from skerry.adaptors.federation import SkerryFileSystem


def federation(spec: dict, credentials: dict | None = None) -> SkerryFileSystem:
    return SkerryFileSystem(*build_federation({"adaptors": [spec], "credentials": credentials or {}}))


class FederationFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs_join(self):
        return lambda *parts: "/".join(parts)

    @pytest.fixture
    def fs_path(self):
        return f"data/t-{uuid.uuid4().hex[:12]}"  # a fresh folder per test


class LocalFixtures(FederationFixtures):
    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, tmp_path_factory):
        return federation({"name": "data", "type": "local", "path": str(tmp_path_factory.mktemp("local"))})


class MemoryFixtures(FederationFixtures):
    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls):
        return federation({"name": "data", "type": "memory", "path": f"/m-{uuid.uuid4().hex[:8]}"})


class SftpFixtures(FederationFixtures):
    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, sshd, tmp_path_factory):
        root = tmp_path_factory.mktemp("sftp-root")
        return federation(
            {"name": "data", "type": "sftp", "host": "127.0.0.1", "port": sshd.port,
             "username": sshd.username, "path": str(root), "credentials": "hpc"},
            {"hpc": {"private_key": sshd.key}})


class S3Fixtures(FederationFixtures):
    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, s3server):
        bucket = f"fed-{uuid.uuid4().hex[:8]}"
        s3server.make_bucket(bucket)
        return federation(
            {"name": "data", "type": "s3", "bucket": bucket, "prefix": "skerry",
             "endpoint_url": s3server.url, "credentials": "s3"},
            {"s3": s3server.credentials()})
    # empty folders are kept as "folder/" marker objects, so the default
    # supports_empty_directories (True) applies to S3 adaptors too


class TestLocalCopy(abstract.AbstractCopyTests, LocalFixtures): pass
class TestLocalGet(abstract.AbstractGetTests, LocalFixtures): pass
class TestLocalPut(abstract.AbstractPutTests, LocalFixtures): pass
class TestLocalOpen(abstract.AbstractOpenTests, LocalFixtures): pass
class TestLocalPipe(abstract.AbstractPipeTests, LocalFixtures): pass

class TestMemoryCopy(abstract.AbstractCopyTests, MemoryFixtures): pass
class TestMemoryGet(abstract.AbstractGetTests, MemoryFixtures): pass
class TestMemoryPut(abstract.AbstractPutTests, MemoryFixtures): pass
class TestMemoryOpen(abstract.AbstractOpenTests, MemoryFixtures): pass
class TestMemoryPipe(abstract.AbstractPipeTests, MemoryFixtures): pass

class TestSftpCopy(abstract.AbstractCopyTests, SftpFixtures): pass
class TestSftpGet(abstract.AbstractGetTests, SftpFixtures): pass
class TestSftpPut(abstract.AbstractPutTests, SftpFixtures): pass
class TestSftpOpen(abstract.AbstractOpenTests, SftpFixtures): pass
class TestSftpPipe(abstract.AbstractPipeTests, SftpFixtures): pass

class TestS3Copy(abstract.AbstractCopyTests, S3Fixtures): pass
class TestS3Get(abstract.AbstractGetTests, S3Fixtures): pass
class TestS3Put(abstract.AbstractPutTests, S3Fixtures): pass
class TestS3Open(abstract.AbstractOpenTests, S3Fixtures): pass
class TestS3Pipe(abstract.AbstractPipeTests, S3Fixtures): pass
