"""DICOM TLS contexts (PS3.15 Annex B, BCP 195 profile): the SCP's server side and the destinations' client side.

Both sides require TLS 1.2 or later; the server may require a client certificate
signed by the configured CA (mutual TLS, how DICOM peers usually authenticate).
Bad files fail at start-up with the key that named them.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsError(Exception):
    """A certificate, key or CA file is missing or unusable; the message names the setting."""


def _existing(path: str, key: str) -> str:
    if not path:
        raise TlsError(f"{key} is required for TLS")
    if not Path(path).expanduser().is_file():
        raise TlsError(f"{key}: {path} does not exist")
    return str(Path(path).expanduser())


def _load_chain(context: ssl.SSLContext, certificate: str, private_key: str, prefix: str) -> None:
    certfile = _existing(certificate, f"{prefix}tls_certificate")
    keyfile = _existing(private_key, f"{prefix}tls_private_key")
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as error:
        raise TlsError(f"{prefix}tls_certificate / {prefix}tls_private_key: not a matching PEM certificate and "
                       f"key ({error.reason or error})") from None


def _load_ca(context: ssl.SSLContext, ca_certificates: str, key: str) -> None:
    try:
        context.load_verify_locations(cafile=_existing(ca_certificates, key))
    except ssl.SSLError as error:
        raise TlsError(f"{key}: not a PEM CA certificate bundle ({error.reason or error})") from None


def server_context(certificate: str, private_key: str, ca_certificates: str = "",
                   require_client_certificate: bool = False, prefix: str = "receiver.") -> ssl.SSLContext:
    """The SCP's context: its certificate, and the CA that client certificates must chain to (when required).

    ``prefix`` is the config section errors name (the console's HTTPS uses ``http.`` for its own files).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certificate, private_key, prefix)
    if require_client_certificate:
        _load_ca(context, ca_certificates, "receiver.tls_ca_certificates")
        context.verify_mode = ssl.CERT_REQUIRED
    elif ca_certificates:
        _load_ca(context, ca_certificates, "receiver.tls_ca_certificates")
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(ca_certificates: str = "", certificate: str = "", private_key: str = "",
                   check_hostname: bool = True, prefix: str = "destinations[].") -> ssl.SSLContext:
    """A destination's context: verify the PACS against ``ca_certificates`` (system CAs when empty), optionally
    present a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_certificates:
        _load_ca(context, ca_certificates, f"{prefix}tls_ca_certificates")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate or private_key:
        _load_chain(context, certificate, private_key, prefix)
    return context
