"""The catalog's errors: bad input, each case a class with its ``code``.

::

    SkerryError
     └── BadRequest (400)
          └── CatalogError          bad input for the catalog (``code`` names the case)
               ├── BadMetadata, BadFileEntry (a URI, size or checksum; a duplicate),
               │   UnknownModule (a spec names a module the catalog does not have)
               ├── also NotFound (404): UnknownDataset, UnknownJob
               └── also Conflict (409): DatasetExists, AmbiguousDataset, DatasetStateError,
                                        JobStateError, ModuleExists

Rules:
- every error the catalog raises for its caller's input is a ``CatalogError``, raised
  with a sentence naming what is wrong;
- ``skerry.errors`` draws the kinds; each error's ``status`` is its kind's (a class takes
  a second kind, ``NotFound`` or ``Conflict``, only for its status).
"""

from ...errors import BadRequest, Conflict, NotFound

__all__ = [
    "CatalogError", "DatasetExists", "UnknownDataset", "AmbiguousDataset", "DatasetStateError", "BadMetadata",
    "BadFileEntry", "UnknownJob", "JobStateError", "ModuleExists", "UnknownModule",
]


class CatalogError(BadRequest):
    code = "bad_catalog_request"


class DatasetExists(Conflict, CatalogError):
    code = "dataset_exists"


class UnknownDataset(NotFound, CatalogError):
    code = "unknown_dataset"


class AmbiguousDataset(Conflict, CatalogError):
    code = "ambiguous_dataset"


class DatasetStateError(Conflict, CatalogError):
    code = "dataset_state"


class BadMetadata(CatalogError):
    code = "bad_metadata"


class BadFileEntry(CatalogError):
    code = "bad_file"


class UnknownJob(NotFound, CatalogError):
    code = "unknown_job"


class JobStateError(Conflict, CatalogError):
    code = "job_state"


class ModuleExists(Conflict, CatalogError):
    code = "module_exists"


class UnknownModule(CatalogError):
    code = "unknown_module"
