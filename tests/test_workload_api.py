"""The workload REST API on a running platform: datasets, files, modules, workflows, runs,
tasks and jobs under ``/services/skerry/api/v1/``, as alice, bob and the admin.

Every bad input answers 4xx JSON with a sentence and leaves the catalog as it was: the
tests count the rows of every table of the platform's real catalog file before and after.
"""

import json

import httpx
import pytest
from sqlalchemy import func, select

from skerry.workload.catalog import Catalog
from skerry.workload.models import Base

from helpers import refused

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"
# no scheduler: these tests write jobs and attempts themselves and look at them standing still
POOLS = {"cpu": None, "gpu": None}
MD5 = "0" * 32
CAT = {"name": "collect", "version": "1", "inputs": [{"name": "files", "kind": "multiple", "type": "md5"}],
       "outputs": [{"name": "summary", "kind": "single", "type": "text", "file_name": "summary.txt"}],
       "callable": "skerry.workload.builtins:noop"}
TWO_STEPS = {"name": "checksums", "steps": [
    {"name": "checksum", "module": "md5", "inputs": {"input": "dataset"}},
    {"name": "collect", "module": "collect@1", "inputs": {"files": "checksum.checksum"}},
]}


@pytest.fixture(scope="module")
def catalog(platform):
    """The platform's own catalog file, opened beside the service (as the scheduler does)."""
    cat = Catalog.for_data_dir(platform.data_dir)
    yield cat
    cat.dispose()


def rows(catalog) -> dict[str, int]:
    with catalog.session() as s:
        return {t.name: s.execute(select(func.count()).select_from(t)).scalar() for t in Base.metadata.sorted_tables}


def files(n, prefix="skerry://home/raw"):
    return [{"uri": f"{prefix}/f{i:05d}", "size": i, "checksum": MD5} for i in range(n)]


def test_datasets_files_and_close(platform, alice, catalog):
    r = platform.api("POST", API + "/datasets", token=alice,
                     json={"name": "alice.raw", "location": "skerry://home/raw", "metadata": {"run": 7}})
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "alice" and r.json()["state"] == "OPEN" and r.json()["metadata"] == {"run": 7}

    r = platform.api("POST", API + "/datasets/alice.raw/files", token=alice, json={"files": files(2500)})
    assert r.status_code == 200, r.text
    assert r.json()["registered"] == 2500 and r.json()["dataset"]["files"] == 2500

    r = platform.api("GET", API + "/datasets/alice.raw", token=alice)
    assert r.json()["files"] == 2500 and r.json()["size"] == sum(range(2500))
    # hers, among what other modules on this shared platform left her (tests/sharing.py)
    assert "alice.raw" in [d["name"] for d in platform.api("GET", API + "/datasets", token=alice).json()["datasets"]]

    # paged listing: every file once, in registration order
    seen, after, pages = [], 0, 0
    while after is not None:
        page = platform.api("GET", API + f"/datasets/alice.raw/files?after={after}&limit=1000", token=alice).json()
        seen += [f["uri"] for f in page["files"]]
        after, pages = page["next_after"], pages + 1
    assert seen == [f["uri"] for f in files(2500)] and pages == 3

    r = platform.api("POST", API + "/datasets/alice.raw/close", token=alice)
    assert r.status_code == 200 and r.json()["state"] == "CLOSED"
    before = rows(catalog)
    refused(platform.api("POST", API + "/datasets/alice.raw/close", token=alice), 409, "dataset_state")
    refused(platform.api("POST", API + "/datasets/alice.raw/files", token=alice,
                         json={"files": files(1, "skerry://home/late")}), 409, "dataset_state")
    assert rows(catalog) == before


def test_datasets_belong_to_their_owner(platform, alice, bob):
    r = platform.api("POST", API + "/datasets", token=alice, json={"name": "alice.private"})
    assert r.status_code == 201, r.text
    r = platform.api("POST", API + "/datasets", token=bob, json={"name": "bob.own"})
    assert r.status_code == 201, r.text

    listed = platform.api("GET", API + "/datasets", token=bob).json()["datasets"]
    assert "bob.own" in [d["name"] for d in listed] and {d["owner"] for d in listed} == {"bob"}  # his only
    for method, path, body in [("GET", "/datasets/alice.private", None),
                               ("GET", "/datasets/alice.private/files", None),
                               ("POST", "/datasets/alice.private/files", {"files": files(1)}),
                               ("POST", "/datasets/alice.private/close", None)]:
        refused(platform.api(method, API + path, token=bob, json=body), 404, "unknown_dataset")
    assert platform.api("GET", API + "/datasets/alice.private", token=alice).json()["state"] == "OPEN"
    refused(platform.api("POST", API + "/datasets", token=bob, json={"name": "bob.fake", "owner": "alice"}),
            403, "forbidden")

    # admins see and change everything, and may create datasets for a user
    everyone = {d["name"] for d in platform.api("GET", API + "/datasets").json()["datasets"]}
    assert {"alice.private", "bob.own"} <= everyone
    bobs = platform.api("GET", API + "/datasets?owner=bob").json()["datasets"]
    assert "bob.own" in [d["name"] for d in bobs] and {d["owner"] for d in bobs} == {"bob"}
    assert platform.api("GET", API + "/datasets/alice.private").json()["owner"] == "alice"
    r = platform.api("POST", API + "/datasets", json={"name": "bob.given", "owner": "bob"})
    assert r.status_code == 201 and r.json()["owner"] == "bob"
    assert platform.api("GET", API + "/datasets/bob.given", token=bob).status_code == 200


def test_modules_and_workflows(platform, alice, bob):
    modules = {m["ref"]: m for m in platform.api("GET", API + "/modules", token=alice).json()["modules"]}
    assert {"noop@1", "sleep@1", "md5@1", "fail@1"} <= set(modules) and modules["md5@1"]["builtin"]

    r = platform.api("POST", API + "/modules", token=alice, json=CAT)
    assert r.status_code == 201, r.text
    assert r.json()["ref"] == "collect@1" and not r.json()["builtin"]
    assert "collect@1" in {m["ref"] for m in platform.api("GET", API + "/modules", token=alice).json()["modules"]}

    r = platform.api("POST", API + "/workflows", token=alice, json=TWO_STEPS)
    assert r.status_code == 201, r.text
    assert r.json()["steps"] == ["checksum", "collect"]
    listed = platform.api("GET", API + "/workflows", token=bob).json()["workflows"]  # workflows are shared
    [checksums] = [w for w in listed if w["name"] == "checksums"]
    assert checksums["owner"] == "alice"
    # stored as it resolved: every module pinned name@version
    pinned = {**TWO_STEPS, "steps": [{**TWO_STEPS["steps"][0], "module": "md5@1"}, TWO_STEPS["steps"][1]]}
    assert checksums["spec"] == pinned


RELAY = {"name": "relay", "inputs": [{"name": "input", "kind": "single", "type": "any"}],
         "outputs": [{"name": "output", "kind": "single", "type": "md5", "file_name": "{name}"}],
         "callable": "skerry.workload.builtins:noop"}
CYCLIC = {"name": "loop", "steps": [
    {"name": "a", "module": "relay", "inputs": {"input": "b.output"}},
    {"name": "b", "module": "relay", "inputs": {"input": "a.output"}},
    {"name": "c", "module": "md5", "inputs": {"input": "dataset"}},
]}
WRONG_PINS = {"name": "wrongpins", "steps": [  # md5 reads files, not md5 checksums
    {"name": "a", "module": "md5", "inputs": {"input": "dataset"}},
    {"name": "b", "module": "md5", "inputs": {"input": "a.checksum"}},
]}


@pytest.mark.parametrize("case, method, path, body, status, code, words", [
    ("malformed JSON", "POST", "/datasets", b'{"name": "x"', 400, "bad_json", "not valid JSON"),
    ("not an object", "POST", "/datasets", b'["x"]', 400, "bad_json", "JSON object"),
    ("unknown field", "POST", "/datasets", {"name": "x", "colour": "red"}, 400, "bad_request", "colour"),
    ("bad dataset name", "POST", "/datasets", {"name": "../etc"}, 400, None, "Dataset name"),
    ("bad location", "POST", "/datasets", {"name": "x", "location": "/etc"}, 400, None, "Location"),
    ("duplicate dataset", "POST", "/datasets", {"name": "alice.raw"}, 409, "dataset_exists", "already exists"),
    ("oversized body", "POST", "/datasets", {"name": "x", "metadata": {"a": "x" * 1_100_000}}, 413, "too_large",
     "larger than"),
    ("one bad file of many", "POST", "/datasets/alice.open/files",
     {"files": files(500, "skerry://home/new") + [{"uri": "skerry://home/new/x", "size": -1}]}, 400, "bad_file",
     "500"),
    ("a file listed twice", "POST", "/datasets/alice.open/files",
     {"files": files(3, "skerry://home/new") + files(1, "skerry://home/new")}, 400, "bad_file", "twice"),
    ("a file the dataset has", "POST", "/datasets/alice.open/files",
     {"files": files(3, "skerry://home/new2") + files(1, "skerry://home/raw")}, 400, "bad_file", "already has"),
    ("files not a list", "POST", "/datasets/alice.open/files", {"files": {"uri": "x"}}, 400, "bad_request", "list"),
    ("bad module spec", "POST", "/modules", {"name": "m", "callable": "x:y", "command": ["true"]}, 400,
     "bad_spec", "exactly one"),
    ("duplicate module", "POST", "/modules", CAT, 409, "module_exists", "already exists"),
    ("a built-in's name", "POST", "/modules", {"name": "md5", "callable": "x:y"}, 409, "module_exists",
     "built-in"),
    ("unknown module", "POST", "/workflows",
     {"name": "w", "steps": [{"name": "a", "module": "nope", "inputs": {"input": "dataset"}}]}, 400, "bad_spec",
     "unknown module 'nope'"),
    ("cyclic workflow", "POST", "/workflows", CYCLIC, 400, "bad_spec", "cycle: a -> b -> a"),
    ("wrong pin types", "POST", "/workflows", WRONG_PINS, 400, "bad_spec", "takes data of type 'file'"),
    ("duplicate workflow", "POST", "/workflows", TWO_STEPS, 409, "exists", "already exists"),
    ("bad parameter type", "POST", "/workflows",
     {"name": "w", "steps": [{"name": "a", "module": "sleep", "params": {"seconds": "long"}}]}, 400, "bad_spec",
     "seconds"),
    ("run of an unknown workflow", "POST", "/runs", {"workflow": "nope", "dataset": "alice.raw"}, 400, None,
     "nope"),
    ("run at rank 0", "POST", "/runs", {"workflow": "checksums", "dataset": "alice.raw", "rank": 0}, 400,
     "bad_request", "rank"),
    ("run over a dataset without a location", "POST", "/runs", {"workflow": "checksums", "dataset": "alice.open"},
     400, "bad_run", "location"),
    ("run over bob's dataset", "POST", "/runs", {"workflow": "checksums", "dataset": "bob.own"}, 404,
     "unknown_dataset", "bob.own"),
    ("bad job state", "GET", "/jobs?state=sleeping", None, 400, "bad_request", "sleeping"),
    ("bad page size", "GET", "/datasets/alice.raw/files?limit=0", None, 400, "bad_request", "limit"),
])
def test_bad_input_is_4xx_with_a_sentence_and_writes_nothing(platform, alice, bob, catalog, case, method, path,
                                                             body, status, code, words):
    _setup_for_bad_input(platform, alice, bob)
    before = rows(catalog)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    message = refused(platform.api(method, API + path, token=alice, **kwargs), status, code)
    assert words in message, (case, message)
    assert rows(catalog) == before, case


def _setup_for_bad_input(platform, alice, bob):
    for token, name in [(alice, "alice.raw"), (alice, "alice.open"), (bob, "bob.own")]:
        platform.api("POST", API + "/datasets", token=token, json={"name": name})
    platform.api("POST", API + "/datasets/alice.open/files", token=alice, json={"files": files(2)})
    platform.api("POST", API + "/modules", json=CAT)
    platform.api("POST", API + "/modules", json=RELAY)
    platform.api("POST", API + "/workflows", json=TWO_STEPS)


def test_oversized_file_list_is_413(platform, alice, catalog):
    platform.api("POST", API + "/datasets", token=alice, json={"name": "alice.huge"})
    before = rows(catalog)
    body = json.dumps({"files": files(400_000, "skerry://home/" + "long-folder-name" * 4)}).encode()
    assert len(body) > 32 * 1024 * 1024
    message = refused(platform.api("POST", API + "/datasets/alice.huge/files", token=alice, content=body), 413)
    assert "32 MiB" in message
    assert rows(catalog) == before


def test_no_token_is_401(platform):
    for path in ("/datasets", "/modules", "/workflows", "/runs", "/jobs", "/tasks/1"):
        r = httpx.get(platform.url + API + path)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", path


def test_runs_tasks_jobs_rank_and_cancel(platform, alice, bob, catalog):
    _setup_for_bad_input(platform, alice, bob)
    platform.api("POST", API + "/datasets", token=alice, json={"name": "alice.in", "location": "skerry://home/in"})
    r = platform.api("POST", API + "/runs", token=alice, json={"workflow": "checksums", "dataset": "alice.in",
                                                               "rank": 3})
    assert r.status_code == 201, r.text  # one task per step, one output dataset per step, the caller's
    started = r.json()
    assert started["owner"] == "alice" and started["state"] == "running" and started["dataset"] == "alice.in"
    assert [(t["step"], t["rank"], t["input_dataset"]) for t in started["tasks"]][0] == ("checksum", 3, "alice.in")
    assert [t["step"] for t in started["tasks"]] == ["checksum", "collect"]
    outputs = {t["output_dataset"] for t in started["tasks"]}
    assert outputs <= {d["name"] for d in platform.api("GET", API + "/datasets", token=alice).json()["datasets"]}
    assert started["id"] in [x["id"] for x in platform.api("GET", API + "/runs", token=alice).json()["runs"]]
    assert started["id"] not in [x["id"] for x in platform.api("GET", API + "/runs", token=bob).json()["runs"]]
    # the same run again: its output datasets exist; refused, nothing written
    before = rows(catalog)
    refused(platform.api("POST", API + "/runs", token=alice, json={"workflow": "checksums", "dataset": "alice.in"}),
            400, "bad_run")
    assert rows(catalog) == before

    # a run as the scheduler writes it: one task per step, 30 jobs on the first
    run = catalog.create_run("checksums", input_dataset="alice.open", owner="alice")
    module = catalog.get_module("collect").id
    task = catalog.create_task(step="checksum", module_id=module, input_dataset="alice.open", run_id=run, rank=1)
    other = catalog.create_task(step="collect", module_id=module, run_id=run, rank=1)
    file_ids = [f.id for f in catalog.list_files("alice.open").files]
    jobs = catalog.create_jobs(task, [[file_ids[i % len(file_ids)]] for i in range(30)])
    catalog.start_attempt(jobs[0], worker="w1")
    catalog.register_outputs_and_succeed(jobs[0], [])
    catalog.start_attempt(jobs[1], worker="w1")

    listed = platform.api("GET", API + "/runs", token=alice).json()["runs"]
    assert run in [x["id"] for x in listed]
    assert run not in [x["id"] for x in platform.api("GET", API + "/runs", token=bob).json()["runs"]]
    got = platform.api("GET", API + f"/runs/{run}", token=alice).json()
    assert got["workflow"] == "checksums" and got["dataset"] == "alice.open"
    assert [t["step"] for t in got["tasks"]] == ["checksum", "collect"]
    assert got["jobs"] == {"total": 30, "succeeded": 1, "failed": 0}
    refused(platform.api("GET", API + f"/runs/{run}", token=bob), 404)

    t = platform.api("GET", API + f"/tasks/{task}", token=alice).json()
    assert t["jobs"]["by_state"]["queued"] == 28 and t["jobs"]["by_state"]["running"] == 1
    assert t["jobs"]["by_state"]["succeeded"] == 1 and t["rank"] == 1 and t["owner"] == "alice"
    refused(platform.api("GET", API + f"/tasks/{task}", token=bob), 404, "not_found")
    refused(platform.api("GET", API + "/tasks/999999", token=alice), 404, "not_found")

    # rank: live change, checked
    r = platform.api("POST", API + f"/tasks/{task}/rank", token=alice, json={"rank": 4})
    assert r.status_code == 200 and r.json()["rank"] == 4
    before = rows(catalog)
    for bad in ({"rank": 0}, {"rank": "high"}, {"rank": True}, {}, {"rank": 2, "why": "x"}):
        refused(platform.api("POST", API + f"/tasks/{task}/rank", token=alice, json=bad), 400)
    refused(platform.api("POST", API + f"/tasks/{task}/rank", token=bob, json={"rank": 100}), 404)
    assert rows(catalog) == before
    assert platform.api("GET", API + f"/tasks/{task}", token=alice).json()["rank"] == 4

    # jobs: paged, by task and state, only one's own
    seen, after = [], 0
    while after is not None:
        page = platform.api("GET", API + f"/jobs?task={task}&state=queued&after={after}&limit=10",
                            token=alice).json()
        seen += [j["id"] for j in page["jobs"]]
        after = page["next_after"]
    assert seen == jobs[2:]
    mine = platform.api("GET", API + "/jobs?limit=10000", token=alice).json()["jobs"]
    assert {j["id"] for j in mine} >= set(jobs)
    assert not set(jobs) & {j["id"] for j in platform.api("GET", API + "/jobs?limit=10000", token=bob).json()["jobs"]}
    refused(platform.api("GET", API + f"/jobs?task={task}", token=bob), 404)
    assert len(platform.api("GET", API + f"/jobs?task={task}&limit=10000").json()["jobs"]) == 30  # admin

    # cancel: the task and every job that is not final; once
    refused(platform.api("POST", API + f"/tasks/{task}/cancel", token=bob), 404)
    r = platform.api("POST", API + f"/tasks/{task}/cancel", token=alice)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled"
    assert r.json()["jobs"]["by_state"]["cancelled"] == 29 and r.json()["jobs"]["by_state"]["succeeded"] == 1
    assert catalog.job(jobs[1]).attempt_rows[-1].ended is not None
    listed = {j["id"]: j for j in platform.api("GET", API + f"/jobs?task={task}&limit=100", token=alice).json()["jobs"]}
    assert listed[jobs[1]]["error"] == "cancelled by request"  # its last attempt's error (and log: none)
    assert listed[jobs[1]]["log"] is None and listed[jobs[2]]["error"] is None  # never attempted
    assert "final" in refused(platform.api("POST", API + f"/tasks/{task}/cancel", token=alice), 409,
                              "illegal_transition")
    refused(platform.api("POST", API + f"/tasks/{task}/rank", token=alice, json={"rank": 2}), 409)
    assert platform.api("GET", API + f"/tasks/{other}", token=alice).json()["state"] == "defined"


def test_openapi_lists_the_endpoints(platform):
    doc = httpx.get(platform.url + API + "/openapi.json").json()
    expected = {
        "/datasets": {"get", "post"}, "/datasets/{name}": {"get"}, "/datasets/{name}/files": {"get", "post"},
        "/datasets/{name}/close": {"post"}, "/modules": {"get", "post"}, "/workflows": {"get", "post"},
        "/runs": {"get", "post"}, "/runs/{run_id}": {"get"}, "/tasks/{task_id}": {"get"},
        "/tasks/{task_id}/rank": {"post"}, "/tasks/{task_id}/cancel": {"post"}, "/jobs": {"get"},
    }
    for path, methods in expected.items():
        assert set(doc["paths"][API + path]) >= methods, path
        for method in methods:
            assert doc["paths"][API + path][method].get("description"), (path, method)
    params = {p["name"] for p in doc["paths"][API + "/jobs"]["get"]["parameters"]}
    assert {"task", "state", "after", "limit"} <= params
    # the bodies are described, the specs by their own schemas
    bodies = {path: doc["paths"][API + path]["post"]["requestBody"]["content"]["application/json"]["schema"]
              for path in ("/datasets", "/datasets/{name}/files", "/modules", "/workflows", "/runs",
                           "/tasks/{task_id}/rank")}
    assert bodies["/datasets"]["required"] == ["name"] and bodies["/tasks/{task_id}/rank"]["required"] == ["rank"]
    assert {"inputs", "outputs", "parameters", "resources", "callable"} <= set(bodies["/modules"]["properties"])
    assert {"name", "mask", "steps"} <= set(bodies["/workflows"]["properties"])
    assert "#/$defs" not in json.dumps(doc)  # every reference resolves in the document


MASKED = {"name": "masked-sums", "mask": "alice.masked-*", "steps": [
    {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}


def test_a_run_asked_with_wait_is_answered_once_it_has_ended(platform, alice, bob, catalog):
    """``GET runs/{id}?wait=S``: the answer waits for the run's end (here written as the
    scheduler's ``finish_runs`` writes it, a second after the question), or S seconds;
    a bad wait is a 400 naming it, another user's run a 404 at once."""
    import threading
    import time

    from skerry.workload.models import Run

    _setup_for_bad_input(platform, alice, bob)
    run = catalog.create_run("checksums", input_dataset="alice.open", owner="alice")
    got = platform.api("GET", API + f"/runs/{run}?wait=0.2", token=alice)
    assert got.status_code == 200 and got.json()["state"] == "running"  # S seconds passed: as it stands

    def finish():
        time.sleep(1)
        with catalog.session() as s:
            s.get(Run, run).state = "succeeded"

    ender = threading.Thread(target=finish)
    ender.start()
    try:
        got = platform.api("GET", API + f"/runs/{run}?wait=25", token=alice)
    finally:
        ender.join()
    assert got.status_code == 200 and got.json()["state"] == "succeeded", got.text
    assert got.json()["id"] == run and got.json()["workflow"] == "checksums"
    for bad in ("-1", "31", "nan", "inf"):
        assert "'wait'" in refused(platform.api("GET", API + f"/runs/{run}?wait={bad}", token=alice), 400)
    refused(platform.api("GET", API + f"/runs/{run}?wait=25", token=bob), 404, "not_found")


def test_a_dataset_matching_a_mask_starts_a_run_once(platform, alice, bob, catalog):
    # a mask starts nothing over the datasets already there: only registering or closing does
    platform.api("POST", API + "/datasets", token=alice,
                 json={"name": "alice.masked-old", "location": "skerry://home/old"})
    r = platform.api("POST", API + "/workflows", token=alice, json=MASKED)
    assert r.status_code == 201 and r.json()["mask"] == "alice.masked-*", r.text
    assert not any(x["dataset"] == "alice.masked-old"
                   for x in platform.api("GET", API + "/runs", token=alice).json()["runs"])

    r = platform.api("POST", API + "/datasets", token=alice,
                     json={"name": "alice.masked-1", "location": "skerry://home/m1"})
    assert r.status_code == 201, r.text
    [run_id] = r.json()["runs"]
    run = platform.api("GET", API + f"/runs/{run_id}", token=alice).json()
    assert (run["workflow"], run["dataset"], run["owner"], run["state"]) == \
        ("masked-sums", "alice.masked-1", "alice", "running")
    assert [(t["step"], t["rank"], t["output_dataset"]) for t in run["tasks"]] == \
        [("sum", 1, "alice.masked-1.sum")]  # its output matches the mask too, and starts nothing

    r = platform.api("POST", API + "/datasets/alice.masked-1/close", token=alice)
    assert r.status_code == 200 and r.json()["state"] == "CLOSED" and r.json()["runs"] == [], r.text
    # closing the old one (never registered since the mask came) starts its run; a name no mask takes, none
    assert len(platform.api("POST", API + "/datasets/alice.masked-old/close", token=alice).json()["runs"]) == 1
    r = platform.api("POST", API + "/datasets", token=alice, json={"name": "alice.unmasked"})
    assert r.status_code == 201 and r.json()["runs"] == []
    mine = [(x["workflow"], x["dataset"]) for x in platform.api("GET", API + "/runs", token=alice).json()["runs"]]
    assert mine.count(("masked-sums", "alice.masked-1")) == 1
    assert not any(d.endswith(".sum") for _, d in mine)

    # a dataset that cannot be run over (no location) is created all the same, with no run
    r = platform.api("POST", API + "/datasets", token=alice, json={"name": "alice.masked-2"})
    assert r.status_code == 201 and r.json()["runs"] == [] and r.json()["state"] == "OPEN", r.text

    # an admin registering for bob a name alice's mask matches: her workflow starts nothing over it
    r = platform.api("POST", API + "/datasets", json={"name": "alice.masked-bob", "owner": "bob",
                                                      "location": "skerry://home/mb"})
    assert r.status_code == 201 and r.json()["runs"] == [], r.text


def test_an_admin_cannot_create_a_dataset_for_an_unknown_user(platform, alice, catalog):
    before = rows(catalog)
    message = refused(platform.api("POST", API + "/datasets", json={"name": "ghost.raw", "owner": "ghost"}),
                      404, "no_such_user")
    assert "ghost" in message
    refused(platform.api("POST", API + "/datasets", json={"name": "ghost.raw", "owner": ""}), 400, "bad_request")
    refused(platform.api("POST", API + "/datasets", json={"name": "ghost.raw", "owner": 7}), 400, "bad_request")
    assert rows(catalog) == before
    refused(platform.api("GET", API + "/datasets/ghost.raw"), 404, "unknown_dataset")


def test_runs_execute_their_owners_choices_only(platform, alice, bob, catalog):
    """Alice's mask over bob's names starts nothing; a module version alice adds never changes
    bob's workflow; dataset names are per owner, so alice cannot learn bob's."""
    r = platform.api("POST", API + "/workflows", token=alice, json={
        "name": "alice-grabs", "mask": "bob.*",
        "steps": [{"name": "s", "module": "md5", "inputs": {"input": "dataset"}}]})
    assert r.status_code == 201, r.text
    r = platform.api("POST", API + "/datasets", token=bob, json={"name": "bob.secret", "location": "skerry://home/s"})
    assert r.status_code == 201 and r.json()["runs"] == [], r.text
    r = platform.api("POST", API + "/datasets/bob.secret/close", token=bob)
    assert r.status_code == 200 and r.json()["runs"] == [], r.text
    assert not [x for x in platform.api("GET", API + "/runs").json()["runs"] if x["dataset"] == "bob.secret"]

    # bob's name is his alone: alice's answers are those of a name nobody holds
    unknown = platform.api("GET", API + "/datasets/nobody.holds-this", token=alice)
    held = platform.api("GET", API + "/datasets/bob.secret", token=alice)
    assert held.status_code == unknown.status_code == 404
    assert held.json()["error"] == unknown.json()["error"] == "unknown_dataset"
    told = held.json()["message"].replace("bob.secret", "X")
    assert told == unknown.json()["message"].replace("nobody.holds-this", "X")
    r = platform.api("POST", API + "/datasets", token=alice, json={"name": "bob.secret", "location": "skerry://home/a"})
    assert r.status_code == 201 and r.json()["owner"] == "alice", r.text  # no 409: nothing told
    assert r.json()["runs"] != []  # her own mask starts over her own dataset
    assert platform.api("GET", API + "/datasets/bob.secret", token=bob).json()["location"] == "skerry://home/s"
    # an admin names the owner where the name is ambiguous
    refused(platform.api("GET", API + "/datasets/bob.secret"), 409, "ambiguous_dataset")
    assert platform.api("GET", API + "/datasets/bob.secret?owner=alice").json()["owner"] == "alice"

    # bob's workflow names his module without a version; alice then adds a newer version
    mod = {"name": "bobmod", "version": "1", "inputs": [{"name": "input", "type": "file"}],
           "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
           "callable": "skerry.workload.builtins:md5"}
    assert platform.api("POST", API + "/modules", token=bob, json=mod).status_code == 201
    r = platform.api("POST", API + "/workflows", token=bob, json={
        "name": "bobflow", "steps": [{"name": "s", "module": "bobmod", "inputs": {"input": "dataset"}}]})
    assert r.status_code == 201 and r.json()["spec"]["steps"][0]["module"] == "bobmod@1", r.text
    r = platform.api("POST", API + "/modules", token=alice, json={**mod, "version": "2", "resources": {"gpu": 1}})
    assert r.status_code == 201, r.text
    platform.api("POST", API + "/datasets", token=bob, json={"name": "bob.in", "location": "skerry://home/in"})
    r = platform.api("POST", API + "/runs", token=bob, json={"workflow": "bobflow", "dataset": "bob.in"})
    assert r.status_code == 201, r.text
    assert [t["module"] for t in r.json()["tasks"]] == ["bobmod@1"]
    # a non-admin cannot point a run at another user's dataset
    refused(platform.api("POST", API + "/runs", token=alice,
                         json={"workflow": "bobflow", "dataset": "bob.in", "owner": "bob"}), 403, "forbidden")
    refused(platform.api("POST", API + "/runs", token=alice, json={"workflow": "bobflow", "dataset": "bob.in"}),
            404, "unknown_dataset")
