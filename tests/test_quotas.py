"""Quotas and usage without a platform: the store (a real SQLite file) admits and releases
servers against user and group limits in one transaction, closes stale sessions, reports
figures from sessions with known times; job counts and stored bytes from a real catalog
and a real folder."""

import threading
from datetime import UTC, datetime

import pytest

from skerry.hub.stores.quotas import (NoSuchQuota, QuotaError, QuotaExceeded, QuotaStore, check_queued_jobs,
                                     validate_quota)
from skerry.hub.stores.usage import job_counts, planned_jobs, queued_jobs, stored_bytes
from skerry.workload.catalog import Catalog
from skerry.workload.models import Job
from skerry.workload.runs import Planner, registry_of, start_run
from skerry.workload.workflows import load_workflow

GiB = 1024**3
DAY = 24 * 3600
T0 = datetime(2026, 3, 10, 22, 0, tzinfo=UTC).timestamp()  # 22:00 UTC: two hours before midnight


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = QuotaStore.for_data_dir(tmp_path, clock=clock)
    yield s
    s.dispose()


SMALL = {"cpu": 2, "memory": 4 * GiB, "gpus": 0}


def test_a_quota_is_validated_and_stored_with_absent_limits_unlimited(store):
    q = store.set_quota("user", "alice", {"servers": 2, "memory": "8Gi", "cpu": 3.5}, "admin")
    assert q["quota"] == {"servers": 2, "memory": 8 * GiB, "cpu": 3.5} and q["updated_by"] == "admin"
    assert store.get_quota("user", "alice")["quota"] == q["quota"]
    assert store.quotas() == {"users": [q], "groups": []}
    store.set_quota("user", "alice", {"gpus": 1}, "admin")  # a PUT replaces the whole quota
    assert store.get_quota("user", "alice")["quota"] == {"gpus": 1}
    store.delete_quota("user", "alice")
    with pytest.raises(NoSuchQuota, match="User 'alice' has no quota"):
        store.get_quota("user", "alice")
    with pytest.raises(NoSuchQuota):
        store.delete_quota("group", "physics")


@pytest.mark.parametrize("body, words", [
    ({"servers": -1}, "servers: Input should be greater than or equal to 0"),
    ({"servers": 1.5}, "servers: Input should be a valid integer"),
    ({"servers": True}, "servers: Input should be a valid integer"),
    ({"cpu": "4"}, "cpu: Input should be a valid number"),
    ({"memory": "lots"}, "memory: 'lots' is not a size"),
    ({"memory": -5}, "memory: memory cannot be negative"),
    ({"gpu": 1}, "gpu: not a quota field"),
    ({"queued_jobs": -3}, "queued_jobs: Input should be greater than or equal to 0"),
    ([1, 2], "quota: must be an object"),
])
def test_every_malformed_quota_is_refused_naming_the_field_and_nothing_is_saved(store, body, words):
    store.set_quota("user", "alice", {"servers": 1}, "admin")
    with pytest.raises(QuotaError) as e:
        store.set_quota("user", "alice", body, "admin")
    assert e.value.message.startswith(words.split(":")[0] + ":") and words in e.value.message
    assert store.get_quota("user", "alice")["quota"] == {"servers": 1}
    with pytest.raises(QuotaError):
        validate_quota(body)


def test_admit_and_release_against_a_user_server_limit(store):
    store.set_quota("user", "alice", {"servers": 1}, "admin")
    store.admit("alice", [], "", "cpu-small", SMALL)
    with pytest.raises(QuotaExceeded) as e:
        store.admit("alice", [], "second", "cpu-small", SMALL)
    assert e.value.message == "alice may run at most 1 server at a time (quota of user alice); 1 is running."
    assert [s["server"] for s in store.open_sessions()] == [""]  # the refused one is not recorded
    store.admit("bob", [], "", None, {})  # bob has no quota
    assert store.release("alice", "") is True
    assert store.release("alice", "") is False  # nothing open any more
    store.admit("alice", [], "second", "cpu-small", SMALL)


def test_cpu_memory_and_gpu_limits_count_the_open_servers(store):
    store.set_quota("user", "alice", {"cpu": 4, "memory": "8Gi", "gpus": 1}, "admin")
    store.admit("alice", [], "a", "p", {"cpu": 3, "memory": 2 * GiB, "gpus": 0})
    with pytest.raises(QuotaExceeded, match=r"^alice may use at most 4 CPU cores at a time \(quota of user "
                                            r"alice\); 3 CPU cores are in use and this server asks for 2 CPU"):
        store.admit("alice", [], "b", "p", {"cpu": 2, "memory": GiB, "gpus": 0})
    with pytest.raises(QuotaExceeded, match=r"at most 8 GiB of memory .* 2 GiB of memory is in use and this "
                                            r"server asks for 7 GiB of memory"):
        store.admit("alice", [], "b", "p", {"cpu": 1, "memory": 7 * GiB, "gpus": 0})
    store.admit("alice", [], "b", "p", {"cpu": 1, "memory": 6 * GiB, "gpus": 1})
    with pytest.raises(QuotaExceeded, match="at most 1 GPU at a time"):
        store.admit("alice", [], "c", "p", {"cpu": 0, "memory": 0, "gpus": 1})
    with pytest.raises(QuotaExceeded, match="this server has no CPU limit, so it cannot be counted"):
        store.admit("alice", [], "c", None, {})


def test_a_group_quota_limits_the_sum_over_its_members(store):
    store.set_quota("group", "physics", {"servers": 2, "gpus": 1}, "admin")
    store.admit("alice", ["physics"], "", "p", SMALL)
    store.admit("bob", ["physics", "chem"], "", "p", {**SMALL, "gpus": 1})
    with pytest.raises(QuotaExceeded) as e:
        store.admit("carol", ["physics"], "", "p", SMALL)
    assert e.value.message == ("The members of group physics may run at most 2 servers at a time "
                               "(quota of group physics); 2 are running.")
    store.admit("dave", ["chem"], "", "p", SMALL)  # outside the group: not limited by it
    store.release("bob", "")
    store.admit("carol", ["physics"], "", "p", SMALL)
    with pytest.raises(QuotaExceeded, match="quota of group physics"):
        store.admit("erin", ["physics"], "", "p", SMALL)


def test_the_user_quota_and_each_group_quota_all_apply(store):
    store.set_quota("user", "alice", {"servers": 3}, "admin")
    store.set_quota("group", "chem", {"cpu": 3}, "admin")
    store.admit("alice", ["physics", "chem"], "a", "p", SMALL)
    with pytest.raises(QuotaExceeded, match=r"quota of group chem\); 2 CPU cores are in use"):
        store.admit("alice", ["physics", "chem"], "b", "p", SMALL)


def test_a_stale_open_session_of_the_same_server_is_closed_on_re_admit(store, clock):
    store.set_quota("user", "alice", {"servers": 1}, "admin")
    store.admit("alice", [], "", "p", SMALL)
    clock.t += 600  # the hub died without stopping it, and starts the same server again
    store.admit("alice", [], "", "p", SMALL)
    assert len(store.open_sessions()) == 1
    rows = store.report("user", days=1)
    assert rows[0]["servers"] == 2 and rows[0]["server_hours"] == pytest.approx(600 / 3600, abs=1e-6)


def test_two_concurrent_admits_cannot_both_pass_a_limit_of_one(store, tmp_path, clock):
    store.set_quota("user", "alice", {"servers": 1}, "admin")
    stores = [QuotaStore.for_data_dir(tmp_path, clock=clock) for _ in range(8)]  # as separate processes would
    barrier = threading.Barrier(len(stores))
    results = []

    def admit(i, s):
        barrier.wait()
        try:
            s.admit("alice", [], f"server-{i}", "p", SMALL)
            results.append("admitted")
        except QuotaExceeded:
            results.append("refused")

    threads = [threading.Thread(target=admit, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.dispose()
    assert sorted(results) == ["admitted"] + ["refused"] * 7
    assert len(store.open_sessions()) == 1


def test_report_figures_from_sessions_with_known_times(store, clock):
    # alice: 22:00 -> 02:00 next day (4 h: 2 h on each day), 2 GPUs, 7200 CPU-seconds measured
    store.admit("alice", ["physics"], "", "gpu", {"cpu": 2, "memory": GiB, "gpus": 2})
    clock.t = T0 + 4 * 3600
    store.release("alice", "", cpu_seconds=7200)
    # bob: 03:00 -> still open at 04:00 (1 h), no GPU
    clock.t = T0 + 5 * 3600
    store.admit("bob", ["physics"], "", "cpu", SMALL)
    clock.t = T0 + 6 * 3600
    rows = store.report("user", days=2)
    assert rows == [
        {"user": "alice", "day": "2026-03-10", "servers": 1, "server_hours": 2.0, "cpu_seconds": 3600.0,
         "gpu_seconds": 14400.0, "jobs": None, "stored_bytes": None},
        {"user": "alice", "day": "2026-03-11", "servers": 1, "server_hours": 2.0, "cpu_seconds": 3600.0,
         "gpu_seconds": 14400.0, "jobs": None, "stored_bytes": None},
        {"user": "bob", "day": "2026-03-11", "servers": 1, "server_hours": 1.0, "cpu_seconds": 0.0,
         "gpu_seconds": 0.0, "jobs": None, "stored_bytes": None},
    ]
    assert [r["day"] for r in store.report("user", days=1)] == ["2026-03-11", "2026-03-11"]
    groups = store.report("group", days=2, jobs={("alice", "2026-03-11"): 5, ("carol", "2026-03-11"): 7},
                          stored={"alice": {"home": 100, "sftp": "not measured"}, "bob": {"home": 20}},
                          members={"carol": ["chem"]})
    assert [(r["group"], r["day"], r["server_hours"], r["jobs"]) for r in groups] == [
        ("chem", "2026-03-11", 0.0, 7), ("physics", "2026-03-10", 2.0, 0), ("physics", "2026-03-11", 3.0, 5)]
    assert groups[-1]["stored_bytes"] == {"home": 120, "sftp": "not measured"}
    totals = store.totals()
    assert totals["alice"] == {"server_seconds": 14400.0, "cpu_seconds": 7200.0, "gpu_seconds": 28800.0}
    assert totals["bob"]["server_seconds"] == 3600.0
    with pytest.raises(QuotaError, match="days: a whole number from 1 to 366"):
        store.report("user", days=0)
    with pytest.raises(QuotaError, match="by: 'user' or 'group'"):
        store.report("team")


# ---- jobs and stored bytes -----------------------------------------------------------

MD5OF = {"name": "md5of", "version": "1", "inputs": [{"name": "input", "type": "md5"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "callable": "skerry.workload.builtins:md5"}


@pytest.fixture
def cat(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    c.upgrade()
    c.create_dataset("raw", owner="alice", location="skerry://home/raw")
    c.register_files("raw", [{"uri": f"skerry://home/raw/f{i}.txt", "size": 1} for i in range(5)])
    c.add_module("md5of", "1", MD5OF)
    c.add_workflow("sums", {"name": "sums", "steps": [
        {"name": "sum", "module": "md5", "inputs": {"input": "dataset"}},
        {"name": "again", "module": "md5of", "inputs": {"input": "sum.checksum"}}]})
    yield c
    c.dispose()


def test_planned_queued_and_counted_jobs_from_the_catalog(cat, store):
    wf = load_workflow(cat.get_workflow("sums").spec, registry_of(cat))
    assert planned_jobs(cat, wf, "raw") == 5  # the first step: one per file; the second comes later
    start_run(cat, "sums", "raw", owner="alice")
    Planner(cat).advance()
    assert queued_jobs(cat, ["alice"]) == 5 and queued_jobs(cat, ["bob"]) == 0 and queued_jobs(cat, []) == 0
    with cat.session() as s:
        first = s.query(Job).order_by(Job.id).first().id
    cat.start_attempt(first, worker="w")
    cat.register_outputs_and_succeed(first, [{"uri": "skerry://home/raw.sum/x.md5", "size": 1}])
    assert queued_jobs(cat, ["alice"]) == 4  # a final job no longer counts
    today = datetime.now(UTC).date()
    assert job_counts(cat, today) == {("alice", today.isoformat()): 5}

    store.set_quota("user", "alice", {"queued_jobs": 6}, "admin")
    counted = lambda kind, name: queued_jobs(cat, ["alice"])  # noqa: E731
    check_queued_jobs(store, "alice", [], 2, counted)
    with pytest.raises(QuotaExceeded) as e:
        check_queued_jobs(store, "alice", [], 3, counted)
    assert e.value.message == ("alice may have at most 6 jobs queued (quota of user alice); "
                               "4 are queued and this run adds 3.")


def test_stored_bytes_measure_the_home_folder_and_name_other_adaptors(tmp_path):
    home = tmp_path / "users" / "alice"
    (home / "sub").mkdir(parents=True)
    (home / "a.bin").write_bytes(b"x" * 1000)
    (home / "sub" / "b.bin").write_bytes(b"y" * 24)
    (home / "link").symlink_to(home / "a.bin")  # not followed: counted once
    assert stored_bytes(tmp_path, ["alice", "bob"], {"alice": ["home", "sftp"]}) == {
        "alice": {"home": 1024 + len(str(home / "a.bin")), "sftp": "not measured"}, "bob": {"home": 0}}
