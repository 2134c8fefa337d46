"""The rules of the skerry:// federation: adaptors as top-level folders, traversal refused,
read-only adaptors, streaming copies across adaptors, validated specs, private config."""

import hashlib
import os

import fsspec
import pytest

from skerry.adaptors import federation as federation_module
from skerry.adaptors.config import build_federation, read_config, write_config
from skerry.adaptors.federation import SkerryFileSystem
from skerry.adaptors.specs import load_specs
from skerry.errors import AdaptorUnavailable, ConfigError


@pytest.fixture
def fed(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "genome.fa").write_bytes(b">chr1\nACGT\n")
    config = {"adaptors": [
        {"name": "home", "type": "local", "path": str(tmp_path / "home")},
        {"name": "ref", "type": "local", "path": str(tmp_path / "ref"), "read_only": True},
        {"name": "scratch", "type": "memory", "path": f"/scratch-{os.getpid()}"},
    ]}
    return SkerryFileSystem(*build_federation(config))


def test_root_lists_the_adaptors_as_folders(fed):
    assert fed.ls("", detail=False) == ["home", "ref", "scratch"]
    assert fed.isdir("skerry://ref")
    assert fed.info("ref")["read_only"] is True
    assert fed.ls("ref", detail=False) == ["ref/genome.fa"]
    assert fed.cat("skerry://ref/genome.fa") == b">chr1\nACGT\n"


@pytest.mark.parametrize("path", ["home/../ref/genome.fa", "home/a/../../x", "home/./x", "home//x",
                                  "../etc/passwd", "home/.."])
def test_traversal_is_refused(fed, path):
    with pytest.raises(ValueError, match="not allowed"):
        fed.cat(path)
    with pytest.raises(ValueError, match="not allowed"):
        fed.pipe(path, b"x")


def test_symlinks_out_of_a_local_adaptor_are_refused(fed, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    os.symlink(outside, tmp_path / "home" / "link")
    os.symlink(outside / "secret.txt", tmp_path / "home" / "file-link")
    (tmp_path / "home" / "inside.txt").write_text("yours")
    os.symlink(tmp_path / "home" / "inside.txt", tmp_path / "home" / "ok-link")
    for path in ("home/link/secret.txt", "home/file-link"):
        with pytest.raises(PermissionError, match="leads outside"):
            fed.cat(path)
        with pytest.raises(PermissionError, match="leads outside"):
            fed.pipe(path, b"overwritten")
    with pytest.raises(PermissionError, match="leads outside"):
        fed.ls("home/link")
    assert (outside / "secret.txt").read_text() == "not yours"
    assert fed.cat("home/ok-link") == b"yours"  # a link that stays inside is fine
    # isfile (a job's check of its inputs) answers the same: a file only inside
    assert [fed.isfile(p) for p in ("home/inside.txt", "home/ok-link", "home/file-link", "home/link/secret.txt",
                                    "home/link", "home/missing", "home", "", "nope/x", "home/../ref/genome.fa",
                                    "ref/genome.fa", "scratch/none")] == [
        True, True, False, False, False, False, False, False, False, False, True, False]
    fed.pipe("scratch/made", b"x")
    assert fed.isfile("scratch/made")  # another backend's own isfile


def test_unknown_adaptor_names_the_known_ones(fed):
    with pytest.raises(FileNotFoundError, match="no adaptor named 'nope'.*home, ref, scratch"):
        fed.ls("nope")


def test_read_only_adaptor_refuses_every_write(fed):
    for write in (lambda: fed.pipe("ref/new.txt", b"x"),
                  lambda: fed.open("ref/genome.fa", "wb"),
                  lambda: fed.rm("ref/genome.fa"),
                  lambda: fed.mkdir("ref/dir"),
                  lambda: fed.touch("ref/t"),
                  lambda: fed.mv("ref/genome.fa", "home/genome.fa"),
                  lambda: fed.copy("home", "ref/copy", recursive=True)):
        with pytest.raises(PermissionError, match="'ref' is read-only"):
            write()
    assert fed.ls("ref", detail=False) == ["ref/genome.fa"]
    # reading from it and copying out of it work
    fed.copy("ref/genome.fa", "home/genome.fa")
    assert fed.cat("home/genome.fa") == b">chr1\nACGT\n"


def test_root_and_adaptor_folders_cannot_be_changed(fed):
    for change in (lambda: fed.rm("home", recursive=True), lambda: fed.mkdir("newadaptor"),
                   lambda: fed.rmdir("scratch"), lambda: fed.pipe("", b"x")):
        with pytest.raises((PermissionError, FileNotFoundError)):
            change()
    assert fed.ls("", detail=False) == ["home", "ref", "scratch"]


def test_copy_across_adaptors_streams_in_blocks(fed, monkeypatch):
    monkeypatch.setattr(federation_module, "COPY_BLOCK", 64 * 1024)
    data = os.urandom(1024 * 1024 + 17)
    fed.pipe("home/big.bin", data)
    reads = []
    original = fed.adaptors["home"].open

    def spy_open(path, mode="rb", **kw):
        f = original(path, mode, **kw)
        if "r" in mode:
            read = f.read
            f.read = lambda n=-1: reads.append(n) or read(n)
        return f

    monkeypatch.setattr(fed.adaptors["home"], "open", spy_open)
    fed.copy("home/big.bin", "scratch/big.bin")
    assert fed.cat("scratch/big.bin") == data
    assert reads and max(reads) == 64 * 1024  # never the whole file at once


def test_cross_adaptor_copy_sftp_to_s3(sshd, s3server, tmp_path):
    s3server.make_bucket("cross-copy")
    (tmp_path / "hpc").mkdir()
    config = {
        "adaptors": [
            {"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": sshd.port,
             "username": sshd.username, "path": str(tmp_path / "hpc"), "credentials": "key"},
            {"name": "s3data", "type": "s3", "bucket": "cross-copy", "endpoint_url": s3server.url,
             "credentials": "s3"},
        ],
        "credentials": {"key": {"private_key": sshd.key}, "s3": s3server.credentials()},
    }
    fed = SkerryFileSystem(*build_federation(config))
    data = os.urandom(3 * 1024 * 1024)
    fed.pipe("hpc/run1/out.bin", data)
    fed.copy("hpc/run1", "s3data/run1", recursive=True)
    assert hashlib.sha256(fed.cat("s3data/run1/out.bin")).digest() == hashlib.sha256(data).digest()
    fed.mkdir("hpc/empty")
    fed.rmdir("hpc/empty")  # sshfs's own sync rmdir silently does nothing
    assert not (tmp_path / "hpc" / "empty").exists()


@pytest.mark.parametrize("spec,message", [
    ({"name": "Home", "type": "local", "path": "/x"}, "name"),
    ({"name": "home", "type": "ftp"}, "type"),
    ({"name": "home", "type": "local"}, "path"),
    ({"name": "home", "type": "local", "path": "/x", "color": "red"}, "color"),
    ({"name": "s", "type": "s3", "bucket": "ab"}, "bucket"),
    ({"name": "h", "type": "sftp", "host": "h", "username": "u", "port": 0}, "port"),
    ({"name": "w", "type": "webdav", "url": "ftp://x"}, "url"),
])
def test_bad_specs_are_refused_with_the_field_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_specs([spec])


def test_duplicate_adaptor_names_are_refused():
    spec = {"name": "home", "type": "memory"}
    with pytest.raises(ConfigError, match="home appear more than once"):
        load_specs([spec, spec])


def test_missing_credentials_are_named(tmp_path):
    config = {"adaptors": [{"name": "s", "type": "s3", "bucket": "abc", "credentials": "mine"}]}
    with pytest.raises(ConfigError, match="needs credentials 'mine'"):
        build_federation(config)


def test_config_file_must_be_private_and_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "adaptors.json"
    write_config(str(path), [{"name": "home", "type": "local", "path": str(tmp_path)}],
                 {"k": {"password": "hunter2-secret"}})
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_config(str(path))["credentials"]["k"]["password"] == "hunter2-secret"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="must be mode 0600"):
        read_config(str(path))
    # a Kubernetes Secret's file: read-only, of the reader's own group; another group's is refused
    os.chmod(path, 0o440)
    assert read_config(str(path))["credentials"]["k"]["password"] == "hunter2-secret"
    os.chown(path, -1, os.getgid() + 1)
    with pytest.raises(ConfigError, match="must be mode 0600"):
        read_config(str(path))
    os.chmod(path, 0o460)
    with pytest.raises(ConfigError, match="must be mode 0600"):
        read_config(str(path))
    with pytest.raises(ConfigError, match="adaptor spec 0: .*'type'"):
        write_config(str(tmp_path / "bad.json"), [{"name": "x", "type": "nope"}])
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.json.tmp").exists()


def test_skerry_protocol_is_registered_and_reads_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "adaptors.json"
    (tmp_path / "home").mkdir()
    write_config(str(path), [{"name": "home", "type": "local", "path": str(tmp_path / "home")}])
    monkeypatch.setenv("SKERRY_ADAPTORS", str(path))
    with fsspec.open("skerry://home/hello.txt", "w", skip_instance_cache=True) as f:
        f.write("hello")
    assert (tmp_path / "home" / "hello.txt").read_text() == "hello"
    monkeypatch.delenv("SKERRY_ADAPTORS")
    with pytest.raises(ConfigError, match="SKERRY_ADAPTORS is not set"):
        fsspec.filesystem("skerry", skip_instance_cache=True)


def test_missing_backend_fails_its_own_adaptor_with_an_install_hint(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "sshfs", None)  # as if it were not installed
    (tmp_path / "a.txt").write_text("still here")
    config = {"adaptors": [{"name": "h", "type": "sftp", "host": "x", "username": "u"},
                           {"name": "home", "type": "local", "path": str(tmp_path)}]}
    fs = SkerryFileSystem(*build_federation(config), skip_instance_cache=True)
    assert fs.ls("", detail=False) == ["h", "home"]  # listing the adaptors needs no backend
    assert fs.cat("home/a.txt") == b"still here"
    with pytest.raises(ConfigError, match="Install sshfs to use sftp adaptors: pip install sshfs"):
        fs.ls("h")
    assert fs.cat("home/a.txt") == b"still here"


def test_missing_asyncssh_fails_the_call_not_the_service(monkeypatch):
    import subprocess
    import sys

    from skerry.adaptors import sshkeys

    # the service (which serves SFTP key set-up) imports without asyncssh
    subprocess.run([sys.executable, "-c", "import sys; sys.modules['asyncssh'] = None; "
                    "import skerry.hub.service.app"], check=True)
    monkeypatch.setitem(sys.modules, "asyncssh", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="Install sshfs to use sftp adaptors: pip install sshfs"):
        sshkeys.public_key_of("-----BEGIN OPENSSH PRIVATE KEY-----")


def _sftp_spec(server, name="hpc", path=""):
    spec = {"name": name, "type": "sftp", "host": "127.0.0.1", "port": server.port,
            "username": server.username, "path": path, "credentials": "key"}
    return {"adaptors": [spec, {"name": "mem", "type": "memory"}],
            "credentials": {"key": {"private_key": server.key}}}


def test_an_unreachable_adaptor_does_not_take_the_others_down(tmp_path):
    from servers import Sshd

    server = Sshd(tmp_path / "sshd")  # configured, not started: nothing listens on its port
    server.start().stop()
    fed = SkerryFileSystem(*build_federation(_sftp_spec(server)))
    assert fed.ls("", detail=False) == ["hpc", "mem"]  # listing adaptors connects nothing
    fed.pipe_file("mem/a.txt", b"fine")
    assert fed.cat_file("mem/a.txt") == b"fine"
    with pytest.raises(AdaptorUnavailable, match="adaptor 'hpc' cannot be reached"):
        fed.ls("hpc")
    server.start()  # the host comes back: the next access connects
    try:
        fed.pipe_file("hpc/b.txt", b"back")
        assert fed.cat_file("hpc/b.txt") == b"back"
    finally:
        server.stop()


def test_copies_inside_an_sftp_only_adaptor_fall_back_to_streaming(tmp_path):
    from servers import Sshd

    remote = tmp_path / "remote"
    remote.mkdir()
    server = Sshd(tmp_path / "sshd", sftp_only=True).start()
    try:
        fed = SkerryFileSystem(*build_federation(_sftp_spec(server, path=str(remote))))
        data = os.urandom(3 * 1024 * 1024 + 5)
        fed.pipe_file("hpc/in/a.bin", data)
        backend = fed.adaptors["hpc"]
        with pytest.raises(Exception) as refused:  # what sshfs's own server-side copy meets here
            backend.cp_file("in/a.bin", "out/x.bin")
        assert federation_module._remote_command_refused(refused.value)
        fed.cp_file("hpc/in/a.bin", "hpc/out/a.bin")
        assert (remote / "out" / "a.bin").read_bytes() == data
        fed.cp_file("hpc/in/a.bin", "hpc/out/b.bin")  # remembered: streams straight away
        assert (remote / "out" / "b.bin").read_bytes() == data
        with pytest.raises(FileNotFoundError):
            fed.cp_file("hpc/in/missing.bin", "hpc/out/c.bin")
    finally:
        server.stop()


def test_s3_adaptors_keep_empty_folders_like_a_file_system(s3server):
    s3server.make_bucket("folders")
    fed = SkerryFileSystem(*build_federation({
        "adaptors": [{"name": "s3", "type": "s3", "bucket": "folders", "endpoint_url": s3server.url,
                      "credentials": "s"}],
        "credentials": {"s": s3server.credentials()}}))
    fed.mkdir("s3/empty")
    assert fed.isdir("s3/empty") and fed.ls("s3/empty") == []  # the marker is no file of its own
    with pytest.raises(FileExistsError):
        fed.mkdir("s3/empty")
    with pytest.raises(FileNotFoundError):
        fed.mkdir("s3/missing/child", create_parents=False)
    fed.makedirs("s3/a/b/c", exist_ok=True)
    fed.pipe_file("s3/a/b/f.txt", b"data")
    assert fed.find("s3") == ["s3/a/b/f.txt"]
    fed.mv("s3/a", "s3/moved", recursive=True)
    assert not fed.exists("s3/a")
    assert fed.isdir("s3/moved/b/c") and fed.cat_file("s3/moved/b/f.txt") == b"data"
    fed.rm("s3/moved", recursive=True)
    fed.rm("s3/empty", recursive=True)
    assert fed.ls("s3", detail=False) == []


def test_links_leading_outside_a_local_adaptor_are_not_listed(tmp_path):
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "a.txt").write_text("hi")
    os.symlink("/etc/passwd", home / "passwd")  # its size and times are not the user's to see
    os.symlink("/etc", home / "etc")
    os.symlink(home / "sub" / "a.txt", home / "inside")
    fed = SkerryFileSystem(*build_federation({"adaptors": [{"name": "home", "type": "local", "path": str(home)}]}))
    assert sorted(fed.ls("home", detail=False)) == ["home/inside", "home/sub"]
    assert sorted(fed.find("home", withdirs=True)) == ["home", "home/inside", "home/sub", "home/sub/a.txt"]
    for info in fed.ls("home") + [fed.info("home/inside")]:
        assert "destination" not in info  # no absolute path of this machine in any listing
    assert fed.cat_file("home/inside") == b"hi"
    with pytest.raises(PermissionError):
        fed.info("home/passwd")


def test_a_local_listing_says_what_fsspec_says(tmp_path):
    """The one-scandir listing of a local folder: the same entries, keys and values as
    fsspec's own ``ls`` (an ``info()`` per entry), links included."""
    from fsspec.implementations.dirfs import DirFileSystem

    from skerry.adaptors.registry import LocalRootFileSystem

    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "a.txt").write_text("hi")
    (home / "b.bin").write_bytes(b"\0" * 1000)
    os.symlink(home / "sub" / "a.txt", home / "sub" / "inside")
    os.symlink(home / "sub", home / "folder-link")
    os.symlink("/etc/passwd", home / "sub" / "outside")
    fs = LocalRootFileSystem(str(home), fsspec.filesystem("file"))
    for folder in ("", "sub"):
        generic = [e for e in map(fs._visible, DirFileSystem.ls(fs, folder, detail=True)) if e]
        assert sorted(fs.ls(folder), key=lambda e: e["name"]) == sorted(generic, key=lambda e: e["name"])
    assert sorted(fs.ls("sub", detail=False)) == ["sub/a.txt", "sub/inside"]
    assert fs.ls("b.bin") == [fs.info("b.bin")]  # a file lists itself, as fsspec's does


def test_entries_by_name_are_the_listings_entries(tmp_path):
    """A few names of a local folder read alone: each entry as the folder's listing has it,
    what the listing leaves out left out, a name that is no entry of the folder ignored."""
    from skerry.adaptors.atomic import temp_name

    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "a.txt").write_text("hi")
    (home / "sub" / "deeper").mkdir()
    os.symlink("a.txt", home / "sub" / "inside")
    os.symlink("/etc/passwd", home / "sub" / "outside")
    (home / "sub" / temp_name("b.txt")).write_text("half")  # a PUT being written
    fed = SkerryFileSystem(*build_federation({"adaptors": [
        {"name": "home", "type": "local", "path": str(home)},
        {"name": "other", "type": "memory", "path": "/x"}]}))
    listed = {e["name"]: e for e in fed.ls("home/sub")}
    names = ["a.txt", "deeper", "inside", "outside", "gone", temp_name("b.txt"), "../sub", ".", "deeper/x"]
    assert {e["name"]: e for e in fed.entries("home/sub", names)} == listed
    assert fed.entries("home", ["sub"]) == [e for e in fed.ls("home") if e["name"] == "home/sub"]
    with pytest.raises(FileNotFoundError):
        fed.entries("home/nothing", ["a"])
    with pytest.raises(NotImplementedError):
        fed.entries("other", ["a"])


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named temporary"])
def test_a_local_write_is_whole_or_nothing(tmp_path, monkeypatch, unnamed):
    """The WebDAV fast path's write: a new file, a file replaced, a write cut short (new or
    replacing: nothing of it stays, no temporary file), a link replaced and not followed;
    with the file system's unnamed files and, where it has none, through a hidden name."""
    from skerry.adaptors import atomic

    if not unnamed:
        monkeypatch.setattr(os, "O_TMPFILE", 0)  # a folder opened for writing: EISDIR, as without O_TMPFILE
    path = tmp_path / "a.txt"
    written = atomic.write_local(str(path), [b"one", b"two"])
    assert path.read_bytes() == b"onetwo"
    assert (written.st_size, written.st_mtime_ns) == (6, path.stat().st_mtime_ns)  # what its ETag is made of
    atomic.write_local(str(path), [b"new"])
    assert path.read_bytes() == b"new"

    def cut_short():
        yield b"part"
        raise ConnectionError("the client went away")

    for target in (tmp_path / "b.txt", path):
        with pytest.raises(ConnectionError):
            atomic.write_local(str(target), cut_short())
    (tmp_path / "outside.txt").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "outside.txt")
    atomic.write_local(str(tmp_path / "link"), [b"mine"])
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_bytes() == b"mine"
    assert (tmp_path / "outside.txt").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "link", "outside.txt"]
    assert path.read_bytes() == b"new"

    def unread():
        raise AssertionError("the body was read")
        yield b""

    for nowhere in (tmp_path / "missing" / "c.txt", path / "c.txt"):  # no folder, a file for a folder
        with pytest.raises(atomic.NoFolder):
            atomic.write_local(str(nowhere), unread())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "link", "outside.txt"]
