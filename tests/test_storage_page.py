"""The storage page (issue 15, must show 1, its storage part), on a running platform with a
real S3-API server: alice, logged in at the hub, adds an S3 adaptor with a new credential
on ``/hub/skerry/storage``; a refusal is shown beside the field it names, with nothing
stored and the secret not shown back; once saved, the page offers to restart her server,
which then mounts it, and a notebook kernel of hers reads a file from the bucket; she
removes it again. The page manages its user's own storage only.

Real ``skerry up``, real JupyterHub login (cookie and ``_xsrf``), moto's S3 server.
"""

import html
import re
import uuid

import httpx
import pytest

from chromium import logged_in, sign_up
from helpers import wait_for
from skerry.kernels.remote import RemoteKernel

pytestmark = pytest.mark.platform

POOLS = {"cpu": None, "gpu": None}  # no Dask: the page needs none
API = "/services/skerry/api/v1"
PASSWORD = "a-long-Passw0rd-for-storage"
PAGE = "/hub/skerry/storage"


def xsrf_of(page: httpx.Response) -> str:
    return re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)


def stored(platform, token: str) -> tuple[list[str], list[str]]:
    """alice's adaptor and credential names, from the REST API."""
    adaptors = platform.api("GET", API + "/users/alice/adaptors", token=token).json()["adaptors"]
    credentials = platform.api("GET", API + "/users/alice/credentials", token=token).json()["credentials"]
    return [a["name"] for a in adaptors], [c["name"] for c in credentials]


@pytest.mark.timeout(600)
def test_alice_adds_s3_storage_on_the_page_restarts_and_reads_it_in_a_notebook(platform, alice, s3server):
    sign_up(platform, "alice", PASSWORD)
    s3server.make_bucket("alice-results")
    import s3fs

    s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                      client_kwargs={"endpoint_url": s3server.url}).pipe("alice-results/run1/hello.txt", b"hello S3")
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    with logged_in(platform, "alice", PASSWORD) as client:
        home = client.get("/hub/home")
        assert 'id="skerry-storage-link"' in home.text  # the nav bar links the page
        page = client.get(PAGE, params={"type": "s3"})
        assert page.status_code == 200, page.text
        for field in ("f-name", "f-bucket", "f-prefix", "f-endpoint_url", "f-credential_kind", "f-cred_secret"):
            assert f'id="{field}"' in page.text, field
        form = {"_xsrf": xsrf_of(page), "action": "add", "type": "s3", "name": "results", "bucket": "ab",
                "prefix": "run1", "endpoint_url": s3server.url, "credential_kind": "s3",
                "cred_key": "testing", "cred_secret": secret}

        # a bucket name too short: refused beside its field, the secret not shown back, nothing stored
        r = client.post(PAGE, data=form)
        assert r.status_code == 400, r.text
        beside = re.search(r'id="f-bucket-error">([^<]+)<', r.text)
        assert beside and "at least 3 characters" in html.unescape(beside.group(1)), r.text[-3000:]
        assert secret not in r.text and 'value="run1"' in r.text  # what she typed is kept, the secret is not
        assert stored(platform, alice) == (["home"], [])  # the credential made for it was removed

        # a new credential never replaces a stored one (which a refusal would then remove)
        r = platform.api("PUT", API + "/users/alice/credentials/results", token=alice,
                         json={"kind": "s3", "key": "older", "secret": "older-secret"})
        assert r.status_code == 200, r.text
        r = client.post(PAGE, data=form)
        assert r.status_code == 409 and "already" in html.unescape(
            re.search(r'id="f-credential-error">([^<]+)<', r.text).group(1))
        assert stored(platform, alice) == (["home"], ["results"])
        assert platform.api("DELETE", API + "/users/alice/credentials/results", token=alice).status_code == 204
        # no name: refused beside it
        r = client.post(PAGE, data={**form, "name": ""})
        assert r.status_code == 400 and 'id="f-name-error"' in r.text

        # saved: then the page offers to restart her running server
        r = client.post(PAGE, data={**form, "bucket": "alice-results"})
        assert r.status_code == 303 and r.headers["location"].endswith(f"{PAGE}?added=results"), r.text
        assert stored(platform, alice) == (["home", "results"], ["results"])
        page = client.get(r.headers["location"])
        assert 'id="added"' in page.text and 'id="restart"' in page.text, page.text[-3000:]
        assert 'id="adaptor-results"' in page.text and 'id="credential-results"' in page.text
        assert secret not in page.text
        r = client.post(PAGE, data={"_xsrf": xsrf_of(page), "action": "restart"})
        assert r.status_code == 303 and r.headers["location"].endswith("/hub/spawn/alice"), r.text
        client.get(r.headers["location"])  # the spawn page starts her server, as the browser would
    wait_for(lambda: (platform.server("alice") or {}).get("ready"), 120, what="alice's server to start again")

    # her notebook kernel reads the bucket's file through the new adaptor
    with RemoteKernel(f"{platform.url}/user/alice/", alice, "skerry") as kernel:
        result = kernel.execute("print(skerry.fs.cat('results/hello.txt').decode())", timeout=120)
        assert result.error is None, "\n".join(result.error["traceback"])
    assert result.stdout.strip() == "hello S3"

    # removed: the adaptor, then its credential (the REST API agrees)
    with logged_in(platform, "alice", PASSWORD) as client:
        page = client.get(PAGE)
        for action in ("remove-adaptor", "remove-credential"):
            r = client.post(PAGE, data={"_xsrf": xsrf_of(page), "action": action, "name": "results"})
            assert r.status_code == 303, r.text
    assert stored(platform, alice) == (["home"], [])
    # the tokens the page made for its API calls were revoked when each request ended
    tokens = platform.api("GET", "/hub/api/users/alice/tokens").json()["api_tokens"]
    assert not [t for t in tokens if t["note"].startswith("skerry storage page")], tokens


def test_the_page_is_its_users_own_and_needs_a_login(platform, alice, s3server):
    platform.create_user("bob")
    sign_up(platform, "bob", PASSWORD)
    r = platform.api("PUT", API + "/users/alice/adaptors/scratch", json={"type": "memory"}, token=alice)
    assert r.status_code in (200, 201), r.text
    with logged_in(platform, "bob", PASSWORD) as client:
        page = client.get(PAGE)
        assert page.status_code == 200 and 'id="adaptor-scratch"' not in page.text  # alice's is not bob's
        r = client.post(PAGE, data={"_xsrf": xsrf_of(page), "action": "remove-adaptor", "name": "scratch"})
        assert r.status_code == 404  # bob's own adaptors have none of that name
    assert "scratch" in stored(platform, alice)[0]
    # an action or a type the page does not know: a 400 naming it, nothing stored
    with logged_in(platform, "bob", PASSWORD) as client:
        xsrf = xsrf_of(client.get(PAGE))
        r = client.post(PAGE, data={"_xsrf": xsrf, "action": "format-disk"})
        assert r.status_code == 400 and "format-disk" in html.unescape(r.text)
        r = client.post(PAGE, data={"_xsrf": xsrf, "action": "add", "type": "tape", "name": "t"})
        assert r.status_code == 400 and "tape" in html.unescape(r.text)
    bob = platform.user_token("bob")
    assert [a["name"] for a in platform.api("GET", API + "/users/bob/adaptors", token=bob).json()["adaptors"]] \
        == ["home"]
    # nobody logged in, or only a token (hub pages take the login cookie): the login page
    for headers in ({}, {"Authorization": f"token {alice}"}):
        r = httpx.get(platform.url + PAGE, headers=headers)
        assert r.status_code == 302 and "/hub/login" in r.headers["location"]
