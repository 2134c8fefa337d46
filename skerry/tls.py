"""HTTPS for ``skerry up --ssl-cert CERT --ssl-key KEY``: the checks before anything starts,
and what the users' servers trust.

JupyterHub's own settings do the serving (``JupyterHub.ssl_cert``/``ssl_key``: the proxy
listens with HTTPS only; the hub, the service and the users' servers stay on loopback HTTP
behind it). Rules:

- both files or neither; each must be a readable PEM file, and the key must be the
  certificate's (``ConfigError`` naming the file and what is wrong, before anything starts);
- the key is read by the proxy alone: its path goes to the hub, never its contents;
- a user's server reaches the platform at its public HTTPS URL, so it must trust the
  certificate even when no public CA signed it: its processes get ``SSL_CERT_FILE`` and
  ``REQUESTS_CA_BUNDLE`` naming a bundle of the usual public CAs (certifi's) and the
  platform's certificate (``trust_bundle``), readable by every account (a certificate is
  public).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_pair", "trust_bundle", "probe_context", "TRUST_VARIABLES"]

# what Python's ssl (urllib, aiohttp, httpx), OpenSSL's tools and requests read as the CAs to trust
TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def _pem(path: Path, option: str, holds: str, marker: bytes) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{option} {path}: {e.strerror}") from None
    if marker not in data:
        raise ConfigError(f"{option} {path} holds no {holds} in PEM form (no '{marker.decode()}' line)")


def check_pair(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """The absolute paths of the certificate and its key, or None for plain HTTP; ConfigError
    if only one is given, a file cannot be read, or the key is not the certificate's."""
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = ("--ssl-cert", "--ssl-key") if cert else ("--ssl-key", "--ssl-cert")
        raise ConfigError(f"{given} needs {missing} too: HTTPS takes a certificate and its private key")
    cert_path, key_path = Path(cert).resolve(), Path(key).resolve()
    _pem(cert_path, "--ssl-cert", "certificate", b"-----BEGIN CERTIFICATE-----")
    _pem(key_path, "--ssl-key", "private key", b"PRIVATE KEY-----")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:
        raise ConfigError(f"--ssl-key {key_path} is not the key of --ssl-cert {cert_path} "
                          f"(or one of them is damaged): {e.reason or e}") from None
    return cert_path, key_path


def trust_bundle(cert: str | Path) -> bytes:
    """The public CAs (certifi's bundle) followed by the platform's certificate (chain)."""
    import certifi

    return Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + Path(cert).read_bytes()


def probe_context() -> ssl.SSLContext:
    """For ``skerry up``'s own readiness probe of the proxy it started on this machine: it asks
    only whether the proxy answers, so the certificate is not checked (its name may be a host
    name the machine does not resolve to itself)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
