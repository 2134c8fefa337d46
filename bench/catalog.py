"""Catalog bulk registration: files/s on SQLite (the default) and on PostgreSQL.

    python bench/catalog.py [--files 100000] [--runs 3] [--no-postgres] [--http]

Each run registers ``--files`` entries (``skerry://`` URI, size, MD5) into a new dataset
with one ``Catalog.register_files`` call: validation, one transaction, all or nothing,
the same path as the REST API. SQLite: a fresh WAL file in a temporary folder.
PostgreSQL: a real server started for the run (tests/postgres.py), a fresh database per
run. Also times one full page walk (``iter_files``) of the result. Against the strongest
alternative a user could pick, the raw insert: the same rows into the same table of a
fresh catalog with the database driver's own ``executemany`` in one transaction (no
validation, no duplicate check). Prints each run, the medians and the ratio; the target
is >= 10,000 files/s on SQLite. ``--http``: also through the REST API, as a user registers
them, on a platform of its own (``skerry up``, its SQLite catalog): each run a new dataset,
timed from ``POST /services/skerry/api/v1/datasets/<name>/files`` with all the entries in
one body until its answer. Asserts nothing.
"""

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import Postgres, binaries  # noqa: E402

from skerry.workload.catalog import Catalog  # noqa: E402

TARGET = 10_000


def entries(n: int) -> list[dict]:
    digest = hashlib.md5(b"bench").hexdigest()
    return [{"uri": f"skerry://home/bench/run/{i:07d}.dat", "size": 1_000_000 + i, "checksum": digest}
            for i in range(n)]


def raw(url: str, files: list[dict]) -> float:
    """files/s of the same rows inserted with the driver's ``executemany`` (module docstring)."""
    from datetime import UTC, datetime

    catalog = Catalog(url)
    try:
        catalog.upgrade()
        dataset = catalog.create_dataset("bench").id
        conn = catalog.engine.raw_connection()
        try:
            mark = "?" if catalog.dialect == "sqlite" else "%s"
            sql = (f"INSERT INTO files (dataset_id, uri, size, checksum, state, created) "
                   f"VALUES ({', '.join([mark] * 6)})")
            stamp = datetime.now(UTC)
            stamp = stamp.isoformat(sep=" ") if catalog.dialect == "sqlite" else stamp
            start = time.perf_counter()
            cursor = conn.cursor()
            if catalog.dialect == "sqlite":  # the catalog's connections leave transactions to BEGIN
                cursor.execute("BEGIN")
            cursor.executemany(sql, [(dataset, f["uri"], f["size"], f["checksum"], "AVAILABLE", stamp) for f in files])
            conn.commit()
            return len(files) / (time.perf_counter() - start)
        finally:
            conn.close()
    finally:
        catalog.dispose()


def run(url: str, files: list[dict]) -> tuple[float, float]:
    catalog = Catalog(url)
    try:
        catalog.upgrade()
        catalog.create_dataset("bench")
        start = time.perf_counter()
        catalog.register_files("bench", files)
        registered = time.perf_counter() - start
        start = time.perf_counter()
        listed = sum(1 for _ in catalog.iter_files("bench"))
        walked = time.perf_counter() - start
        assert listed == len(files), (listed, len(files))
        return len(files) / registered, len(files) / walked
    finally:
        catalog.dispose()


def http_runs(files: list[dict], runs: int) -> list[float]:
    """files/s of registration through the REST API (module docstring)."""
    from helpers import bench_platform

    api = "/services/skerry/api/v1"
    rates = []
    with tempfile.TemporaryDirectory() as tmp, bench_platform(Path(tmp)) as platform:
        platform.create_user("alice")
        token = platform.user_token("alice")
        for i in range(runs):
            r = platform.api("POST", api + "/datasets", token=token, json={"name": f"bench.{i}"})
            assert r.status_code == 201, r.text
            start = time.perf_counter()
            r = platform.api("POST", api + f"/datasets/bench.{i}/files", token=token, json={"files": files})
            rates.append(len(files) / (time.perf_counter() - start))
            assert r.status_code == 200, r.text
    return rates


def report(name: str, results: list[tuple[float, float]], raws: list[float]) -> float:
    for i, ((rate, walk), base) in enumerate(zip(results, raws, strict=True), 1):
        print(f"  {name} run {i}: register {rate:,.0f} files/s, list {walk:,.0f} files/s; "
              f"raw insert {base:,.0f} files/s")
    median, base = statistics.median(r for r, _ in results), statistics.median(raws)
    print(f"{name}: median register {median:,.0f} files/s (target >= {TARGET:,}: {median / TARGET:.1f}x), "
          f"median list {statistics.median(w for _, w in results):,.0f} files/s; "
          f"raw executemany {base:,.0f} files/s: ratio {median / base:.2f}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--http", action="store_true", help="also through the REST API (a platform of its own)")
    args = parser.parse_args()
    files = entries(args.files)
    print(f"bulk registration of {args.files:,} files, {args.runs} runs each")

    results, raws = [], []
    for _ in range(args.runs):  # interleaved
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(f"sqlite:///{tmp}/catalog.sqlite", files))
        with tempfile.TemporaryDirectory() as tmp:
            raws.append(raw(f"sqlite:///{tmp}/catalog.sqlite", files))
    median = report("SQLite", results, raws)
    if args.http:
        rates = http_runs(files, args.runs)
        print(f"  through the REST API: {', '.join(f'{r:,.0f}' for r in rates)} files/s; median "
              f"{statistics.median(rates):,.0f} files/s, {statistics.median(rates) / median:.2f} of the call above "
              f"and {statistics.median(rates) / statistics.median(raws):.2f} of the raw insert")

    if args.no_postgres:
        return
    if binaries() is None:
        print("PostgreSQL: skipped (binaries missing: apt-get install -y postgresql)")
        return
    server = Postgres().start()
    try:
        results, raws = [], []
        for i in range(args.runs):
            results.append(run(server.create_database(f"bench_{i}"), files))
            raws.append(raw(server.create_database(f"bench_raw_{i}"), files))
    finally:
        server.stop()
    report("PostgreSQL", results, raws)


if __name__ == "__main__":
    main()
