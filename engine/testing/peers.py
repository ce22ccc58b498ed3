"""Real DICOM peers for integration tests and benchmarks: Orthanc on free loopback ports, a test PKI.

``OrthancPeer`` starts the ``Orthanc`` binary (Debian package ``orthanc``) with
its own configuration and storage folder, waits until its REST API answers, and
offers the few REST calls the tests need: upload files, push a study to a
modality by C-STORE, and list what it holds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.testing.ports import free_port

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def make_test_pki(folder: Path) -> Path:
    """A throw-away PKI with the ``openssl`` command: PEM files in ``folder``, which it returns.

    ``ca.crt``/``ca.key``; ``server.crt``/``server.key`` (localhost, 127.0.0.1) and
    ``client.crt``/``client.key`` signed by the CA; ``rogue.crt``/``rogue.key``
    self-signed. For TLS tests only: keys are unencrypted and valid two days.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=ScanStream Test CA")
    for name, subject, extra in (("server", "localhost", ["-extfile", "san.ext"]), ("client", "modality", [])):
        _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={subject}")
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extra)
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.crt",
             "-days", "2", "-subj", "/CN=rogue")
    return folder


class PeerError(RuntimeError):
    """The peer could not start or answered a request with an error."""


def orthanc_available() -> bool:
    """True when the Orthanc binary is on PATH."""
    return shutil.which(ORTHANC_BINARY) is not None


@dataclass
class OrthancPeer:
    """One Orthanc server with its data under ``folder``; ``modalities`` maps a name to (AE title, host, port)."""

    folder: Path
    ae_title: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicom_port: int = 0  # 0: a free port
    dicomweb: bool = False  # load the DICOMweb plugin: STOW-RS, QIDO-RS, WADO-RS under /dicom-web/
    users: dict[str, str] = field(default_factory=dict)  # HTTP basic auth users; empty: no authentication
    dicomweb_servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # DicomWeb.Servers (STOW targets)

    def __post_init__(self) -> None:
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.folder / "orthanc.log"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration written for this run (loopback only; basic auth when ``users`` are given)."""
        return {
            "Name": "scanstream-test-pacs", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "HttpBindAddress": "127.0.0.1", "DicomBindAddress": "127.0.0.1",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": dict(self.users), "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "StableAge": 3600,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/", "Servers": dict(self.dicomweb_servers)},
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "DicomScuTimeout": 30,
        }

    def start(self, timeout: float = 60.0) -> "OrthancPeer":
        """Start Orthanc and wait for its REST API (raises :class:`PeerError` with the log tail)."""
        binary = shutil.which(ORTHANC_BINARY)
        if binary is None:
            raise PeerError("the Orthanc binary is not installed (apt-get install orthanc)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system")
                return self
            except PeerError:
                time.sleep(0.2)
        self.stop()
        raise PeerError(f"Orthanc did not answer in {timeout} s:\n{self.log_tail()}")

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base URL (with ``dicomweb``)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def log_tail(self, lines: int = 30) -> str:
        """The end of Orthanc's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout: float = 60.0) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.users:
            user, password = next(iter(self.users.items()))
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            raise PeerError(f"Orthanc {method} {path}: HTTP {error.code} {error.read()[:300]!r}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            raise PeerError(f"Orthanc {method} {path}: {error}") from None
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        """POST JSON to a REST resource."""
        return self._request("POST", path, json.dumps(payload).encode())

    def upload(self, files: list[Path]) -> list[str]:
        """Store files through the REST API; returns their Orthanc instance ids."""
        return [self._request("POST", "/instances", path.read_bytes(), "application/dicom")["ID"] for path in files]

    def push_study(self, modality: str, study_uid: str) -> None:
        """C-STORE one study to a configured modality (Orthanc as the modality sending)."""
        self.post(f"/modalities/{modality}/store", {"Resources": [self.study_id(study_uid)], "Synchronous": True})

    def stow_study(self, server: str, study_uid: str) -> Any:
        """Send one study by STOW-RS to a configured DICOMweb server (Orthanc as the STOW client)."""
        return self.post(f"/dicom-web/servers/{server}/stow", {"Resources": [self.study_id(study_uid)],
                                                               "Synchronous": True})

    def study_id(self, study_uid: str) -> str:
        """Orthanc's id of the study with this Study Instance UID (PeerError when absent)."""
        found = self._request("POST", "/tools/lookup", study_uid.encode(), "text/plain")
        for item in found or []:
            if item.get("Type") == "Study":
                return str(item["ID"])
        raise PeerError("Orthanc holds no study with that Study Instance UID")

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study with its main tags (SOP class and instance UIDs, series UID)."""
        instances = []
        for series in self.get(f"/studies/{self.study_id(study_uid)}/series"):
            for instance_id in series["Instances"]:
                tags = self.get(f"/instances/{instance_id}/simplified-tags")
                instances.append({"id": instance_id, "series_uid": series["MainDicomTags"]["SeriesInstanceUID"],
                                  **tags})
        return instances

    def instance_count(self) -> int:
        """How many instances Orthanc holds in all."""
        return int(self.get("/statistics")["CountInstances"])

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate Orthanc (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "OrthancPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
