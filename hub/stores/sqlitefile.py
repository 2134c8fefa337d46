"""One SQLite file of the hub's own (profiles, quotas): the engine and its read/write transactions.

Set up as the catalog's SQLite (WAL, busy timeout, ``BEGIN IMMEDIATE`` for writes), with
its tables made by ``metadata.create_all``: these stores have no migrations to share.
"""

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy.exc import OperationalError

from skerry.workload.catalog import make_engine
from skerry.workload.catalog.engine import BUSY_TIMEOUT_S


class SQLiteFile:
    """Subclasses name their ``FILENAME`` in the data dir and the ``METADATA`` of their tables."""

    FILENAME: str
    METADATA: MetaData

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.engine = make_engine(f"sqlite:///{self.path}")
        # in a write transaction: processes opening a new file at once (twenty spawns, the hub and
        # the service) queue; in plain BEGINs two of them both read "no table", and one failed
        # at once with "database is locked" (SQLite's deadlock rule skips the busy timeout)
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                with self._write() as c:
                    self.METADATA.create_all(c)
                return
            except OperationalError as e:
                # a fresh file's first connections each switch it to WAL, a change that waits for
                # no busy timeout: one of twenty at once can still be told "locked"; it tries again
                if "database is locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.02, 0.1))

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, **kwargs):
        path = Path(data_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path / cls.FILENAME, **kwargs)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator:
        # skerry_write: the engine begins IMMEDIATE, so writers queue instead of failing
        with self.engine.connect().execution_options(skerry_write=True) as c, c.begin():
            yield c

    @contextmanager
    def _read(self) -> Iterator:
        with self.engine.connect() as c, c.begin():
            yield c
