"""Secrets never appear in process arguments, logs or API responses."""

import os
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.platform


def all_cmdlines() -> str:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.append(Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(out)


def test_no_secret_in_arguments_logs_or_answers(platform, alice):
    secrets_dir = platform.data_dir / "secrets"
    secrets = {f.name: f.read_bytes().strip().decode(errors="replace")
               for f in secrets_dir.iterdir() if f.is_file()}
    # (the default proxy, HAProxy, has no secret: its only API is a socket only root opens)
    assert {"admin-api-token", "admin-password"} <= set(secrets)
    secrets["alice-token"] = alice
    # use every secret once, so that a log line could have caught it
    answers = [
        httpx.request("PROPFIND", f"{platform.url}/dav/alice/", auth=("alice", alice), headers={"Depth": "1"}),
        httpx.get(f"{platform.url}/dav/alice/", headers={"Authorization": f"token {alice}"}),
        httpx.get(f"{platform.url}/dav/alice/", auth=("alice", "wrong-" + alice)),
        platform.api("GET", "/services/skerry/api/v1/infrastructure", token=alice),
        platform.api("GET", "/hub/api/users/alice"),
        httpx.get(platform.url + "/services/skerry/api/v1/openapi.json"),
    ]
    cmdlines = all_cmdlines()
    # the hub's log and every server's own (run/users/<name>/<server>.log)
    log = "\n".join(p.read_text(errors="replace") for p in sorted((platform.data_dir / "run").rglob("*.log")))
    for name, value in secrets.items():
        if len(value) < 8:
            continue
        assert value not in cmdlines, f"{name} is in a process's arguments"
        assert value not in log, f"{name} is in the hub's or a server's log"
        for r in answers:
            assert value not in r.text, f"{name} is in the answer to {r.request.url}"


def test_secret_files_are_private(platform):
    secrets_dir = platform.data_dir / "secrets"
    assert secrets_dir.stat().st_mode & 0o077 == 0
    for f in secrets_dir.rglob("*"):
        assert f.stat().st_mode & 0o077 == 0, f"{f.name} is readable by others"
