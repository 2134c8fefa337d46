"""The hub's configuration in the Helm chart: ``skerry up``'s, with the chart's Kubernetes parts.

The chart's ConfigMap holds ``chart.json`` (its values that are not secret) and a
``jupyterhub_config.py`` of two lines::

    from skerry.hub.plugins.kube.hubconfig import configure
    configure(c, "/etc/skerry/chart.json")

Rules:
- everything ``settings.configure`` sets stays (authenticator, pages, roles, the data dir
  on the chart's shared volume), except what differs in a cluster:
- users' servers are pods (``SkerryKubeSpawner``, the API server in-cluster) in the
  release's namespace, of ``userImage``, uid ``users.uidBase`` + the hub user id, homes of
  ``users.home``, the WebDAV sidecar of ``users.sidecar``;
- the hub listens on its pod's every address, port 8081; pods and the chart's Deployments
  reach it at the hub Service (``hub_connect_url``);
- the proxy is the chart's CHP Deployment: the hub starts none, and speaks to its API
  Service with ``CONFIGPROXY_AUTH_TOKEN`` (the chart's Secret);
- the skerry service and the workload scheduler are Deployments of their own: hub services
  with a token each (``SKERRY_SERVICE_TOKEN``, ``SKERRY_WORKLOAD_TOKEN``) and, for the
  service, the URL of its Service; the hub starts neither;
- ``users.profiles`` are the starting profiles: each one the profile store does not hold
  yet is created at the hub's start (by "helm"); one the store holds (an admin may have
  changed or disabled it in the hub) is left as it is: profile changes never need
  ``helm upgrade``, and a value changed later seeds nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from skerry import config
from skerry.errors import ConfigError

__all__ = ["configure", "HUB_PORT", "SERVICE_PORT", "PROXY_API_PORT"]

HUB_PORT, SERVICE_PORT, PROXY_API_PORT = 8081, 8002, 8001
HELM = "helm"  # who the profile store's audit log names for the chart's profiles


def configure(c, chart_file: str | os.PathLike) -> None:
    """Configure JupyterHub's ``c`` from ``chart_file`` and the pod's environment (module docstring)."""
    from skerry.hub.plugins.settings import SCHEDULER_NAME, SERVICE_NAME
    from skerry.hub.plugins.settings import configure as configure_platform

    chart = json.loads(Path(chart_file).read_text())
    prefix, namespace = chart["prefix"], chart["namespace"]
    for setting, value in ((config.PUBLIC_URL, chart["publicUrl"]), (config.KUBERNETES, "in-cluster"),
                           (config.KUBE_NAMESPACE, namespace), (config.USER_IMAGE, chart["userImage"]),
                           (config.PROXY, "chp"), (config.PROXY_COMMAND, "configurable-http-proxy")):
        setting.set(value)  # what settings.configure and the spawner read
    configure_platform(c)

    c.JupyterHub.hub_ip = "0.0.0.0"
    c.JupyterHub.hub_port = HUB_PORT
    c.JupyterHub.hub_connect_url = f"http://{prefix}-hub:{HUB_PORT}"
    c.JupyterHub.cleanup_servers = False  # users' pods outlive a hub restart (an upgrade)
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://{prefix}-proxy-api:{PROXY_API_PORT}"
    c.ConfigurableHTTPProxy.auth_token = config.PROXY_TOKEN.require()

    users = chart["users"]
    c.SkerryKubeSpawner.namespace = namespace
    c.SkerryKubeSpawner.release = chart["release"]
    c.SkerryKubeSpawner.uid_base = users["uidBase"]
    c.SkerryKubeSpawner.home_size = users["home"]["size"]
    c.SkerryKubeSpawner.home_storage_class = users["home"]["storageClass"]
    c.SkerryKubeSpawner.sidecar = users["sidecar"]

    tokens = {SERVICE_NAME: config.SERVICE_TOKEN.require(), SCHEDULER_NAME: config.WORKLOAD_TOKEN.require()}
    services = []
    for service in c.JupyterHub.services:
        service = dict(service)
        if service["name"] in tokens:
            for started_here in ("command", "environment", "cwd"):
                service.pop(started_here, None)
            service["api_token"] = tokens[service["name"]]
            if service["name"] == SERVICE_NAME:
                service["url"] = f"http://{prefix}-service:{SERVICE_PORT}"
        services.append(service)
    c.JupyterHub.services = services
    c.Authenticator.admin_users = set(c.Authenticator.admin_users) | set(chart["adminUsers"])
    seed_profiles(config.DATA_DIR.require(), users["profiles"])


def seed_profiles(data_dir: str | os.PathLike, profiles: list[dict]) -> list[str]:
    """Create each of ``profiles`` the store of ``data_dir`` does not hold (module docstring);
    the slugs created. A bad profile is a ``ConfigError`` naming it: the hub does not start."""
    from skerry.hub.stores.profiles import NoSuchProfile, ProfileError, ProfileStore

    store = ProfileStore.for_data_dir(data_dir)
    created = []
    for profile in profiles:
        try:
            store.get(profile["slug"])
            continue
        except NoSuchProfile:
            pass
        try:
            store.create(profile, who=HELM)
        except ProfileError as e:
            raise ConfigError(f"users.profiles: profile {profile.get('slug')!r}: {e}") from None
        created.append(profile["slug"])
    return created

