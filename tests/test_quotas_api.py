"""Quotas, usage and metrics REST on a running platform, as the admin, carol (group physics),
dora and erin; the platform's own ``DIR/usage.sqlite`` and catalog are read beside the service.

Every refused write answers 4xx JSON with a sentence and leaves the stores as they were; a
run that would pass a queued-jobs quota is refused and leaves the catalog as it was, also when
two are created at once or when a dataset's name starts it (the refusal is in the dataset's answer).
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from skerry.hub.stores.quotas import QuotaStore
from skerry.workload.catalog import Catalog
from skerry.workload.models import Base, Job, Run, Task
from skerry.workload.runs import Planner

from helpers import refused

pytestmark = pytest.mark.platform

API = "/services/skerry/api/v1"
POOLS = {"cpu": None, "gpu": None}  # no Dask: the tests plan jobs themselves and look at them standing still
GiB = 1024**3


@pytest.fixture(scope="module")
def store(platform):
    """The platform's own quota store, opened beside the service (as the spawner does)."""
    s = QuotaStore.for_data_dir(platform.data_dir)
    yield s
    s.dispose()


@pytest.fixture(scope="module")
def catalog(platform):
    cat = Catalog.for_data_dir(platform.data_dir)
    yield cat
    cat.dispose()


def catalog_rows(catalog) -> dict[str, int]:
    with catalog.session() as s:
        return {t.name: s.execute(select(func.count()).select_from(t)).scalar() for t in Base.metadata.sorted_tables}


def test_admin_sets_reads_and_deletes_quotas(platform, users, store):
    r = platform.api("PUT", API + "/quotas/users/dora", json={"servers": 1, "memory": "2Gi", "cpu": 1.5})
    assert r.status_code == 200, r.text
    assert r.json()["quota"] == {"servers": 1, "memory": 2 * GiB, "cpu": 1.5}
    assert r.json()["updated_by"] == "skerry-admin"  # the admin API token's service
    assert platform.api("GET", API + "/quotas/users/dora").json()["quota"]["memory"] == 2 * GiB
    r = platform.api("PUT", API + "/quotas/groups/physics", json={"gpus": 2})
    assert r.status_code == 200 and r.json()["kind"] == "group", r.text
    listed = platform.api("GET", API + "/quotas").json()
    assert [q["name"] for q in listed["users"]] == ["dora"] and [q["name"] for q in listed["groups"]] == ["physics"]
    assert store.get_quota("user", "dora")["quota"]["servers"] == 1  # in the platform's own store
    r = platform.api("DELETE", API + "/quotas/users/dora")
    assert r.status_code == 204, r.text
    refused(platform.api("GET", API + "/quotas/users/dora"), 404, "no_such_quota")
    refused(platform.api("DELETE", API + "/quotas/users/dora"), 404, "no_such_quota")
    assert platform.api("DELETE", API + "/quotas/groups/physics").status_code == 204
    assert store.quotas() == {"users": [], "groups": []}


def test_users_read_their_own_quotas_and_may_not_write(platform, users, store):
    for kind, name, body in (("users", "carol", {"servers": 2}), ("users", "dora", {"servers": 1}),
                             ("groups", "physics", {"cpu": 8}), ("groups", "chem", {"cpu": 4})):
        assert platform.api("PUT", API + f"/quotas/{kind}/{name}", json=body).status_code == 200
    try:
        mine = platform.api("GET", API + "/quotas", token=users["carol"]).json()
        assert [q["name"] for q in mine["users"]] == ["carol"] and [q["name"] for q in mine["groups"]] == ["physics"]
        assert platform.api("GET", API + "/quotas/groups/physics", token=users["carol"]).json()["quota"] == {"cpu": 8}
        refused(platform.api("GET", API + "/quotas/users/dora", token=users["carol"]), 403, "forbidden")
        refused(platform.api("GET", API + "/quotas/groups/chem", token=users["carol"]), 403, "forbidden")
        before = store.quotas()
        refused(platform.api("PUT", API + "/quotas/users/carol", token=users["carol"], json={"servers": 9}), 403)
        refused(platform.api("PUT", API + "/quotas/users/erin", token=users["erin"], json={}), 403)
        refused(platform.api("DELETE", API + "/quotas/groups/physics", token=users["carol"]), 403)
        assert store.quotas() == before
        refused(platform.api("GET", API + "/quotas", token="not-a-token"), 401)
    finally:
        for kind, name in (("users", "carol"), ("users", "dora"), ("groups", "physics"), ("groups", "chem")):
            platform.api("DELETE", API + f"/quotas/{kind}/{name}")


@pytest.mark.parametrize("body, words", [
    (b"{not json", "The body is not valid JSON."),
    (b"[1, 2]", "The body must be a JSON object."),
    (b'{"servers": 1, "gpu": 1}', "gpu: not a quota field"),
    (b'{"servers": -1}', "servers: Input should be greater than or equal to 0"),
    (b'{"servers": true}', "servers: Input should be a valid integer"),
    (b'{"cpu": "4"}', "cpu: Input should be a valid number"),
    (b'{"memory": "lots"}', "memory: 'lots' is not a size"),
    (b'{"queued_jobs": 1.5}', "queued_jobs: Input should be a valid integer"),
])
def test_bad_bodies_are_400_naming_the_field_and_nothing_is_saved(platform, users, store, body, words):
    assert platform.api("PUT", API + "/quotas/groups/physics", json={"servers": 3}).status_code == 200
    try:
        before = store.quotas()
        for kind, name in (("groups", "physics"), ("users", "erin")):
            message = refused(platform.api("PUT", API + f"/quotas/{kind}/{name}", content=body,
                                           headers={"Content-Type": "application/json"}), 400)
            assert words in message, message
        assert store.quotas() == before
    finally:
        platform.api("DELETE", API + "/quotas/groups/physics")


def test_a_run_past_the_queued_jobs_quota_is_refused_and_nothing_is_created(platform, users, catalog):
    carol = users["carol"]
    assert platform.api("POST", API + "/workflows", token=carol, json={"name": "sums", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}).status_code == 201
    for name, n in (("carol.a", 3), ("carol.b", 1)):
        r = platform.api("POST", API + "/datasets", token=carol,
                         json={"name": name, "location": f"skerry://home/{name}"})
        assert r.status_code == 201, r.text
        r = platform.api("POST", API + f"/datasets/{name}/files", token=carol, json={"files": [
            {"uri": f"skerry://home/{name}/f{i}", "size": 1} for i in range(n)]})
        assert r.status_code == 200, r.text
    assert platform.api("PUT", API + "/quotas/users/carol", json={"queued_jobs": 2}).status_code == 200
    try:
        before = catalog_rows(catalog)
        message = refused(platform.api("POST", API + "/runs", token=carol, json={"workflow": "sums",
                                                                                 "dataset": "carol.a"}),
                          403, "quota_exceeded")
        assert message == ("carol may have at most 2 jobs queued (quota of user carol); "
                           "0 are queued and this run adds 3.")
        assert catalog_rows(catalog) == before  # no run, no task, no output dataset

        assert platform.api("PUT", API + "/quotas/users/carol", json={"queued_jobs": 3}).status_code == 200
        r = platform.api("POST", API + "/runs", token=carol, json={"workflow": "sums", "dataset": "carol.a"})
        assert r.status_code == 201, r.text
        Planner(catalog).advance()  # what the scheduler does: the run's 3 jobs are queued
        with catalog.session() as s:
            assert s.execute(select(func.count()).select_from(Job).where(Job.state == "queued")).scalar() == 3
        before = catalog_rows(catalog)
        message = refused(platform.api("POST", API + "/runs", token=carol, json={"workflow": "sums",
                                                                                 "dataset": "carol.b"}), 403)
        assert message.endswith("3 are queued and this run adds 1.")
        # a group's quota limits the sum over its members; the admin's run for carol is refused too
        platform.api("DELETE", API + "/quotas/users/carol")
        assert platform.api("PUT", API + "/quotas/groups/physics", json={"queued_jobs": 3}).status_code == 200
        message = refused(platform.api("POST", API + "/runs", json={"workflow": "sums", "dataset": "carol.b"}), 403)
        assert message == ("The members of group physics may have at most 3 jobs queued (quota of group physics); "
                           "3 are queued and this run adds 1.")
        assert catalog_rows(catalog) == before
        assert platform.api("PUT", API + "/quotas/groups/physics", json={"queued_jobs": 4}).status_code == 200
        assert platform.api("POST", API + "/runs", token=carol, json={"workflow": "sums",
                                                                      "dataset": "carol.b"}).status_code == 201
    finally:
        platform.api("DELETE", API + "/quotas/users/carol")
        platform.api("DELETE", API + "/quotas/groups/physics")


def test_usage_rows_per_user_and_group_users_see_their_own(platform, users, store, catalog):
    # sessions as the spawner records them: carol's server ran 2 s, dora's is still open
    store.admit("carol", ["physics"], "", None, {"cpu": 1, "memory": GiB, "gpus": 1})
    time.sleep(2)
    store.release("carol", "", cpu_seconds=1.5)
    store.admit("dora", [], "", None, {})
    home = platform.data_dir / "users" / "carol"
    home.mkdir(parents=True, exist_ok=True)
    (home / "results").mkdir(exist_ok=True)
    (home / "results" / "table.csv").write_bytes(b"1,2,3\n" * 1000)
    try:
        rows = platform.api("GET", API + "/usage?by=user&days=1").json()["rows"]
        carol = next(r for r in rows if r["user"] == "carol")
        assert carol["servers"] == 1 and carol["server_hours"] >= 2 / 3600 and carol["cpu_seconds"] == 1.5
        with catalog.session() as s:
            jobs = s.execute(select(func.count()).select_from(Job).join(Task, Task.id == Job.task_id)
                             .join(Run, Run.id == Task.run_id).where(Run.owner == "carol")).scalar()
        assert carol["gpu_seconds"] >= 2 and carol["jobs"] == jobs
        assert carol["stored_bytes"] == {"home": 6000}  # du of her home folder, measured now
        assert "dora" in {r["user"] for r in rows}
        mine = platform.api("GET", API + "/usage?days=7", token=users["carol"]).json()
        assert mine["by"] == "user" and {r["user"] for r in mine["rows"]} == {"carol"}
        erin = platform.api("GET", API + "/usage", token=users["erin"]).json()["rows"]
        assert [(r["user"], r["servers"], r["stored_bytes"]) for r in erin] == [("erin", 0, {"home": 0})]
        groups = platform.api("GET", API + "/usage?by=group&days=1", token=users["carol"]).json()["rows"]
        assert [r["group"] for r in groups] == ["physics"] and groups[0]["server_hours"] >= 2 / 3600
        assert platform.api("GET", API + "/usage?by=group", token=users["erin"]).json()["rows"] == []
        for query, words in (("by=team", "by: 'user' or 'group'"), ("days=0", "days: a whole number"),
                             ("days=many", "days: a whole number")):
            assert words in refused(platform.api("GET", API + f"/usage?{query}"), 400, "bad_quota")
    finally:
        store.release("dora", "")


def metrics_of(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_for_admins_and_the_metrics_group(platform, users, alice, store, catalog):
    assert platform.api("POST", API + "/profiles", json={
        "slug": "tiny", "display_name": "Tiny", "resources": {"cpu_limit": 1, "mem_limit": "1Gi", "gpus": 0},
        "dask": {"max_workers": 1, "worker_memory": "1Gi"},
        "access": {"everyone": True}}).status_code in (201, 409)
    store.admit("erin", [], "", None, {"cpu": 2, "memory": GiB, "gpus": 0})
    store.release("erin", "", cpu_seconds=4.25)
    r = platform.api("GET", API + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    found = metrics_of(r.text)
    assert found[("skerry_servers_open", (("user", "alice"),))] == 1  # alice's running server, from the hub
    assert [s["server"] for s in store.open_sessions() if s["user"] == "alice"] == [""]  # the spawner admitted it
    assert found[("skerry_server_seconds_total", (("user", "alice"),))] > 0
    with catalog.session() as s:
        queued = s.execute(select(func.count()).select_from(Job).where(Job.state == "queued")).scalar()
    assert found[("skerry_jobs", (("state", "queued"),))] == queued
    assert found[("skerry_jobs", (("state", "failed"),))] == 0  # every state, 0 where none
    assert found[("skerry_cpu_seconds_total", (("user", "erin"),))] == 4.25
    assert ("skerry_server_seconds_total", (("user", "erin"),)) in found
    assert found[("skerry_profiles", (("state", "enabled"),))] >= 1

    refused(platform.api("GET", API + "/metrics", token=users["erin"]), 403, "forbidden")
    # members of the hub group "metrics" hold read:metrics (the scope Prometheus scrapers use)
    r = platform.api("POST", "/hub/api/groups/metrics/users", json={"users": ["dora"]})
    assert r.status_code == 200, r.text
    scraper = platform.user_token("dora")
    r = platform.api("GET", API + "/metrics", token=scraper)
    assert r.status_code == 200 and ("skerry_jobs", (("state", "queued"),)) in metrics_of(r.text), r.text


def test_a_real_server_stopped_shows_in_usage_with_its_cpu_seconds(platform, alice, store):
    platform.stop_server("alice")  # the spawner releases her session with the CPU seconds its processes used
    assert not [s for s in store.open_sessions() if s["user"] == "alice"]
    rows = platform.api("GET", API + "/usage?days=1", token=alice).json()["rows"]
    assert [r["user"] for r in rows] == ["alice"]
    assert rows[0]["servers"] >= 1 and rows[0]["server_hours"] > 0 and rows[0]["cpu_seconds"] > 0, rows
    assert store.totals()["alice"]["cpu_seconds"] == pytest.approx(rows[0]["cpu_seconds"], abs=1e-3)


def dataset_with_files(platform, token: str, name: str, files: int) -> None:
    r = platform.api("POST", API + "/datasets", token=token, json={"name": name, "location": f"skerry://home/{name}"})
    assert r.status_code == 201, r.text
    r = platform.api("POST", API + f"/datasets/{name}/files", token=token, json={"files": [
        {"uri": f"skerry://home/{name}/f{i}", "size": 1} for i in range(files)]})
    assert r.status_code == 200, r.text


def runs_of(catalog, owner: str) -> int:
    with catalog.session() as s:
        return s.execute(select(func.count()).select_from(Run).where(Run.owner == owner)).scalar()


def test_two_runs_at_once_against_a_quota_for_one_create_exactly_one(platform, users, catalog):
    dora = users["dora"]
    assert platform.api("POST", API + "/workflows", token=dora, json={"name": "race", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}).status_code == 201
    for name in ("dora.r1", "dora.r2"):
        dataset_with_files(platform, dora, name, 2)
    assert platform.api("PUT", API + "/quotas/users/dora", json={"queued_jobs": 3}).status_code == 200
    try:
        start = threading.Barrier(2)

        def create(dataset: str):
            start.wait()
            return platform.api("POST", API + "/runs", token=dora, json={"workflow": "race", "dataset": dataset})

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(create, ("dora.r1", "dora.r2")))
        assert sorted(r.status_code for r in answers) == [201, 403], [r.text for r in answers]
        # the first run has no jobs yet (no scheduler here): the jobs it is owed count as queued
        [no] = [r for r in answers if r.status_code == 403]
        assert refused(no, 403, "quota_exceeded") == ("dora may have at most 3 jobs queued (quota of user dora); "
                                                      "2 are queued and this run adds 2.")
        assert runs_of(catalog, "dora") == 1
    finally:
        platform.api("DELETE", API + "/quotas/users/dora")


def test_a_mask_started_run_past_the_quota_is_refused_in_the_dataset_answer(platform, users, catalog):
    erin = users["erin"]
    assert platform.api("POST", API + "/workflows", token=erin, json={"name": "masked", "mask": "erin.m*", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}}]}).status_code == 201
    dataset_with_files(platform, erin, "erin.x", 2)
    r = platform.api("POST", API + "/runs", token=erin, json={"workflow": "masked", "dataset": "erin.x"})
    assert r.status_code == 201, r.text  # no quota yet: 2 jobs owed to erin
    assert platform.api("PUT", API + "/quotas/users/erin", json={"queued_jobs": 1}).status_code == 200
    try:
        before = catalog_rows(catalog)
        r = platform.api("POST", API + "/datasets", token=erin, json={"name": "erin.m1",
                                                                      "location": "skerry://home/erin.m1"})
        assert r.status_code == 201, r.text
        assert r.json()["runs"] == [] and r.json()["refused"] == [{
            "workflow": "masked", "error": "quota_exceeded",
            "message": "erin may have at most 1 job queued (quota of user erin); 2 are queued and this run adds 0."}]
        after = catalog_rows(catalog)
        assert after["datasets"] == before["datasets"] + 1 and after["runs"] == before["runs"]
        assert after["tasks"] == before["tasks"]  # the dataset is created, no run, task or output dataset
        r = platform.api("POST", API + "/datasets/erin.m1/files", token=erin, json={"files": [
            {"uri": "skerry://home/erin.m1/f0", "size": 1}]})
        assert r.status_code == 200, r.text
        r = platform.api("POST", API + "/datasets/erin.m1/close", token=erin)  # closing tries again
        assert r.status_code == 200 and r.json()["state"] == "CLOSED", r.text
        assert r.json()["runs"] == [] and r.json()["refused"][0]["message"].endswith(
            "2 are queued and this run adds 1.")
        assert runs_of(catalog, "erin") == 1
    finally:
        platform.api("DELETE", API + "/quotas/users/erin")
