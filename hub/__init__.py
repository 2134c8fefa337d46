"""skerry.hub: everything that runs inside or beside JupyterHub, by the process that runs it.

- ``plugins``: in the JupyterHub process: its configuration (``settings``), the spawner, the
  proxy, the authenticator, the spawn and profile forms, the admin pages, the start queue;
- ``service``: the skerry service process at ``/services/skerry/``: the REST API (``app``)
  with one module of routes per resource, the idle culler and the metrics;
- ``userserver``: in each user's micro-infrastructure: the process that holds it together
  (``launcher``), the WebDAV endpoint (``webdav``) and its hub-token and JWT authentication;
- ``stores``: what both the hub and the service read and write: profiles, quotas, usage.

``plugins`` and ``service`` use ``stores``; ``userserver`` uses neither: it gets what it
needs at start. No code runs between the processes except through ``stores``.
"""

__all__: list[str] = []  # import from the modules
