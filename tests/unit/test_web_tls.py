"""The console over HTTPS (the receiver's certificate options, or its own), and behind a trusted TLS proxy."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine.config import ConfigError, EngineConfig, load_config
from engine.dicom.tls import TlsError
from engine.testing.peers import make_test_pki
from engine.web.app import create_app
from engine.web.server import WebServer, tls_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def https_get(port: int, path: str, ca: Path) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                             context=ssl.create_default_context(cafile=str(ca)))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}
    finally:
        connection.close()


def test_https_with_the_receivers_certificate(pki: Path) -> None:
    config = EngineConfig(receiver={"tls_enabled": True, "tls_certificate": str(pki / "server.crt"),
                                    "tls_private_key": str(pki / "server.key")}, http={"tls_enabled": True})
    server = WebServer(create_app(CollectorRegistry(), lambda: []), "127.0.0.1", 0, tls=tls_context(config))
    server.start()
    try:
        status, headers = https_get(server.port, "/healthz", pki / "ca.crt")
        assert status == 200 and headers["strict-transport-security"] == "max-age=31536000"
        plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/healthz")
            plain.getresponse()
        plain.close()
    finally:
        server.stop()


def test_https_settings_are_checked_naming_the_keys(pki: Path) -> None:
    with pytest.raises(ConfigError, match="http.tls_enabled needs http.tls_certificate and http.tls_private_key"):
        load_config(None, {"SCANSTREAM_HTTP__TLS_ENABLED": "true"})
    own = EngineConfig(http={"tls_enabled": True, "tls_certificate": str(pki / "rogue.crt"),
                             "tls_private_key": str(pki / "server.key")})
    with pytest.raises(TlsError, match="http.tls_certificate / http.tls_private_key: not a matching"):
        tls_context(own)
    assert tls_context(EngineConfig()) is None


def test_forwarded_proto_is_believed_only_from_listed_proxies() -> None:
    for proxies, expect_hsts in (([], False), (["127.0.0.1"], True)):
        server = WebServer(create_app(CollectorRegistry(), lambda: []), "127.0.0.1", 0, forwarded_allow_ips=proxies)
        server.start()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/healthz", headers={"X-Forwarded-Proto": "https",
                                                            "X-Forwarded-For": "10.9.8.7"})
            headers = dict(connection.getresponse().getheaders())
            connection.close()
            assert ("strict-transport-security" in {key.lower() for key in headers}) is expect_hsts
        finally:
            server.stop()
