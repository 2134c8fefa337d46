"""The federation in JupyterLab's file browser: the contents API of a real ``jupyter server``.

The server runs as in a micro-infrastructure: our Jupyter config folder first on
``$JUPYTER_CONFIG_PATH`` (it selects ``SkerryContentsManager``), the adaptors in a 0600
file named by ``$SKERRY_ADAPTORS``, the token in ``$JUPYTER_TOKEN``, the home folder as
its working folder. Adaptors: home (local), mem (memory), s3 (moto S3 server), hpc
(SFTP to a real OpenSSH sshd), ro (local, read-only), down (SFTP to a closed port).
Nothing is mocked.
"""

import base64
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import httpx
import nbformat
import pytest

from helpers import free_port
from jupyterserver import JupyterServer
from skerry.adaptors.config import write_config

WRITABLE = ["home", "mem", "s3", "hpc"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3server, sshd):
    base = tmp_path_factory.mktemp("contents")
    for folder in ("home", "ro", "outside", "hpc"):
        (base / folder).mkdir()
    (base / "ro" / "readme.txt").write_text("read me\n")
    (base / "outside" / "secret.txt").write_text("not yours\n")
    (base / "home" / "escape").symlink_to(base / "outside")
    bucket = "contents-" + uuid.uuid4().hex[:8]
    s3server.make_bucket(bucket)
    adaptors = [
        {"name": "home", "type": "local", "path": str(base / "home")},
        {"name": "mem", "type": "memory", "path": f"/contents-{uuid.uuid4().hex[:8]}"},
        {"name": "s3", "type": "s3", "bucket": bucket, "endpoint_url": s3server.url, "credentials": "s3"},
        {"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
         "path": str(base / "hpc"), "credentials": "hpc"},
        {"name": "ro", "type": "local", "path": str(base / "ro"), "read_only": True},
        # an SFTP host that is down: nothing listens on its port
        {"name": "down", "type": "sftp", "host": "127.0.0.1", "port": free_port(), "username": "nobody",
         "credentials": "hpc"},
    ]
    credentials = {"s3": s3server.credentials(), "hpc": {"private_key": sshd.key}}
    s = JupyterServer(base, adaptors, credentials, root=base / "home").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=f"{server.base_url}/api/", headers=server.headers, timeout=60) as c:
        yield c


def names(listing: dict) -> set[str]:
    return {entry["name"] for entry in listing["content"]}


def test_config_is_private_and_token_not_in_argv(server):
    assert oct(server.config.stat().st_mode & 0o777) == "0o600"
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    assert server.token.encode() not in cmdline and b"testing" not in cmdline and b"PRIVATE KEY" not in cmdline


def test_lab_file_browser_shows_the_adaptors(server):
    """JupyterLab itself, in headless Chromium: the file browser lists one folder per adaptor."""
    import shutil

    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("no chromium here (apt-get install -y chromium)")
    lab = JupyterServer(server.base, server.config, root=server.root, auth=False, name="lab").start()
    try:
        def browse(*args):
            argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={server.base / 'chromium'}", "--window-size=1280,800",
                    "--virtual-time-budget=20000", *args, f"{lab.base_url}/lab"]
            return subprocess.run(argv, capture_output=True, timeout=120, check=True).stdout.decode()

        shot = server.base / "lab-file-browser.png"  # kept for people to look at
        dom = browse("--dump-dom", f"--screenshot={shot}")
        listed = set(re.findall(r'jp-DirListing-itemText[^>]*><span>([^<]+)<', dom))
        assert listed == {"home", "mem", "s3", "hpc", "ro", "down"}, listed
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        lab.stop()


def test_root_lists_one_folder_per_adaptor(api):
    r = api.get("contents")
    assert r.status_code == 200, r.text
    root = r.json()
    assert root["type"] == "directory" and root["writable"] is False
    assert names(root) == {"home", "mem", "s3", "hpc", "ro", "down"}
    by_name = {e["name"]: e for e in root["content"]}
    assert all(e["type"] == "directory" for e in by_name.values())
    assert by_name["ro"]["writable"] is False and by_name["home"]["writable"] is True
    # nothing but adaptors at the root
    for r in (api.put("contents/new.txt", json={"type": "file", "format": "text", "content": "x"}),
              api.post("contents", json={"type": "directory"}),
              api.put("contents/newadaptor", json={"type": "directory"})):
        assert r.status_code == 403 and "only the adaptor folders" in r.json()["message"], r.text
    assert names(api.get("contents").json()) == {"home", "mem", "s3", "hpc", "ro", "down"}


@pytest.mark.parametrize("adaptor", WRITABLE)
def test_files_create_save_get_rename_delete(api, server, adaptor):
    folder = f"{adaptor}/files"
    r = api.put(f"contents/{folder}", json={"type": "directory"})
    assert r.status_code == 201, r.text
    assert api.get(f"contents/{folder}").json()["type"] == "directory"

    r = api.put(f"contents/{folder}/a.txt", json={"type": "file", "format": "text", "content": "first\n"})
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["path"] == f"{folder}/a.txt" and model["content"] is None and model["size"] == 6
    # saving again replaces the content
    r = api.put(f"contents/{folder}/a.txt", json={"type": "file", "format": "text", "content": "second\n"})
    assert r.status_code == 200, r.text
    got = api.get(f"contents/{folder}/a.txt").json()
    assert (got["content"], got["format"], got["type"], got["size"]) == ("second\n", "text", "file", 7)
    assert got["last_modified"] and got["created"] and got["writable"] is True
    got = api.get(f"contents/{folder}/a.txt", params={"hash": "1", "content": "0"}).json()
    assert got["hash_algorithm"] == "sha256" and got["content"] is None
    import hashlib

    assert got["hash"] == hashlib.sha256(b"second\n").hexdigest()

    binary = bytes(range(256)) * 4
    r = api.put(f"contents/{folder}/b.bin", json={"type": "file", "format": "base64",
                                                  "content": base64.b64encode(binary).decode()})
    assert r.status_code == 201, r.text
    got = api.get(f"contents/{folder}/b.bin").json()
    assert got["format"] == "base64" and base64.b64decode(got["content"]) == binary

    listing = api.get(f"contents/{folder}").json()
    assert names(listing) == {"a.txt", "b.bin"}  # no temporary names, no checkpoints
    sizes = {e["name"]: e["size"] for e in listing["content"]}
    assert sizes == {"a.txt": 7, "b.bin": 1024}

    r = api.patch(f"contents/{folder}/a.txt", json={"path": f"{folder}/c.txt"})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == f"{folder}/c.txt"
    assert api.get(f"contents/{folder}/a.txt").status_code == 404
    assert api.get(f"contents/{folder}/c.txt").json()["content"] == "second\n"
    # renaming over an existing file is refused, and changes nothing
    r = api.patch(f"contents/{folder}/c.txt", json={"path": f"{folder}/b.bin"})
    assert r.status_code == 409, r.text
    assert api.get(f"contents/{folder}/c.txt").status_code == 200

    # the file browser downloads through /files/, served by the same manager
    r = httpx.get(f"{server.base_url}/files/{folder}/b.bin", params={"download": "1"}, headers=server.headers)
    assert r.status_code == 200 and r.content == binary
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == "attachment; filename*=utf-8''b.bin"
    r = httpx.get(f"{server.base_url}/files/{folder}/a-missing.txt", headers=server.headers)
    assert r.status_code == 404

    # folders are renamed with what is in them; files move between adaptors
    r = api.patch(f"contents/{folder}", json={"path": f"{adaptor}/moved"})
    assert r.status_code == 200, r.text
    assert names(api.get(f"contents/{adaptor}/moved").json()) == {"b.bin", "c.txt"}
    assert api.get(f"contents/{folder}").status_code == 404
    assert api.patch(f"contents/{adaptor}/moved", json={"path": folder}).status_code == 200
    other = "mem" if adaptor != "mem" else "home"
    r = api.patch(f"contents/{folder}/c.txt", json={"path": f"{other}/c-{adaptor}.txt"})
    assert r.status_code == 200, r.text
    assert api.get(f"contents/{other}/c-{adaptor}.txt").json()["content"] == "second\n"
    assert api.get(f"contents/{folder}/c.txt").status_code == 404
    assert api.patch(f"contents/{other}/c-{adaptor}.txt", json={"path": f"{folder}/c.txt"}).status_code == 200

    # a non-empty folder is not deleted for good
    assert api.delete(f"contents/{folder}").status_code == 400
    for name in ("c.txt", "b.bin"):
        assert api.delete(f"contents/{folder}/{name}").status_code == 204
        assert api.get(f"contents/{folder}/{name}").status_code == 404
    assert api.delete(f"contents/{folder}").status_code == 204
    assert api.get(f"contents/{folder}").status_code == 404


@pytest.mark.parametrize("adaptor", WRITABLE)
def test_an_empty_folder_is_listed_and_deleted(api, server, adaptor):
    """A new folder exists, empty, on every adaptor (no marker file in it); delete removes it."""
    assert api.put(f"contents/{adaptor}/empty", json={"type": "directory"}).status_code == 201
    assert "empty" in names(api.get(f"contents/{adaptor}").json())
    assert api.get(f"contents/{adaptor}/empty").json()["content"] == []
    on_disk = {"home": server.root / "empty", "hpc": server.base / "hpc" / "empty"}.get(adaptor)
    if on_disk:
        assert os.listdir(on_disk) == []
    assert api.delete(f"contents/{adaptor}/empty").status_code == 204
    assert api.get(f"contents/{adaptor}/empty").status_code == 404
    assert "empty" not in names(api.get(f"contents/{adaptor}").json())
    if on_disk:
        assert not on_disk.exists()


@pytest.mark.parametrize("adaptor", WRITABLE)
def test_new_untitled_and_copy(api, adaptor):
    folder = f"{adaptor}/untitled"
    assert api.put(f"contents/{folder}", json={"type": "directory"}).status_code == 201
    made = [api.post(f"contents/{folder}", json={"type": t, **({"ext": ".ipynb"} if t == "notebook" else {})})
            for t in ("file", "file", "notebook", "directory")]
    assert [r.status_code for r in made] == [201] * 4, [r.text for r in made]
    assert [r.json()["name"] for r in made] == ["untitled", "untitled1", "Untitled.ipynb", "Untitled Folder"]
    assert api.get(f"contents/{folder}/Untitled.ipynb").json()["content"]["nbformat"] == 4
    assert api.get(f"contents/{folder}/Untitled Folder").json()["type"] == "directory"
    # a copy streams through the federation; the file is named as jupyter_server names it
    api.put(f"contents/{folder}/data.csv", json={"type": "file", "format": "text", "content": "a,b\n1,2\n"})
    r = api.post(f"contents/{folder}", json={"copy_from": f"{folder}/data.csv"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "data-Copy1.csv"
    assert api.get(f"contents/{folder}/data-Copy1.csv").json()["content"] == "a,b\n1,2\n"
    # and across adaptors
    other = "home" if adaptor != "home" else "mem"
    r = api.post(f"contents/{other}", json={"copy_from": f"{folder}/data.csv"})
    assert r.status_code == 201, r.text
    assert api.get(f"contents/{r.json()['path']}").json()["content"] == "a,b\n1,2\n"
    assert api.delete(f"contents/{r.json()['path']}").status_code == 204


def make_notebook(source: str) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return json.loads(nbformat.writes(nb))


@pytest.mark.parametrize("adaptor", WRITABLE)
def test_notebooks_and_checkpoints(api, adaptor):
    path = f"{adaptor}/nb/analysis.ipynb"
    assert api.put(f"contents/{adaptor}/nb", json={"type": "directory"}).status_code == 201
    r = api.put(f"contents/{path}", json={"type": "notebook", "content": make_notebook("x = 1")})
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "notebook"
    got = api.get(f"contents/{path}").json()
    assert got["type"] == "notebook" and got["format"] == "json"
    assert got["content"]["cells"][0]["source"] == "x = 1"
    listing = api.get(f"contents/{adaptor}/nb").json()
    assert [(e["name"], e["type"]) for e in listing["content"]] == [("analysis.ipynb", "notebook")]

    # the first save made one checkpoint, as jupyter_server's managers do
    r = api.get(f"contents/{path}/checkpoints")
    assert r.status_code == 200 and [c["id"] for c in r.json()] == ["checkpoint"], r.text
    api.put(f"contents/{path}", json={"type": "notebook", "content": make_notebook("x = 2")})
    r = api.post(f"contents/{path}/checkpoints")
    assert r.status_code == 201 and r.json()["id"] == "checkpoint", r.text
    api.put(f"contents/{path}", json={"type": "notebook", "content": make_notebook("x = 3")})
    assert api.get(f"contents/{path}").json()["content"]["cells"][0]["source"] == "x = 3"
    r = api.post(f"contents/{path}/checkpoints/checkpoint")
    assert r.status_code == 204, r.text
    assert api.get(f"contents/{path}").json()["content"]["cells"][0]["source"] == "x = 2"
    # checkpoints live in the adaptor, hidden from listings
    assert api.get(f"contents/{adaptor}/nb/.ipynb_checkpoints").status_code == 404
    assert names(api.get(f"contents/{adaptor}/nb").json()) == {"analysis.ipynb"}

    # a file checkpoint too
    api.put(f"contents/{adaptor}/nb/notes.md", json={"type": "file", "format": "text", "content": "v1"})
    assert api.post(f"contents/{adaptor}/nb/notes.md/checkpoints").status_code == 201
    api.put(f"contents/{adaptor}/nb/notes.md", json={"type": "file", "format": "text", "content": "v2"})
    assert api.post(f"contents/{adaptor}/nb/notes.md/checkpoints/checkpoint").status_code == 204
    assert api.get(f"contents/{adaptor}/nb/notes.md").json()["content"] == "v1"

    # renaming carries the checkpoint along; deleting removes it
    r = api.patch(f"contents/{path}", json={"path": f"{adaptor}/nb/renamed.ipynb"})
    assert r.status_code == 200, r.text
    assert [c["id"] for c in api.get(f"contents/{adaptor}/nb/renamed.ipynb/checkpoints").json()] == ["checkpoint"]
    assert api.get(f"contents/{path}/checkpoints").json() == []
    for name in ("renamed.ipynb", "notes.md"):
        assert api.delete(f"contents/{adaptor}/nb/{name}").status_code == 204
        assert api.get(f"contents/{adaptor}/nb/{name}/checkpoints").json() == []
    assert api.delete(f"contents/{adaptor}/nb").status_code == 204


def test_job_logs_open_though_their_folder_has_a_dot_name(api, server):
    """The monitor links ``.skerry-logs/<job>.ipynb`` (a notebook step's output notebooks):
    that one dot folder opens; any other dot name stays hidden."""
    logs = server.base / "home" / "out" / ".skerry-logs"
    logs.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), logs / "7.ipynb")
    (server.base / "home" / "out" / ".private").mkdir()
    (server.base / "home" / "out" / ".private" / "x.txt").write_text("x")
    got = api.get("contents/home/out/.skerry-logs/7.ipynb")
    assert got.status_code == 200 and got.json()["content"]["cells"][0]["source"] == "1 / 0", got.text
    assert api.get("contents/home/out/.private/x.txt").status_code == 404


@pytest.mark.parametrize("adaptor", ["home", "s3", "hpc"])
def test_chunked_upload_appears_only_when_complete(api, adaptor):
    path = f"{adaptor}/upload.bin"
    parts = [os.urandom(300_000), os.urandom(300_000), os.urandom(1000)]
    for i, part in enumerate(parts):
        chunk = -1 if i == len(parts) - 1 else i + 1
        r = api.put(f"contents/{path}", json={"type": "file", "format": "base64", "chunk": chunk,
                                              "content": base64.b64encode(part).decode()})
        assert r.status_code in (200, 201), r.text
        if chunk != -1:
            assert api.get(f"contents/{path}").status_code == 404
            assert "upload.bin" not in names(api.get(f"contents/{adaptor}").json())
    got = api.get(f"contents/{path}").json()
    assert base64.b64decode(got["content"]) == b"".join(parts)
    assert not any(n.startswith(".") for n in names(api.get(f"contents/{adaptor}").json()))
    assert api.delete(f"contents/{path}").status_code == 204
    # a chunk without its first is refused, and writes nothing
    r = api.put(f"contents/{path}", json={"type": "file", "format": "text", "chunk": 2, "content": "x"})
    assert r.status_code == 400 and "chunk 1" in r.json()["message"], r.text
    assert api.get(f"contents/{path}").status_code == 404


def test_read_only_adaptor_refuses_writes(api, server):
    got = api.get("contents/ro/readme.txt").json()
    assert got["content"] == "read me\n" and got["writable"] is False
    r = httpx.get(f"{server.base_url}/files/ro/readme.txt", headers=server.headers)
    assert r.status_code == 200 and r.text == "read me\n"
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"
    refusals = [
        api.put("contents/ro/new.txt", json={"type": "file", "format": "text", "content": "x"}),
        api.put("contents/ro/readme.txt", json={"type": "file", "format": "text", "content": "x"}),
        api.post("contents/ro", json={"type": "file"}),
        api.put("contents/ro/dir", json={"type": "directory"}),
        api.patch("contents/ro/readme.txt", json={"path": "ro/moved.txt"}),
        api.patch("contents/ro/readme.txt", json={"path": "home/moved.txt"}),
        api.delete("contents/ro/readme.txt"),
        api.post("contents/ro/readme.txt/checkpoints"),
        api.post("contents/ro", json={"copy_from": "ro/readme.txt"}),
    ]
    for r in refusals:
        assert r.status_code == 403, (r.request.method, r.request.url, r.text)
        assert "read-only" in r.json()["message"]
    assert api.get("contents/ro/readme.txt/checkpoints").json() == []
    assert sorted(os.listdir(server.base / "ro")) == ["readme.txt"]
    assert (server.base / "ro" / "readme.txt").read_text() == "read me\n"
    # the root and the adaptor folders themselves cannot be changed either
    assert api.delete("contents/home").status_code == 403
    assert api.patch("contents/mem", json={"path": "other"}).status_code == 403


def test_an_unreachable_adaptor_is_a_503_and_the_others_work(api):
    for r in (api.get("contents/down"), api.get("contents/down/a.txt"),
              api.put("contents/down/a.txt", json={"type": "file", "format": "text", "content": "x"}),
              api.post("contents/down", json={"type": "file"})):
        assert r.status_code == 503, (r.request.method, r.request.url, r.text)
        assert "cannot be reached" in r.json()["message"] and "down" in r.json()["message"]
    assert "down" in names(api.get("contents").json())
    assert api.get("contents/home").status_code == 200


def test_traversal_is_refused(api, server):
    outside = server.base / "outside" / "secret.txt"
    # dot segments: encoded so that no client or proxy resolves them first
    for path in ("home/%2e%2e/outside/secret.txt", "home/%2E%2E/%2E%2E/etc/passwd", "home/sub/%2e%2e/x.txt"):
        r = api.get(f"contents/{path}")
        assert r.status_code in (400, 404), (path, r.text)
        assert "not yours" not in r.text
        r = api.put(f"contents/{path}", json={"type": "file", "format": "text", "content": "x"})
        assert r.status_code in (400, 403, 404), (path, r.text)
    assert api.patch("contents/home/x.txt", json={"path": "home/../../outside/y.txt"}).status_code in (400, 404)
    # a symlink leading out of the adaptor's folder
    r = httpx.get(f"{server.base_url}/files/home/escape/secret.txt", headers=server.headers)
    assert r.status_code == 403 and "not yours" not in r.text
    r = api.get("contents/home/escape/secret.txt")
    assert r.status_code in (403, 404) and "not yours" not in r.text, r.text
    r = api.put("contents/home/escape/evil.txt", json={"type": "file", "format": "text", "content": "x"})
    assert r.status_code == 403, r.text
    assert sorted(os.listdir(server.base / "outside")) == ["secret.txt"]
    assert outside.read_text() == "not yours\n"
    # an unknown adaptor is a 404, an absolute path is a path inside the federation
    assert api.get("contents/etc/passwd").status_code == 404
    assert api.get("contents//etc/passwd").status_code == 404


def run_in_kernel(server, kernel_id: str, code: str) -> str:
    """Run code through the kernel's websocket, as JupyterLab does; its stdout."""
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {server.token}"], timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        out = []
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise AssertionError(msg["content"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()


@pytest.mark.parametrize("folder, cwd", [("home/sub", "home/sub"), ("s3/sub", "home")])
def test_kernel_starts_in_the_notebook_folder(api, server, folder, cwd):
    assert api.put(f"contents/{folder}", json={"type": "directory"}).status_code in (200, 201)
    path = f"{folder}/kernel.ipynb"
    assert api.put(f"contents/{path}", json={"type": "notebook", "content": make_notebook("")}).status_code == 201
    r = api.post("sessions", json={"path": path, "name": "kernel.ipynb", "type": "notebook",
                                   "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    session = r.json()
    try:
        printed = run_in_kernel(server, session["kernel"]["id"], "import os; print(os.getcwd())")
        expected = server.base / "home" / cwd.removeprefix("home").strip("/")
        assert printed.strip() == os.path.realpath(expected)
        # the notebook sees the tree the file browser shows: a file saved there reads as skerry://
        api.put(f"contents/{folder}/seen.txt", json={"type": "file", "format": "text", "content": "same tree"})
        code = f"import fsspec\nwith fsspec.open('skerry://{folder}/seen.txt', 'rt') as f: print(f.read())"
        assert run_in_kernel(server, session["kernel"]["id"], code).strip() == "same tree"
    finally:
        assert api.delete(f"sessions/{session['id']}").status_code == 204


@pytest.mark.platform
def test_platform_user_server_shows_the_federation(platform, alice):
    headers = {"Authorization": f"token {alice}"}
    r = httpx.get(f"{platform.url}/user/alice/api/contents/", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert "home" in names(r.json())
    r = httpx.put(f"{platform.url}/dav/alice/home/contents-x.txt", content=b"through webdav\n",
                  auth=("alice", alice), timeout=60)
    assert r.status_code in (201, 204), r.text
    r = httpx.get(f"{platform.url}/user/alice/api/contents/home/contents-x.txt", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "through webdav\n"
    # and the other way round: saved in the file browser, read over WebDAV
    r = httpx.put(f"{platform.url}/user/alice/api/contents/home/contents-y.txt", headers=headers, timeout=60,
                  json={"type": "file", "format": "text", "content": "through jupyter\n"})
    assert r.status_code == 201, r.text
    r = httpx.get(f"{platform.url}/dav/alice/home/contents-y.txt", auth=("alice", alice), timeout=60)
    assert r.status_code == 200 and r.text == "through jupyter\n"


def test_bad_input_is_refused_and_writes_nothing(api, server):
    api.put("contents/home/keep.txt", json={"type": "file", "format": "text", "content": "kept\n"})
    bad = [
        {"type": "file", "format": "base64", "content": "not base64 !!"},
        {"type": "file", "format": "hex", "content": "00"},
        {"type": "file", "format": "text"},
        {"type": "notebook", "content": "not a notebook"},
        {"type": "notebook", "content": {"cells": "nope"}},
        {"type": "directory"},  # a folder may not replace a file
        {"type": "file", "format": "text", "content": "x", "chunk": "two"},
    ]
    for model in bad:
        r = api.put("contents/home/keep.txt", json=model)
        assert r.status_code == 400, (model, r.text)
        assert r.json()["message"], r.text
    assert (server.root / "keep.txt").read_text() == "kept\n"
    assert api.get("contents/home/keep.txt", params={"type": "directory"}).status_code == 400
    assert api.get("contents/home", params={"type": "file"}).status_code == 400
    api.put("contents/home/bytes.bin", json={"type": "file", "format": "base64", "content": "//79"})
    r = api.get("contents/home/bytes.bin", params={"format": "text"})
    assert r.status_code == 400 and "not UTF-8" in r.json()["message"]
    assert api.delete("contents/home/bytes.bin").status_code == 204
    # no temporary name was left behind, nothing hidden but the checkpoints folder
    assert not [n for n in os.listdir(server.root) if n.startswith(".") and n != ".ipynb_checkpoints"]
    # a save replaces the file whole, and keeps its permissions
    (server.root / "keep.txt").chmod(0o750)
    body = {"type": "file", "format": "text", "content": "new\n"}
    assert api.put("contents/home/keep.txt", json=body).status_code == 200
    assert (server.root / "keep.txt").read_text() == "new\n"
    assert oct((server.root / "keep.txt").stat().st_mode & 0o777) == "0o750"
    assert api.delete("contents/home/keep.txt").status_code == 204


def test_no_secret_in_the_server_log(server, sshd):
    """Runs after the tests above: nothing they did put a token or a credential in the log."""
    log = server.log.read_text()
    key_line = sshd.key.splitlines()[1]
    assert "Serving the skerry:// federation" in log
    for secret in (server.token, key_line, "testing"):
        assert secret not in log


# ---- the manager itself, in this process (real local and memory adaptors) ----------


@pytest.fixture
def manager(tmp_path, monkeypatch):
    from skerry.extensions.contents import SkerryContentsManager

    for folder in ("home/sub", "outside", "server"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "outside" / "secret.txt").write_text("not yours\n")
    config = tmp_path / "adaptors.json"
    write_config(str(config), [{"name": "home", "type": "local", "path": str(tmp_path / "home")},
                               {"name": "mem", "type": "memory", "path": f"/m-{uuid.uuid4().hex[:8]}"}])
    monkeypatch.setenv("SKERRY_ADAPTORS", str(config))
    # the server's folder beside the home folder: kernel paths must still reach home
    return SkerryContentsManager(allow_hidden=True, root_dir=str(tmp_path / "server"))


def call(coro):
    import asyncio

    return asyncio.run(coro)


def test_dot_segments_refused_by_the_manager_itself(manager, tmp_path):
    """jupyter_server already hides names starting with '.'; with allow_hidden the manager refuses."""
    from tornado.web import HTTPError

    for path in ("home/../outside/secret.txt", "home/sub/../../outside/secret.txt", "home//sub", "home/./sub"):
        with pytest.raises(HTTPError) as e:
            call(manager.get(path))
        assert e.value.status_code == 400 and "not allowed" in e.value.log_message
        with pytest.raises(HTTPError) as e:
            call(manager.save({"type": "file", "format": "text", "content": "x"}, path))
        assert e.value.status_code == 400
    with pytest.raises(HTTPError) as e:
        call(manager.rename("home/sub", "home/../outside/sub"))
    assert e.value.status_code == 400
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret.txt"]
    assert (tmp_path / "home" / "sub").is_dir()


def test_kernel_path_is_the_notebook_folder_on_local_adaptors(manager, tmp_path):
    from jupyter_server.utils import to_os_path

    def kernel_cwd(path):
        # what jupyter_server's kernel manager does with get_kernel_path (cwd_for_path)
        return to_os_path(call(manager.get_kernel_path(path)), manager.root_dir)

    home = os.path.realpath(tmp_path / "home")
    assert kernel_cwd("home/sub/nb.ipynb") == os.path.join(home, "sub")
    assert kernel_cwd("home/nb.ipynb") == home
    assert kernel_cwd("home/sub") == os.path.join(home, "sub")
    assert kernel_cwd("mem/x/nb.ipynb") == home  # remote adaptors: the home folder
    assert kernel_cwd("nb.ipynb") == home
    assert kernel_cwd("home/../nb.ipynb") == home  # a bad path still gets a kernel, at home


def test_no_adaptor_configuration_is_a_clear_error(tmp_path, monkeypatch):
    from skerry.errors import ConfigError
    from skerry.extensions.contents import SkerryContentsManager

    monkeypatch.delenv("SKERRY_ADAPTORS", raising=False)
    with pytest.raises(RuntimeError, match="SKERRY_ADAPTORS is not set"):
        SkerryContentsManager()
    config = tmp_path / "adaptors.json"
    write_config(str(config), [{"name": "home", "type": "local", "path": str(tmp_path)}])
    config.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        SkerryContentsManager(adaptors_file=str(config))


def test_a_server_whose_sftp_backend_is_missing_serves_its_other_adaptors(tmp_path, sshd):
    """Issue 15, must show 2 (its second half): sshfs fails to import in this server (a module
    of that name first on its path raises ImportError, as a missing package does); the server
    starts, its ``home`` works, and its SFTP folder alone answers with the package to install."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sshfs.py").write_text("raise ImportError(\"No module named 'sshfs'\")\n")
    base = tmp_path / "server"
    (base / "home").mkdir(parents=True)
    (base / "home" / "a.txt").write_text("still here")
    adaptors = [{"name": "home", "type": "local", "path": str(base / "home")},
                {"name": "hpc", "type": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
                 "credentials": "hpc"}]
    s = JupyterServer(base, adaptors, {"hpc": {"private_key": sshd.key}}, root=base / "home")
    s.env["PYTHONPATH"] = str(shadow)
    s.start()
    try:
        with httpx.Client(base_url=f"{s.base_url}/api/", headers=s.headers, timeout=60) as api:
            assert names(api.get("contents/").json()) == {"home", "hpc"}
            assert api.get("contents/home/a.txt").json()["content"] == "still here"
            assert api.put("contents/home/b.txt", json={"type": "file", "format": "text", "content": "new"}
                           ).status_code == 201
            broken = api.get("contents/hpc")
            assert broken.status_code == 500 and "Install sshfs to use sftp adaptors: pip install sshfs" in broken.text
            assert api.get("contents/home/b.txt").json()["content"] == "new"
    finally:
        s.stop()
