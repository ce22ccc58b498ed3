"""DICOM TLS against a real engine and DCMTK's storescu: who gets in, who does not, and the server stays up.

A throw-away PKI (openssl): a CA, the SCP's certificate, a modality's client
certificate signed by the CA, and a self-signed rogue certificate. The engine
listens plain and TLS (mutual: client certificates required).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.testing.peers import make_test_pki
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.ports import free_port
from engine.testing import EngineProcess, storescu

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="openssl is not installed; `make test` installs it")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _stored(engine: EngineProcess) -> int:
    ledger = engine.ledger()
    try:
        return ledger.status_counts()["instances"]
    finally:
        ledger.close()


def test_tls_lets_certified_modalities_in_and_nobody_else(tmp_path: Path, pki: Path, require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(7007, nodules=0, slices=2, size=32), tmp_path / "study")
    tls_port = free_port()
    receiver = {"tls_enabled": True, "tls_port": tls_port, "tls_certificate": str(pki / "server.crt"),
                "tls_private_key": str(pki / "server.key"), "tls_ca_certificates": str(pki / "ca.crt"),
                "tls_require_client_certificate": True}
    with EngineProcess(tmp_path / "data", workers=0, extra={"receiver": receiver}) as engine:
        certified = ("+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"))
        sent = storescu(files, tls_port, extra_args=certified)
        assert sent.returncode == 0, sent.stderr
        assert _stored(engine) == len(files)

        more = write_ct_series(generate_ct_phantom(7008, nodules=0, slices=2, size=32), tmp_path / "more")
        attempts = {
            "TLS client on the plain port": storescu(more, engine.port, extra_args=certified),
            "plain client on the TLS port": storescu(more, tls_port),
            "TLS client without a certificate": storescu(more, tls_port, extra_args=("+tla", "+cf",
                                                                                    str(pki / "ca.crt"))),
            "client certificate from another CA": storescu(more, tls_port, extra_args=(
                "+tls", str(pki / "rogue.key"), str(pki / "rogue.crt"), "+cf", str(pki / "ca.crt"))),
        }
        for what, result in attempts.items():
            assert result.returncode != 0, f"{what} was let in"
        assert _stored(engine) == len(files), "an instance came in over a refused connection"
        assert engine.process.poll() is None and engine.http_status("/readyz") == 200
        again = storescu(more, tls_port, extra_args=certified)
        assert again.returncode == 0, again.stderr
        assert _stored(engine) == len(files) + len(more)
        plain = storescu(more[:1], engine.port)
        assert plain.returncode == 0, "the plain port stopped working"


def test_tls_only_and_bad_tls_settings_are_named(tmp_path: Path, pki: Path) -> None:
    from engine.config import ConfigError, load_config
    from engine.dicom.tls import TlsError

    with pytest.raises(ConfigError, match="tls_enabled needs receiver.tls_certificate"):
        load_config(environ={"SCANSTREAM_RECEIVER__TLS_ENABLED": "true"})
    with pytest.raises(ConfigError, match="plain_enabled = false needs receiver.tls_enabled"):
        load_config(environ={"SCANSTREAM_RECEIVER__PLAIN_ENABLED": "false"})
    config = load_config(environ={"SCANSTREAM_RECEIVER__TLS_ENABLED": "true",
                                  "SCANSTREAM_RECEIVER__TLS_CERTIFICATE": str(pki / "server.crt"),
                                  "SCANSTREAM_RECEIVER__TLS_PRIVATE_KEY": str(pki / "client.key")})
    with pytest.raises(TlsError, match="receiver.tls_certificate / receiver.tls_private_key"):
        config.receiver.tls_context()
    missing = load_config(environ={"SCANSTREAM_RECEIVER__TLS_ENABLED": "true",
                                   "SCANSTREAM_RECEIVER__TLS_CERTIFICATE": str(tmp_path / "nope.crt"),
                                   "SCANSTREAM_RECEIVER__TLS_PRIVATE_KEY": str(pki / "server.key")})
    with pytest.raises(TlsError, match="receiver.tls_certificate: .*does not exist"):
        missing.receiver.tls_context()
