"""skerry.hub: everything that runs inside or beside JupyterHub.

- ``settings``: the JupyterHub configuration of ``skerry up``
- ``spawner``: ``SkerrySpawner``, a micro-infrastructure per user server
- ``microinfra``: the process that holds one micro-infrastructure together
- ``proxy``: ``SkerryProxy``, which also routes ``/dav/<name>/``
- ``davserver``, ``davauth``: the WebDAV endpoint process and its hub-token authentication
- ``auth``: ``SkerryAuthenticator`` (NativeAuthenticator plus a built-in admin)
- ``service``: the hub service at ``/services/skerry/``
"""
