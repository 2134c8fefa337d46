"""HTTPS (issue 15, must show 7): ``skerry up --ssl-cert CERT --ssl-key KEY`` serves the hub,
the WebDAV endpoints and the data API over HTTPS only, with a certificate this module makes
(self-signed, for 127.0.0.1). A desktop client trusts it as a user would (rclone's
``--ca-cert``); alice's own server trusts it without being told (``skerry.tls``).

Real components: the platform (``skerry up``), rclone (copy, check, and a FUSE mount), a
kernel of alice's server.
"""

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys

import httpx
import pytest
from helpers import Platform, kill_leftovers, wait_for

from skerry.kernels.remote import RemoteKernel

pytestmark = pytest.mark.platform


def self_signed(folder) -> tuple:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skerry test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tls):
    """This module's platform serves HTTPS (the conftest's ``alice`` starts her server on it)."""
    p = Platform(tmp_path_factory.mktemp("platform") / "data", tls=tls).start()
    yield p
    p.stop()
    kill_leftovers(p.data_dir)


def test_the_platform_speaks_https_only_with_the_certificate_given(platform, tls, alice):
    assert f"skerry is running at https://127.0.0.1:{platform.port}/" in platform.output.decode()
    trusted = ssl.create_default_context(cafile=str(tls[0]))
    me = httpx.get(f"{platform.url}/hub/api/user", headers={"Authorization": f"token {alice}"},
                   verify=trusted, timeout=30)
    assert me.status_code == 200 and me.json()["name"] == "alice"
    # the certificate served is the one given: a client that does not trust it refuses it
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{platform.url}/hub/api/", timeout=30)
    # and nothing answers plain HTTP on the port
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{platform.port}/hub/api/", timeout=30).raise_for_status()
    # the data API and alice's WebDAV endpoint, through the same proxy
    datasets = httpx.get(f"{platform.url}/services/skerry/api/v1/datasets",
                         headers={"Authorization": f"token {alice}"}, verify=trusted, timeout=30)
    assert datasets.status_code == 200, datasets.text
    put = httpx.put(f"{platform.url}/dav/alice/home/over-tls.txt", content=b"sealed", auth=("alice", alice),
                    verify=trusted, timeout=30)
    assert put.status_code == 201 and (platform.data_dir / "users" / "alice" / "over-tls.txt").read_bytes() == b"sealed"


def test_alices_kernel_reaches_the_platform_at_its_https_url(platform, tls, alice, monkeypatch):
    """Inside her server the platform's URL is the public HTTPS one; her processes trust its
    certificate (SSL_CERT_FILE), and still the public CAs, with nothing set by her."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[0]))  # this test process, for the kernel's websocket
    code = ("import os\n"
            "from skerry.workload.client import Client\n"
            "c = Client(os.environ['SKERRY_URL'], os.environ['JUPYTERHUB_API_TOKEN'])\n"
            "print(os.environ['SKERRY_URL'].split(':')[0], type(c.datasets()).__name__)\n"
            "bundle = open(os.environ['SSL_CERT_FILE']).read()\n"
            "same = os.environ['REQUESTS_CA_BUNDLE'] == os.environ['SSL_CERT_FILE']\n"
            "print(bundle.count('BEGIN CERTIFICATE') > 100, same)")
    with RemoteKernel(f"{platform.url}/user/alice/", alice, "python3") as kernel:
        result = kernel.execute(code)
    assert result.error is None, result.error
    assert result.stdout.split() == ["https", "list", "True", "True"], result.stdout
    trust = platform.data_dir / "run" / "users" / ".trust.pem"
    assert trust.read_bytes().endswith(tls[0].read_bytes()) and oct(trust.stat().st_mode & 0o777) == "0o644"


def rclone(env, *args, timeout=300):
    done = subprocess.run(["rclone", "--config", "/dev/null", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"rclone {' '.join(args)}: {done.stderr[-2000:]}"
    return done


@pytest.fixture
def rclone_env(platform, tls, alice):
    if not shutil.which("rclone"):
        pytest.skip("rclone is not installed (apt-get install rclone)")
    obscured = subprocess.run(["rclone", "obscure", "-"], input=alice, capture_output=True,
                              text=True, check=True).stdout.strip()
    # the certificate as a desktop user trusts it: rclone's --ca-cert, as its environment variable
    return dict(os.environ, RCLONE_WEBDAV_URL=f"{platform.url}/dav/alice/home/", RCLONE_WEBDAV_VENDOR="other",
                RCLONE_WEBDAV_USER="alice", RCLONE_WEBDAV_PASS=obscured, RCLONE_CA_CERT=str(tls[0]))


def test_rclone_copies_and_mounts_over_https(platform, rclone_env, tmp_path):
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "deep/b.bin": os.urandom(3 * 1024 * 1024), "deep/c.txt": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    rclone(rclone_env, "copy", str(src), ":webdav:tls-copy")
    home = platform.data_dir / "users" / "alice" / "tls-copy"
    assert {n: (home / n).read_bytes() for n in files} == files
    rclone(rclone_env, "check", "--download", str(src), ":webdav:tls-copy")
    down = tmp_path / "down"
    rclone(rclone_env, "copy", ":webdav:tls-copy", str(down))
    assert {n: (down / n).read_bytes() for n in files} == files
    # without the certificate, rclone refuses the server
    refused = subprocess.run(["rclone", "--config", "/dev/null", "lsf", ":webdav:"],
                             env={k: v for k, v in rclone_env.items() if k != "RCLONE_CA_CERT"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr[-1000:]

    if not shutil.which("fusermount3") and not shutil.which("fusermount"):
        pytest.fail("rclone mount needs FUSE's fusermount3 (apt-get install fuse3): .ci/run installs it")
    mount = tmp_path / "mnt"
    mount.mkdir()
    log = tmp_path / "mount.log"
    proc = subprocess.Popen(["rclone", "--config", "/dev/null", "mount", ":webdav:", str(mount),
                             "--vfs-cache-mode", "writes", "--dir-cache-time", "1s", "--log-file", str(log)],
                            env=rclone_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.ismount(mount) or proc.poll() is not None, 60, what="the rclone mount")
        assert proc.poll() is None, log.read_text()[-2000:]
        assert (mount / "tls-copy" / "deep" / "b.bin").read_bytes() == files["deep/b.bin"]
        assert sorted(os.listdir(mount / "tls-copy")) == ["a.txt", "deep"]
        (mount / "tls-copy" / "from-mount.txt").write_bytes(b"written on the mount\n")
        written = home / "from-mount.txt"
        wait_for(lambda: written.exists() and written.read_bytes() == b"written on the mount\n", 60,
                 what="the file written on the mount to reach alice's home")
    finally:
        subprocess.run(["fusermount3" if shutil.which("fusermount3") else "fusermount", "-u", str(mount)],
                       capture_output=True, timeout=60)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args, says", [
    (["--ssl-cert", "{cert}"], "--ssl-cert needs --ssl-key too"),
    (["--ssl-key", "{key}"], "--ssl-key needs --ssl-cert too"),
    (["--ssl-cert", "{missing}", "--ssl-key", "{key}"], "No such file or directory"),
    (["--ssl-cert", "{key}", "--ssl-key", "{key}"], "holds no certificate in PEM form"),
    (["--ssl-cert", "{cert}", "--ssl-key", "{cert}"], "holds no private key in PEM form"),
    (["--ssl-cert", "{cert}", "--ssl-key", "{other}"], "is not the key of --ssl-cert"),
])
def test_a_bad_certificate_or_key_is_refused_before_anything_starts(tmp_path, tls, args, says):
    other = self_signed(tmp_path)[1]
    values = {"cert": tls[0], "key": tls[1], "missing": tmp_path / "nowhere.pem", "other": other}
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "skerry", "up", "--data-dir", str(data), "--port", "1"] + \
        [a.format(**values) for a in args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert not data.exists()  # refused before the data dir was made
