"""skerry.adaptors: a user's storage as fsspec filesystems, and what is served over them.

- ``specs``, ``store``, ``config``: what storage a user has, kept per user, handed to a server;
- ``registry``, ``federation``, ``objectstore``: specs to filesystems, the ``skerry://``
  federation over them, S3 folders that behave like folders;
- ``davprovider``, ``listings``, ``folderwatch``, ``fastfiles``, ``propfind``, ``webdav``: the
  WebDAV application over the federation, the listings it keeps, its fast GET, PUT and PROPFIND;
- ``query``, ``staging``, ``webhooks``: the find index, copies between adaptors, their webhooks;
- ``remote``: ``skerry://`` from outside the platform, through the WebDAV endpoint;
- ``sshkeys``: SFTP keys set up from a password once.
"""

__all__: list[str] = []  # import from the modules
