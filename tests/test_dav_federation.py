"""WebDAV over the whole federation of a running platform: alice's home (local), an SFTP
adaptor (a real sshd) and an S3 adaptor (a real S3-API server), stored through the hub
service's users API, reached through the hub URL.

Must show 2 (issue 3): litmus passes in every adaptor. Must show 4: a PUT whose client
is killed half-way leaves no file and no temporary file (no open multipart upload on
S3); concurrent PUTs with one If-Match: exactly one wins, the others get 412.

litmus runs in every adaptor's folder (the federation root itself holds only the
adaptor folders, which cannot be created or removed), and each of its suites must
report every test passed. litmus takes the password as an argument, so it gets a
hub token of its own that expires in minutes and is revoked afterwards.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import wait_for
from litmus import all_passed, run_litmus

pytestmark = [
    pytest.mark.platform,
    pytest.mark.skipif(not shutil.which("litmus"), reason="litmus is not installed (apt-get install litmus)"),
]

API = "/services/skerry/api/v1"


@pytest.fixture(scope="module")
def federation(platform, alice, sshd, s3server, tmp_path_factory):
    """alice's SFTP and S3 adaptors, and her server restarted to mount them."""
    s3server.make_bucket("litmus-alice")
    sftp_root = tmp_path_factory.mktemp("litmus-sftp")
    calls = [
        ("credentials/bucket", {"kind": "s3", **s3server.credentials()}),
        ("credentials/hpc-key", {"kind": "ssh-key", "private_key": sshd.key}),
        ("adaptors/s3", {"type": "s3", "bucket": "litmus-alice", "endpoint_url": s3server.url,
                         "credentials": "bucket"}),
        ("adaptors/sftp", {"type": "sftp", "host": "127.0.0.1", "port": sshd.port,
                           "username": sshd.username, "path": str(sftp_root), "credentials": "hpc-key"}),
    ]
    for path, body in calls:
        r = platform.api("PUT", f"{API}/users/alice/{path}", token=alice, json=body)
        assert r.status_code == 200, r.text
    platform.stop_server("alice")
    platform.start_server("alice")
    return sftp_root


@pytest.fixture(scope="module")
def litmus_token(platform, alice):
    r = platform.api("POST", "/hub/api/users/alice/tokens", json={"note": "litmus", "expires_in": 900})
    assert r.status_code == 201, r.text
    token = r.json()
    yield token["token"]
    platform.api("DELETE", f"/hub/api/users/alice/tokens/{token['id']}")


@pytest.mark.parametrize("adaptor", ["home", "sftp", "s3"])
def test_litmus_passes_in_every_adaptor_of_a_running_platform(platform, federation, litmus_token, adaptor, tmp_path):
    summary, output = run_litmus(f"{platform.url}/dav/alice/{adaptor}/", tmp_path, "alice", litmus_token)
    assert summary == all_passed(), output[-4000:]


# a desktop client that dies half-way through an upload: headers for 128 MiB, 80 MiB sent
# (past s3fs's 50 MiB block: on S3 a multipart upload is open when it dies)
KILLED_CLIENT = textwrap.dedent("""
    import base64, socket, sys, time
    port, path, user, token = sys.argv[1], sys.argv[2], sys.argv[3], sys.stdin.read()
    s = socket.create_connection(("127.0.0.1", int(port)))
    auth = base64.b64encode(f"{user}:{token}".encode()).decode()
    s.sendall(f"PUT {path} HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Basic {auth}\\r\\n"
              f"Content-Length: {128 << 20}\\r\\n\\r\\n".encode())
    for _ in range(80):
        s.sendall(b"x" * (1 << 20))
    print("half-way", flush=True)
    time.sleep(600)
""")


def _s3(s3server):
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                             client_kwargs={"endpoint_url": s3server.url})


def _leftovers(platform, federation, s3server, adaptor):
    """What the interrupted upload left in the adaptor's storage (names, open uploads)."""
    if adaptor == "home":
        return os.listdir(platform.data_dir / "users" / "alice" / "interrupted")
    if adaptor == "sftp":
        return os.listdir(federation / "interrupted")
    s3 = _s3(s3server)
    objects = [k for k in s3.find("litmus-alice/interrupted/") if not k.endswith("/")]
    uploads = s3.call_s3("list_multipart_uploads", Bucket="litmus-alice").get("Uploads", [])
    return objects + [u["Key"] for u in uploads]


@pytest.mark.parametrize("adaptor", ["home", "sftp", "s3"])
def test_a_put_whose_client_is_killed_leaves_nothing(platform, federation, s3server, alice, adaptor):
    with httpx.Client(base_url=f"{platform.url}/dav/alice/{adaptor}/", auth=("alice", alice), timeout=60) as dav:
        assert dav.request("MKCOL", "interrupted/").status_code == 201
        client = subprocess.Popen(
            [sys.executable, "-c", KILLED_CLIENT, str(platform.port), f"/dav/alice/{adaptor}/interrupted/big.bin",
             "alice"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        client.stdin.write(alice)  # the token by stdin, never in argv
        client.stdin.close()
        assert client.stdout.readline().strip() == "half-way"
        client.send_signal(signal.SIGKILL)
        client.wait()
        # once the server has noticed, nothing is left: no file, no temporary file, no open upload
        wait_for(lambda: _leftovers(platform, federation, s3server, adaptor) == [], 30,
                 what=f"the interrupted upload on {adaptor} to be cleaned up")
        listing = dav.request("PROPFIND", "interrupted/", headers={"Depth": "1"})
        assert listing.status_code == 207 and "big.bin" not in listing.text
        assert dav.get("interrupted/big.bin").status_code == 404


@pytest.mark.parametrize("adaptor", ["home", "sftp", "s3"])
def test_concurrent_if_match_puts_exactly_one_wins(platform, federation, alice, adaptor):
    with httpx.Client(base_url=f"{platform.url}/dav/alice/{adaptor}/", auth=("alice", alice), timeout=120) as dav:
        etag = dav.put("contended.txt", content=b"v0").headers["ETag"]
        bodies = [os.urandom(1 << 20) for _ in range(5)]

        def put(body):
            return dav.put("contended.txt", content=body, headers={"If-Match": etag}).status_code

        with ThreadPoolExecutor(len(bodies)) as pool:
            codes = list(pool.map(put, bodies))
        assert sorted(codes) == [204] + [412] * (len(bodies) - 1), codes
        assert dav.get("contended.txt").content == bodies[codes.index(204)]
