"""skerry.adaptors: storage adaptors and the protocols served over them.

- ``webdav``: the WebDAV application (wsgidav) over a user's storage
"""
