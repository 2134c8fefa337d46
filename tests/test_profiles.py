"""Profiles without a platform: the schema refuses every malformed profile naming the field,
options resolve in their override order, ``allowed`` follows users and groups, and the store
(a real SQLite file) versions, duplicates, disables and audits every write in one transaction."""

import copy

import pytest

from skerry.hub.stores.profiles import (NoSuchProfile, ProfileConflict, ProfileError, ProfileStore, allowed,
                                       render_adaptor, resolve, validate)

CPU = {
    "slug": "cpu-small", "display_name": "Small CPU", "description": "2 cores, 4 GiB",
    "resources": {"cpu_limit": 2, "cpu_guarantee": 0.5, "mem_limit": "4Gi", "mem_guarantee": "1Gi", "gpus": 0},
    "adaptors": [{"name": "scratch", "type": "local", "path": "/scratch/{username}"}],
    "dask": {"max_workers": 4, "worker_threads": 1, "worker_memory": "1Gi"},
    "idle_timeout_s": 1800,
    "access": {"users": ["alice"], "groups": ["physics"]},
    "options": {
        "image": {"display_name": "Image",
                  "choices": {"base": {"display_name": "Base", "default": True},
                              "torch": {"display_name": "PyTorch", "overrides": {
                                  "image": "skerry/torch:1", "resources": {"mem_limit": "8Gi"}}}},
                  "free_value": {"enabled": True, "display_name": "Other image",
                                 "pattern": r"skerry/[a-z-]+:[0-9.]+", "sets": "image"}},
    },
}


def with_(path: str, value, base=CPU) -> dict:
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[leaf]
    elif isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return data


def test_a_valid_profile_is_normalised():
    p = validate(CPU)
    assert p.resources.mem_limit == 4 * 1024**3 and p.resources.gpus == 0
    assert p.dask.worker_memory == 1024**3 and p.options["image"].free_value.enabled
    assert validate(p.model_dump(mode="json")) == p  # what the store keeps validates again


MALFORMED = [
    ("unknown top-level key", with_("colour", "blue"), "colour: unknown field"),
    ("unknown nested key", with_("resources.cpus", 2), "resources.cpus: unknown field"),
    ("gpus left out", with_("resources.gpus", ...), "resources.gpus: required"),
    ("negative gpus", with_("resources.gpus", -1), "resources.gpus:"),
    ("negative cpu limit", with_("resources.cpu_limit", -2), "resources.cpu_limit:"),
    ("negative memory", with_("resources.mem_limit", -1), "resources.mem_limit: memory cannot be negative"),
    ("not a size", with_("resources.mem_limit", "4 lots"), "resources.mem_limit: '4 lots' is not a size"),
    ("guarantee above limit", with_("resources.mem_guarantee", "8Gi"), "resources.mem_guarantee:"),
    ("cpu guarantee above limit", with_("resources.cpu_guarantee", 3), "resources.cpu_guarantee:"),
    ("negative dask workers", with_("dask.max_workers", -1), "dask.max_workers:"),
    ("negative idle timeout", with_("idle_timeout_s", -5), "idle_timeout_s:"),
    ("bad slug", with_("slug", "Has Spaces"), "slug:"),
    ("unknown adaptor type", with_("adaptors.0", {"name": "x", "type": "ftp"}), "adaptors[0]: adaptor spec: 'type'"),
    ("bad adaptor field", with_("adaptors.0", {"name": "x", "type": "local", "path": "/x", "host": "h"}),
     "adaptors[0]: adaptor spec field 'host'"),
    ("unknown placeholder", with_("adaptors.0.path", "/scratch/{user}"), "adaptors[0]: unknown placeholder {user}"),
    ("bad pattern", with_("options.image.free_value.pattern", "skerry/(["),
     "options.image.free_value.pattern: not a regular expression"),
    ("free value sets an unknown field", with_("options.image.free_value.sets", "slug"),
     "options.image.free_value.sets:"),
    ("override of a fixed key", with_("options.image.choices.torch.overrides", {"access": {"everyone": True}}),
     "options.image.choices.torch.overrides: 'access' cannot be overridden"),
    ("override makes it invalid", with_("options.image.choices.torch.overrides", {"resources": {"gpus": -1}}),
     "options.image.choices.torch.overrides.resources.gpus:"),
    ("override with an unknown key", with_("options.image.choices.torch.overrides", {"dask": {"workers": 2}}),
     "options.image.choices.torch.overrides.dask.workers: unknown field"),
    ("two defaults", with_("options.image.choices.torch.default", True), "options.image.choices: at most one"),
]


@pytest.mark.parametrize("data, start", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_every_malformed_profile_is_refused_naming_the_field(data, start):
    with pytest.raises(ProfileError) as e:
        validate(data)
    assert e.value.message.startswith(start) and e.value.message.endswith("."), e.value.message


def test_override_order_profile_then_choice_then_free_value():
    p = validate(CPU)
    default = resolve(p)
    assert default.image is None and default.resources.mem_limit == 4 * 1024**3
    torch = resolve(p, {"image": "torch"})
    assert torch.image == "skerry/torch:1" and torch.resources.mem_limit == 8 * 1024**3
    assert torch.resources.cpu_limit == 2  # merged key by key: the rest of resources stays
    typed = resolve(p, {"image": "torch"}, {"image": "skerry/custom:2.1"})
    assert typed.image == "skerry/custom:2.1" and typed.resources.mem_limit == 8 * 1024**3
    with pytest.raises(ProfileError, match=r"^options.image.free_value: the value does not match"):
        resolve(p, free={"image": "evil/image:latest"})
    with pytest.raises(ProfileError, match=r"^options.image: no choice 'nope'"):
        resolve(p, {"image": "nope"})
    with pytest.raises(ProfileError, match=r"^options.gpu: this profile has no such option"):
        resolve(p, {"gpu": "a100"})


def test_allowed_by_user_group_or_everyone():
    p = validate(CPU)
    assert allowed(p, "alice", [])
    assert allowed(p, "carol", ["physics"])
    assert not allowed(p, "bob", ["chemistry"])
    assert allowed(validate(with_("access", {"everyone": True})), "bob", [])
    assert not allowed(validate(with_("access", {})), "alice", [])  # nobody unless named
    assert allowed(p.model_dump(mode="json"), "carol", ["physics"])  # stored dicts too


def test_adaptor_templates_render_per_user():
    assert render_adaptor(CPU["adaptors"][0], "bob")["path"] == "/scratch/bob"


@pytest.fixture
def store(tmp_path):
    s = ProfileStore.for_data_dir(tmp_path)
    yield s
    s.dispose()


def test_store_writes_versions_and_audits(store):
    created = store.create(CPU, "root")
    assert created["version"] == 1 and not created["disabled"] and created["updated_by"] == "root"
    with pytest.raises(ProfileConflict):
        store.create(CPU, "root")

    changed = store.update("cpu-small", {**created, "idle_timeout_s": 600}, "admin2", version=1)
    assert changed["version"] == 2 and changed["idle_timeout_s"] == 600 and changed["updated_by"] == "admin2"
    with pytest.raises(ProfileConflict, match="version 2, not 1"):
        store.update("cpu-small", {**created, "idle_timeout_s": 60}, "admin2", version=1)
    with pytest.raises(ProfileError, match="^slug:"):
        store.update("cpu-small", with_("slug", "other"), "admin2")

    copy_ = store.duplicate("cpu-small", "cpu-copy", "root")
    assert copy_["version"] == 1 and copy_["idle_timeout_s"] == 600
    assert store.set_disabled("cpu-small", True, "root")["disabled"]
    assert [p["slug"] for p in store.list_profiles()] == ["cpu-copy", "cpu-small"]
    assert [p["slug"] for p in store.list_profiles("alice", [])] == ["cpu-copy"]  # disabled: hidden
    assert store.list_profiles("bob", ["chemistry"]) == []
    with pytest.raises(NoSuchProfile):
        store.get("nope")

    audit = store.audit("cpu-small")
    assert [(a["who"], a["action"]) for a in audit] == [("root", "create"), ("admin2", "update"), ("root", "disable")]
    assert audit[1]["changes"] == {"idle_timeout_s": {"old": 1800, "new": 600}}
    assert audit[2]["changes"] == {"disabled": {"old": False, "new": True}}
    assert set(audit[0]["changes"]) >= {"slug", "resources", "access"} and audit[0]["at"] <= audit[2]["at"]
    assert store.audit("cpu-copy")[0]["action"] == "create"


def test_a_refused_write_saves_nothing(store):
    store.create(CPU, "root")
    before = store.counts()
    for _, data, _ in MALFORMED:
        fresh = with_("slug", "new", data) if data["slug"] == "cpu-small" else data
        with pytest.raises(ProfileError):
            store.create(fresh, "root")
        with pytest.raises(ProfileError):
            store.update("cpu-small", data, "root")
    assert store.counts() == before == (1, 1)
    assert store.get("cpu-small")["version"] == 1


def test_the_store_survives_reopening(tmp_path):
    s = ProfileStore.for_data_dir(tmp_path)
    s.create(CPU, "root")
    s.dispose()
    again = ProfileStore.for_data_dir(tmp_path)
    assert again.profile("cpu-small") == validate(CPU) and len(again.audit()) == 1
    again.dispose()


def test_twenty_spawns_opening_a_new_store_at_once_all_read_it(tmp_path):
    """Twenty spawns at once on a fresh platform each open the profile store (a new file): each
    reads it; none fails with SQLite's "database is locked" (it did, one in three tries)."""
    import threading

    from skerry.hub.stores.quotas import QuotaStore

    failures = []

    def open_and_read(kind):
        try:
            store = kind.for_data_dir(tmp_path / kind.__name__)
            if kind is ProfileStore:
                assert store.list_profiles() == []
            store.dispose()
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            failures.append(repr(e))

    threads = [threading.Thread(target=open_and_read, args=(kind,)) for kind in (ProfileStore, QuotaStore)
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
