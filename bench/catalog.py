"""Catalog bulk registration: files/s on SQLite (the default) and on PostgreSQL.

    python bench/catalog.py [--files 100000] [--runs 3] [--no-postgres]

Each run registers ``--files`` entries (``skerry://`` URI, size, MD5) into a new dataset
with one ``Catalog.register_files`` call: validation, one transaction, all or nothing,
the same path as the REST API. SQLite: a fresh WAL file in a temporary folder.
PostgreSQL: a real server started for the run (tests/postgres.py), a fresh database per
run. Also times one full page walk (``iter_files``) of the result. Prints each run and
the medians; the target is >= 10,000 files/s on SQLite. Asserts nothing.
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


def report(name: str, results: list[tuple[float, float]]) -> float:
    for i, (rate, walk) in enumerate(results, 1):
        print(f"  {name} run {i}: register {rate:,.0f} files/s, list {walk:,.0f} files/s")
    median = statistics.median(r for r, _ in results)
    print(f"{name}: median register {median:,.0f} files/s (target >= {TARGET:,}: {median / TARGET:.1f}x), "
          f"median list {statistics.median(w for _, w in results):,.0f} files/s")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    files = entries(args.files)
    print(f"bulk registration of {args.files:,} files, {args.runs} runs each")

    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(f"sqlite:///{tmp}/catalog.sqlite", files))
    report("SQLite", results)

    if args.no_postgres:
        return
    if binaries() is None:
        print("PostgreSQL: skipped (binaries missing: apt-get install -y postgresql)")
        return
    server = Postgres().start()
    try:
        results = [run(server.create_database(f"bench_{i}"), files) for i in range(args.runs)]
    finally:
        server.stop()
    report("PostgreSQL", results)


if __name__ == "__main__":
    main()
