"""The configuration's sections: one typed, validated table per component.

Components get the section they need passed in; nothing reads a global. How the
sections are filled (file, environment, command line) is :mod:`engine.config.loading`.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.broker.security import CurveClient, CurveServer
from engine.config.entries import DestinationConfig, ModelEntryConfig, NotificationConfig, RoutingConfig

ENV_PREFIX = "SCANSTREAM_"
DEFAULT_CONFIG_FILE = "scanstream.toml"


class ConfigError(Exception):
    """Configuration is invalid; the message names each bad key and the expected form."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiverConfig(_Section):
    """The DICOM SCP: who may connect and what it accepts."""

    ae_title: str = Field("SCANSTREAM", min_length=1, max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    max_associations: int = Field(16, ge=1)
    unhealthy_exit_s: float = Field(30.0, gt=0, description="a part (broker, delivery or assembler thread, a "
                                                            "writable ledger) failing this long makes the process "
                                                            "exit non-zero, for its supervisor to restart it")
    allowed_calling_aets: list[str] = Field(default_factory=list, description="AE titles allowed to connect, each "
                                            "optionally bound to a host address: CT1 or CT1@10.0.0.5; empty = any")
    max_instance_bytes: int = Field(2**31 - 1, ge=1024)
    max_study_bytes: int = Field(0, ge=0, description="bytes one study may hold; an instance over it gets 0xA700; "
                                                      "0 = no cap")
    max_pdu_bytes: int = Field(4 * 1024 * 1024, ge=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    duplicate_policy: Literal["keep_first", "replace"] = "keep_first"
    tls_enabled: bool = Field(False, description="also listen for DICOM TLS on tls_port")
    tls_port: int = Field(2762, ge=0, le=65535)
    tls_certificate: str = Field("", description="PEM certificate (chain) of the SCP")
    tls_private_key: str = Field("", description="PEM private key of tls_certificate")
    tls_ca_certificates: str = Field("", description="PEM CA bundle that client certificates must chain to")
    tls_require_client_certificate: bool = False
    plain_enabled: bool = Field(True, description="listen without TLS on port; false = TLS only")

    @model_validator(mode="after")
    def _tls_settings(self) -> "ReceiverConfig":
        if self.tls_enabled and not (self.tls_certificate and self.tls_private_key):
            raise ValueError("receiver.tls_enabled needs receiver.tls_certificate and receiver.tls_private_key")
        if self.tls_require_client_certificate and not self.tls_ca_certificates:
            raise ValueError("receiver.tls_require_client_certificate needs receiver.tls_ca_certificates")
        if not self.plain_enabled and not self.tls_enabled:
            raise ValueError("receiver.plain_enabled = false needs receiver.tls_enabled = true (else nothing listens)")
        return self

    def tls_context(self) -> "ssl.SSLContext | None":
        """The SCP's TLS context, or None without TLS (raises TlsError naming a bad file)."""
        if not self.tls_enabled:
            return None
        from engine.dicom.tls import server_context

        return server_context(self.tls_certificate, self.tls_private_key, self.tls_ca_certificates,
                              self.tls_require_client_certificate)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _calling_entries(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            title, _, host = value.partition("@")
            if not 0 < len(title.strip()) <= 16 or "\\" in title:
                raise ValueError(f"{value!r}: an AE title is 1-16 characters without backslash")
            if host:
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    raise ValueError(f"{value!r}: expected AE or AE@IP-address (e.g. CT1@10.0.0.5)") from None
        return values

    @field_validator("ae_title")
    @classmethod
    def _ae_title_chars(cls, value: str) -> str:
        if not value.strip() or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1-16 printable characters without backslash")
        return value


class StorageConfig(_Section):
    """Where spool, ledger and results live."""

    data_dir: Path = Path("./scanstream-data")
    min_free_bytes: int = Field(512 * 1024 * 1024, ge=0,
                                description="below this much free space on the spool's disk, new associations are "
                                            "refused (A-ASSOCIATE-RJ 2,3,2); 0 turns the check off")
    recent_cache_bytes: int = Field(256 * 1024 * 1024, ge=0,
                                    description="the newest spool files kept in memory for the broker's leases "
                                                "(the files on disk stay the record); 0 reads every file back")

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def users_path(self) -> Path:
        """The console's users, API tokens and sessions (``scanstream users``), apart from the ledger."""
        return self.data_dir / "users.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"


class AssemblerConfig(_Section):
    """When a series counts as complete."""

    idle_timeout_s: float = Field(10.0, gt=0)
    tick_s: float = Field(0.25, gt=0)


class BrokerConfig(_Section):
    """The ZeroMQ job broker (bound by the receiver) and its leases."""

    bind: str = "tcp://127.0.0.1:5570"
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_liveness: int = Field(3, ge=1)
    max_attempts: int = Field(3, ge=1)
    lease_timeout_s: float = Field(30.0, gt=0, description="a leased job no connected worker holds is taken back "
                                                          "(queued again, an attempt counted) this long after its "
                                                          "last renewal")
    curve_secret_key: str = Field("", description="broker's Curve secret certificate (NAME.key_secret); "
                                                  "required when bind is not loopback")
    curve_authorized_keys: str = Field("", description="folder of the public certificates (*.key) of allowed workers")

    @model_validator(mode="after")
    def _curve_pair(self) -> "BrokerConfig":
        if bool(self.curve_secret_key) != bool(self.curve_authorized_keys):
            raise ValueError("set both broker.curve_secret_key and broker.curve_authorized_keys, or neither")
        return self

    def curve(self) -> CurveServer | None:
        """The Curve settings of the broker, or None when not configured."""
        if not self.curve_secret_key:
            return None
        return CurveServer(Path(self.curve_secret_key).expanduser(), Path(self.curve_authorized_keys).expanduser())

    @field_validator("bind")
    @classmethod
    def _zmq_endpoint(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("a ZeroMQ endpoint like tcp://127.0.0.1:5570")
        return value


class WorkerConfig(_Section):
    """Workers started by ``scanstream serve`` and the defaults of ``scanstream worker``."""

    count: int = Field(1, ge=0)
    capacity: int = Field(2, ge=1, description="jobs one worker computes at once; their items share batches")
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(0, ge=0, description="0 = torch's default")
    broker: str = ""
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    precision: Literal["fp32", "fp16"] = Field("fp16", description="on CUDA; CPU backends always run fp32")
    max_batch_delay_ms: float = Field(2.0, ge=0, description="longest wait for more items before a batch runs")
    batches_in_flight: int = Field(0, ge=0, description="0 = 1 on the CPU, 2 on CUDA")
    channels_last: bool = Field(False, description="torch backend: channels-last memory format for 4D inputs")
    torch_compile: bool = Field(False, description="torch backend: compile the network with torch.compile")
    onnx_spin_wait: bool = Field(False, description="ONNX Runtime's threads busy-wait for work after each run: "
                                                    "0-4% faster batches of 16 (up to ~25% at batch 1) on cores "
                                                    "nothing else needs; off leaves them to the job thread and "
                                                    "the receiver")
    retain_heap: bool = Field(True, description="keep large freed buffers in the heap for the next job (glibc "
                                                "mallopt): no page faults on re-allocation; RSS stays at its peak")
    curve_secret_key: str = Field("", description="this worker's Curve secret certificate (NAME.key_secret)")
    curve_server_key: str = Field("", description="the broker's public Curve certificate (NAME.key)")
    model_cache: str = Field("", description="folder for ONNX exports, TensorRT plans and backend timings; "
                                             "empty = $XDG_CACHE_HOME/scanstream/models or ~/.cache/scanstream/models")

    @model_validator(mode="after")
    def _curve_pair(self) -> "WorkerConfig":
        if bool(self.curve_secret_key) != bool(self.curve_server_key):
            raise ValueError("set both worker.curve_secret_key and worker.curve_server_key, or neither")
        return self

    def curve(self) -> CurveClient | None:
        """The Curve settings of the worker, or None when not configured."""
        if not self.curve_secret_key:
            return None
        return CurveClient(Path(self.curve_secret_key).expanduser(), Path(self.curve_server_key).expanduser())

    def model_cache_path(self) -> Path:
        """Where derived model files are kept (see ``model_cache``)."""
        if self.model_cache:
            return Path(self.model_cache).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "scanstream" / "models"


class HttpConfig(_Section):
    """The HTTP side: health, readiness and metrics (open), the operations console and its API (signed in)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    stow_max_body_bytes: int = Field(2**30, ge=1024, description="largest STOW-RS request body "
                                                                 "(POST /dicomweb/studies); larger gets 413")
    tls_enabled: bool = Field(False, description="serve HTTPS (TLS 1.2+) with tls_certificate / tls_private_key")
    tls_certificate: str = Field("", description="PEM certificate (chain) of the console; empty = "
                                                 "receiver.tls_certificate")
    tls_private_key: str = Field("", description="PEM private key of tls_certificate; empty = receiver.tls_private_key")
    forwarded_allow_ips: list[str] = Field(default_factory=list,
                                           description="addresses of reverse proxies whose X-Forwarded-For and "
                                                       "X-Forwarded-Proto are believed (TLS ended at the proxy); "
                                                       "empty = none")
    session_idle_s: float = Field(1800.0, gt=0, description="a console session unused this long signs out")
    session_max_s: float = Field(43200.0, gt=0, description="a console session ends this long after sign-in")
    login_max_failures: int = Field(5, ge=1, description="failed sign-ins (per user name or per address) before a "
                                                         "lockout")
    login_lockout_s: float = Field(60.0, gt=0, description="the first lockout; each further failure doubles it, "
                                                           "up to 15 minutes")

    def tls_files(self, receiver: ReceiverConfig) -> tuple[str, str, str] | None:
        """(certificate, private key, the config prefix that named them) when TLS is on, else None."""
        if not self.tls_enabled:
            return None
        if self.tls_certificate or self.tls_private_key:
            return self.tls_certificate, self.tls_private_key, "http."
        return receiver.tls_certificate, receiver.tls_private_key, "receiver."


class PluginsConfig(_Section):
    """Which plugins load besides the entry points: importable module names, names to skip, and plugin settings.

    ``options`` is a flat table plugins read their own settings from, keys
    prefixed by the plugin and quoted in TOML (``"zoo.input_size" = 224``: an
    unquoted dotted key would nest); the engine passes them through and each
    plugin says which it takes.
    """

    modules: list[str] = Field(default_factory=list)
    disabled: list[str] = Field(default_factory=list)
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class RetentionConfig(_Section):
    """Removing finished studies in the background: by age, and to keep the data folder under a quota.

    Off unless a site asks (``enabled = true``): nothing is ever deleted by default.
    """

    enabled: bool = Field(False, description="run the background retention pass")
    keep_days: float | None = Field(None, gt=0, description="finished studies last received more than this many "
                                                            "days ago are removed; unset keeps them (quota only)")
    grace_hours: float = Field(1.0, ge=0, description="a finished study is never removed within this many hours "
                                                      "of its last instance")
    quota_bytes: int | None = Field(None, gt=0, description="while spool + results + ledger exceed this, the "
                                                            "oldest finished studies are recycled; when none is "
                                                            "left new associations are refused")
    interval_s: float = Field(60.0, gt=0, description="seconds between background passes")

    @model_validator(mode="after")
    def _something_to_apply(self) -> "RetentionConfig":
        if self.enabled and self.keep_days is None and self.quota_bytes is None:
            raise ValueError("retention.enabled needs retention.keep_days (days, > 0) or retention.quota_bytes "
                             "(bytes, > 0)")
        return self


class LoggingConfig(_Section):
    """Log level of the JSON-lines log on stderr."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class EngineConfig(_Section):
    """The whole configuration: one table per component, plus ``[[destinations]]`` and ``[[models]]`` lists."""

    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    assembler: AssemblerConfig = Field(default_factory=AssemblerConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    destinations: list[DestinationConfig] = Field(default_factory=list)
    notifications: list[NotificationConfig] = Field(default_factory=list)
    models: list[ModelEntryConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> "EngineConfig":
        for key, entries in (("destinations", self.destinations), ("notifications", self.notifications),
                             ("models", self.models)):
            names = [entry.name for entry in entries]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"{key}: names must be unique, {', '.join(twice)} appear(s) more than once")
        return self

    @model_validator(mode="after")
    def _http_tls(self) -> "EngineConfig":
        files = self.http.tls_files(self.receiver)
        if files is not None and not (files[0] and files[1]):
            raise ValueError("http.tls_enabled needs http.tls_certificate and http.tls_private_key (or "
                             "receiver.tls_certificate and receiver.tls_private_key, which it uses when those are "
                             "empty)")
        return self

    @property
    def worker_broker(self) -> str:
        """The endpoint a worker connects to: worker.broker, else the receiver's bind address."""
        return self.worker.broker or self.broker.bind.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")
