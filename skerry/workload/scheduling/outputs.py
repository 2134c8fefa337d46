"""A job's outputs: looked for on storage after a lost attempt, checked before a success registers them.

    found = outputs_in_place(catalog, info, job_id)   # [{"uri", "size", "checksum"}, ...] or None
    refuse_taken(s, {dataset_id: [move, ...]})        # in the transaction that registers them

Rules:
- a lost attempt's outputs count only if all are in place: only modules whose outputs are
  all single pins with a ``file_name`` can be checked (their names are known in advance);
  a job of any other module is run again; they are looked for with the owner's adaptors
  (the storage the job saw);
- each output file is registered once: a success that names an output URI its dataset
  already has (another job wrote that name), or one URI twice, becomes ``failed``
  (``duplicate_output``); one whose output dataset is no longer ``OPEN`` becomes
  ``failed`` (``dataset_closed``); either registers nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from ..bulk import chunks
from ..models import Dataset, File
from .tasks import TaskInfo, by_pin, job_inputs

if TYPE_CHECKING:
    from .writes import Move

__all__ = ["outputs_in_place", "refuse_taken"]


def outputs_in_place(catalog, info: TaskInfo, job_id: int) -> list[dict] | None:
    """The complete outputs of the job if they are all in place, else None (module docstring)."""
    from fsspec.core import url_to_fs

    from ..executors import JobContext, file_checksum
    from ..modules import load_module
    from ..owners import adaptors_of

    module = load_module(info.module)
    if not module.outputs or any(p.kind != "single" or not p.file_name for p in module.outputs):
        return None
    with catalog.session() as s:
        inputs = by_pin(info, job_inputs(s, [job_id]).get(job_id, []))
    ctx = JobContext(module, inputs, info.output, module.resolve_params(info.params), str(job_id))
    found = []
    with adaptors_of(info.adaptors):  # the owner's storage, as the job saw it
        for pin in module.outputs:
            url = f"{info.output.rstrip('/')}/{ctx.output_name(pin.name)}"
            fs, path = url_to_fs(url)
            if not fs.isfile(path):
                return None
            found.append({"uri": url, "size": fs.size(path), "checksum": file_checksum(url)})
    return found


def refuse_taken(s, datasets: dict[int, list[Move]]) -> None:
    """Turn into failures the successes of ``datasets`` (dataset -> its moves) whose outputs
    may not be registered (module docstring)."""
    for dataset_id, jobs in datasets.items():
        uris = [o["uri"] for w in jobs for o in w.outputs]
        taken = set()
        for chunk in chunks(uris):
            taken.update(s.execute(select(File.uri).where(File.dataset_id == dataset_id,
                                                          File.uri.in_(chunk))).scalars())
        state = s.execute(select(Dataset.state).where(Dataset.id == dataset_id)).scalar_one()
        for w in jobs:
            mine = [o["uri"] for o in w.outputs]
            if state != "OPEN" or taken & set(mine) or len(set(mine)) != len(mine):
                w.state, w.outputs = "failed", []
                w.error_class = "duplicate_output" if state == "OPEN" else "dataset_closed"
                w.error = (f"output dataset is {state}, not OPEN" if state != "OPEN"
                           else "an output file of this job is already registered by another job")
            taken.update(mine)
