"""The public names of each package, pinned: a name added or lost is a decision, made here.

Each package's ``__all__`` is exactly what it offers, and it offers nothing else public at its
top (its submodules aside, which are imported by their own names).
"""

import importlib
import inspect

import pytest

PUBLIC = {
    "skerry": ["__version__", "Pipeline", "Builder", "Monitor", "session", "fs", "client", "api", "ready"],
    "skerry.workload": [],
    "skerry.workload.catalog": [
        "Catalog", "DatasetInfo", "FileInfo", "FilePage", "ConsistencyReport", "Mismatch", "CatalogError",
        "DatasetExists", "UnknownDataset", "AmbiguousDataset", "DatasetStateError", "BadMetadata", "BadFileEntry",
        "UnknownJob", "JobStateError", "ModuleExists", "UnknownModule", "DATASET_MOVES", "PAGE_MAX", "check_uri",
        "insert_jobs", "plan_jobs", "make_engine"],
    "skerry.hub": [],
    "skerry.adaptors": [],
    "skerry.extensions": ["CONFIG_DIR"],
    "skerry.kernels": ["JUPYTER_PATH_DIR", "KERNELS"],
}
# attributes of a package that are not its API: imported standard modules, typing aliases
NOT_API = {"annotations"}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_package_offers_exactly_its_pinned_names(name):
    package = importlib.import_module(name)
    assert sorted(package.__all__) == sorted(PUBLIC[name])
    offered = {attr for attr, value in vars(package).items()
               if not attr.startswith("_") and not inspect.ismodule(value) and attr not in NOT_API}
    assert offered <= set(package.__all__), offered - set(package.__all__)


def test_the_lazy_names_of_skerry_load_the_components_that_provide_them():
    import skerry

    for name, module in [("Pipeline", "skerry.extensions.pipeline"), ("Builder", "skerry.extensions.builder"),
                         ("Monitor", "skerry.extensions.monitor")]:
        value = getattr(skerry, name)
        assert inspect.isclass(value) and value.__module__ == module
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        skerry.Nothing  # noqa: B018 (the lookup is the test)
