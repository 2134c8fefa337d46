"""Must show 2 (issue 3): litmus against /dav/<name>/ of a running platform, with the
federation mounted: alice's home (local), an SFTP adaptor (a real sshd) and an S3
adaptor (a real S3-API server), stored through the hub service's users API.

litmus runs in every adaptor's folder (the federation root itself holds only the
adaptor folders, which cannot be created or removed), and each of its suites must
report every test passed. litmus takes the password as an argument, so it gets a
hub token of its own that expires in minutes and is revoked afterwards.
"""

import os
import re
import shutil
import subprocess

import pytest

pytestmark = [
    pytest.mark.platform,
    pytest.mark.skipif(not shutil.which("litmus"), reason="litmus is not installed (apt-get install litmus)"),
]

API = "/services/skerry/api/v1"
SUITES = ("basic", "copymove", "props", "locks", "http")
# litmus 0.13's test counts per suite (a suite that stops early reports fewer)
COUNTS = {"basic": 16, "copymove": 13, "props": 30, "locks": 41, "http": 4}


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
    url = f"{platform.url}/dav/alice/{adaptor}/"
    done = subprocess.run(["litmus", url, "alice", litmus_token], env=dict(os.environ, TESTS=" ".join(SUITES)),
                          capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)  # litmus writes debug.log where it runs
    summary = re.findall(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed", done.stdout)
    assert {s[0]: (int(s[1]), int(s[2])) for s in summary} == {s: (n, n) for s, n in COUNTS.items()}, \
        done.stdout[-4000:]
