"""The STOW-RS client on its own, against a scripted HTTP(S) server on loopback: statuses, auth, mutual TLS."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from engine.config.entries import DestinationConfig
from engine.delivery.service import judge_statuses
from engine.delivery.stow import StowClient, StowError, instance_statuses
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.peers import make_test_pki
from engine.testing.ports import free_port


class ScriptedStow:
    """Answers each POST with the next (status, DICOM JSON body); keeps what it got."""

    def __init__(self, answers: list[tuple[int, dict | None]], tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append((self.path, dict(self.headers), body))
                status, answer = server.answers.pop(0) if server.answers else (200, None)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}/dicom-web"

    def __enter__(self) -> "ScriptedStow":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[Path]:
    return write_ct_series(generate_ct_phantom(5, slices=3, size=32, nodules=0), tmp_path_factory.mktemp("results"))


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _failed(uid: str, reason: int) -> dict:
    return {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]},
                                                 "00081197": {"vr": "US", "Value": [reason]}}]}}


def test_every_file_is_one_part_and_basic_auth_is_sent(results) -> None:
    with ScriptedStow([(200, {})]) as server:
        client = StowClient(DestinationConfig(name="web", kind="dicomweb", url=server.url, username="u",
                                              password="p"))
        statuses = client.store(results)
    assert [code for _, code in statuses] == [0, 0, 0]
    ((path, headers, body),) = server.requests
    assert path == "/dicom-web/studies"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    assert message.get_content_type() == "multipart/related" and message.get_param("type") == "application/dicom"
    parts = list(message.iter_parts())
    assert [part.get_payload(decode=True) for part in parts] == [p.read_bytes() for p in results]


def test_per_instance_failures_are_named_and_judged_like_c_store(results) -> None:
    refused, busy = _uid(results[1]), _uid(results[2])
    with ScriptedStow([(202, _failed(refused, 0xC122)), (202, _failed(busy, 0xA700))]) as server:
        client = StowClient(DestinationConfig(name="web", kind="dicomweb", url=server.url, bearer_token="tok"))
        first = judge_statuses(client.store(results))
        second = judge_statuses(client.store(results))
    assert first.verdict == "failed" and first.reason == f"{results[1].name} refused with status 0xC122"
    assert second.verdict == "retry" and f"{results[2].name}: status 0xA700" in second.reason
    assert server.requests[0][1]["Authorization"] == "Bearer tok"


def test_instances_an_answer_leaves_out_follow_its_http_status() -> None:
    assert instance_statuses({}, ["1", "2"], 200) == [0, 0]
    assert instance_statuses(_failed("2", 0xA700), ["1", "2"], 202) == [0, 0xA700]
    assert instance_statuses(_failed("2", 0xC000), ["1", "2"], 409) == [0x0110, 0xC000]
    warned = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1"]},
                                                   "00081196": {"vr": "US", "Value": [0xB000]}}]}}
    assert instance_statuses(warned, ["1"], 200) == [0xB000]


@pytest.mark.parametrize(("status", "transient"), [(400, False), (401, False), (415, False), (429, True),
                                                   (500, True), (503, True)])
def test_http_errors_fail_at_once_or_retry(results, status: int, transient: bool) -> None:
    with ScriptedStow([(status, None)]) as server:
        client = StowClient(DestinationConfig(name="web", kind="dicomweb", url=server.url))
        with pytest.raises(StowError) as error:
            client.store(results)
    assert error.value.transient is transient and f"HTTP {status}" in str(error.value)


def test_nobody_listening_is_transient(results) -> None:
    client = StowClient(DestinationConfig(name="web", kind="dicomweb", url=f"http://127.0.0.1:{free_port()}",
                                          timeout_s=5))
    with pytest.raises(StowError) as error:
        client.store(results)
    assert error.value.transient


def test_mutual_tls_presents_the_client_certificate(results, tmp_path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(pki / "server.crt", pki / "server.key")
    server_tls.load_verify_locations(pki / "ca.crt")
    server_tls.verify_mode = ssl.CERT_REQUIRED
    with ScriptedStow([], tls=server_tls) as server:
        settings = {"name": "web", "kind": "dicomweb", "url": server.url, "timeout_s": 5,
                    "tls_ca_certificates": str(pki / "ca.crt")}
        with_cert = StowClient(DestinationConfig(**settings, tls_certificate=str(pki / "client.crt"),
                                                 tls_private_key=str(pki / "client.key")))
        assert [code for _, code in with_cert.store(results)] == [0, 0, 0]
        without = StowClient(DestinationConfig(**settings))
        with pytest.raises(StowError):
            without.store(results)
    assert len(server.requests) == 1


def test_dicomweb_fields_are_checked() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs url"):
        DestinationConfig(name="web", kind="dicomweb")
    with pytest.raises(ValidationError, match="exclude each other"):
        DestinationConfig(name="web", kind="dicomweb", url="http://h", username="u", password="p",
                          bearer_token="t")
    with pytest.raises(ValidationError, match="needs ae_title, host and port"):
        DestinationConfig(name="pacs")
