"""The pools of ``skerry up``'s scheduler: pools.json checked, defaults, local clusters started.

The clusters are real (LocalCluster, SpecCluster); a GPU pool here has no GPU behind it,
its workers only declare ``GPU=1`` (GPU devices are checked on a GPU machine)."""

import json

import dask
import pytest
from distributed import Client

from skerry.errors import ConfigError
from skerry.workload.pools import DASK_CONFIG, load_pools, start_pools


def write(tmp_path, value) -> str:
    path = tmp_path / "pools.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def test_defaults_one_worker_per_core_and_a_gpu_pool_only_with_gpus(tmp_path):
    pools = load_pools(tmp_path / "missing.json", cores=3, gpus=0)
    assert list(pools) == ["cpu"] and pools["cpu"].workers == 3 and pools["cpu"].threads == 1
    pools = load_pools(None, cores=2, gpus=2)
    assert pools["gpu"].workers == 2 and pools["gpu"].local


def test_pools_json_overrides_and_removes_pools(tmp_path):
    pools = load_pools(write(tmp_path, {"cpu": {"workers": 4, "threads": 2, "memory": "1GiB"},
                                        "gpu": {"address": "tcp://10.0.0.5:8786"}}), cores=2, gpus=0)
    assert (pools["cpu"].workers, pools["cpu"].threads, pools["cpu"].memory) == (4, 2, "1GiB")
    assert pools["gpu"].address == "tcp://10.0.0.5:8786" and not pools["gpu"].local
    assert load_pools(write(tmp_path, {"cpu": None, "gpu": None}), cores=2, gpus=1) == {}
    assert load_pools(write(tmp_path, {"gpu": {}}), cores=2, gpus=0)["gpu"].workers == 1


@pytest.mark.parametrize("value, words", [
    ("{not json", "not readable JSON"),
    ([1, 2], "must hold an object of pools"),
    ({"tpu": {}}, "unknown pool(s) tpu"),
    ({"cpu": 3}, "pool 'cpu' must be an object or null"),
    ({"cpu": {"workers": 0}}, "pool 'cpu' workers"),
    ({"cpu": {"wokers": 2}}, "pool 'cpu' wokers"),
    ({"gpu": {"address": "tcp://x:1", "workers": 2}}, "either 'address' or local workers"),
    ({"cpu": {"address": ""}}, "pool 'cpu' address"),
])
def test_bad_pools_json_is_a_sentence_naming_the_pool(tmp_path, value, words):
    with pytest.raises(ConfigError) as e:
        load_pools(write(tmp_path, value), cores=2, gpus=0)
    assert words in str(e.value) and "pools.json" in str(e.value)


def test_local_pools_start_with_their_workers_and_resources(tmp_path):
    pools = load_pools(write(tmp_path, {"cpu": {"workers": 1, "threads": 2}, "gpu": {"workers": 2}}),
                       cores=2, gpus=0)
    with dask.config.set(DASK_CONFIG):
        addresses, clusters = start_pools(pools, gpus=0)
    try:
        assert set(addresses) == {"cpu", "gpu"}
        with Client(addresses["cpu"]) as c:
            workers = c.scheduler_info()["workers"].values()
            assert [w["nthreads"] for w in workers] == [2]
            assert all(not w.get("resources") for w in workers)
        with Client(addresses["gpu"]) as c:
            c.wait_for_workers(2, timeout=60)
            workers = c.scheduler_info()["workers"].values()
            assert sorted(w["resources"].get("GPU") for w in workers) == [1, 1]
    finally:
        for cluster in clusters:
            cluster.close()


def test_skerry_up_refuses_a_bad_pools_json_before_starting_anything(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    write(data, {"cpu": {"workers": "many"}})
    r = subprocess.run([sys.executable, "-m", "skerry", "up", "--data-dir", str(data), "--port", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pool 'cpu' workers" in r.stderr and "pools.json" in r.stderr
    assert not (data / "run").exists() and not (data / "secrets").exists()  # nothing written
