"""A job module for tests whose jobs wait for the test's go: ``gated.md5_when_let``.

It is ``md5`` (``skerry.workload.builtins``) that first waits while a file named after
its input exists in the folder ``holds`` (a parameter): the test decides when, and
whether, each job gets past that point (a hung job is one whose hold stays). Workers
import it from ``tests/`` (pytest's ``pythonpath``, inherited by spawned workers).
"""

import os
import time

from skerry.workload.builtins import md5

GATED = {"name": "gated", "version": "1", "inputs": [{"name": "input", "type": "file"}],
         "outputs": [{"name": "checksum", "type": "md5", "file_name": "{name}.md5"}],
         "parameters": {"holds": {"type": "str"}},
         "callable": "gated:md5_when_let"}


def md5_when_let(job) -> None:
    name = job.input("input").rsplit("/", 1)[-1]
    while os.path.exists(os.path.join(job.params["holds"], name)):
        time.sleep(0.01)
    md5(job)
