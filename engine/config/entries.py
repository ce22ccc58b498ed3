"""Configuration entries that come as lists or routing rules: ``[[destinations]]``, ``[[notifications]]``,
``[[models]]``, ``[routing]``.

Kept apart from :mod:`engine.config` (the component sections) because each entry
is a small document of its own; errors name the entry by index and name
(``models[1] ("ct-onnx").output``).
"""

from __future__ import annotations

import re
from datetime import date
import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENTRY_NAME = r"^[a-z][a-z0-9_\-]{0,62}$"
OUTPUT_FAMILIES = ("classification", "detection", "segmentation", "reconstruction")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae_title(value: str) -> str:
    if not value.strip() or "\\" in value or not value.isprintable():
        raise ValueError("an AE title is 1-16 printable characters without backslash")
    return value


class DestinationConfig(_Entry):
    """A peer that receives every DICOM result of the models it lists: a PACS by C-STORE
    (``kind = "dimse"``, the default) or a DICOMweb archive by STOW-RS (``kind = "dicomweb"``).

    Sending retries with exponential backoff (``backoff_initial_s`` doubling up to
    ``backoff_max_s``) on connection failures and 0xA7xx statuses, up to
    ``max_attempts``; 0xA9xx, 0xCxxx, 0x0122 and other failures end the delivery as
    failed with the reason; 0xB000/0xB006/0xB007 count as sent, with a warning.
    STOW-RS: 5xx, 408, 429 and connection errors retry, other 4xx fail at once, and
    the per-instance failures of the STOW response are judged like C-STORE statuses.
    """

    name: str = Field(pattern=ENTRY_NAME)
    kind: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str = Field("", max_length=16, description="dimse: the PACS's AE title")
    host: str = Field("", description="dimse: the PACS's host")
    port: int | None = Field(None, ge=1, le=65535, description="dimse: the PACS's port")
    url: str = Field("", description="dicomweb: the DICOMweb base URL (STOW-RS goes to <url>/studies)")
    username: str = Field("", description="dicomweb: HTTP basic auth user (with password)")
    password: str = ""
    bearer_token: str = Field("", description="dicomweb: sent as Authorization: Bearer <token>")
    calling_ae_title: str = Field("SCANSTREAM", min_length=1, max_length=16)
    models: list[str] = Field(default_factory=list, description="model names whose results go here; empty = all")
    max_attempts: int = Field(8, ge=1)
    backoff_initial_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(30.0, gt=0, description="ACSE, DIMSE and network timeout of one attempt "
                                                     "(dicomweb: connect and read timeout)")
    tls: bool = Field(False, description="DICOM TLS to this destination (dicomweb: https URLs always use TLS)")
    tls_ca_certificates: str = Field("", description="PEM CA bundle the peer's certificate must chain to; "
                                                     "empty = the system CAs")
    tls_certificate: str = Field("", description="PEM client certificate, when the peer requires one "
                                                 "(mutual TLS)")
    tls_private_key: str = ""
    tls_check_hostname: bool = True

    @model_validator(mode="after")
    def _kind_fields(self) -> "DestinationConfig":
        if self.kind == "dimse" and (not self.ae_title or not self.host or self.port is None):
            raise ValueError('kind "dimse" needs ae_title, host and port')
        if self.kind == "dicomweb":
            if not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError('kind "dicomweb" needs url, the http:// or https:// DICOMweb base URL')
            if self.username and self.bearer_token:
                raise ValueError("username/password (basic) and bearer_token exclude each other")
            if bool(self.username) != bool(self.password):
                raise ValueError("basic auth needs both username and password")
        return self

    def tls_context(self) -> "ssl.SSLContext | None":
        """The client TLS context for this destination, or None without TLS (dicomweb: for https URLs)."""
        if not (self.tls or self.url.startswith("https://")):
            return None
        from engine.dicom.tls import client_context

        return client_context(self.tls_ca_certificates, self.tls_certificate, self.tls_private_key,
                              self.tls_check_hostname, prefix=f"destinations.{self.name}.")

    _check_ae = field_validator("ae_title", "calling_ae_title")(
        classmethod(lambda cls, v: _ae_title(v) if v else v))

    def takes(self, model: str) -> bool:
        """True when results of ``model`` go to this destination."""
        return not self.models or model in self.models

    def backoff_s(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempts - 1))


NOTIFICATION_TRIGGERS = ("findings", "no_findings", "failed", "study_final")


class NotificationConfig(_Entry):
    """Someone told when a result is ready: a webhook (``kind = "webhook"``) or HL7 ORU^R01 over MLLP (``"hl7"``).

    ``triggers`` picks the events: a job done with findings (``findings``), done
    without (``no_findings``), failed or dead-lettered (``failed``), and a study
    final (``study_final``: every job and delivery finished). Sending retries with
    the same backoff as destinations on connection errors, HTTP 5xx/408/429 and HL7
    AE/CE acknowledgements, up to ``max_attempts``; HTTP 4xx and HL7 AR/CR fail at once.
    """

    name: str = Field(pattern=ENTRY_NAME)
    kind: str = Field(min_length=1, description="a registered notification kind: webhook, hl7, or a plugin's")
    triggers: list[Literal["findings", "no_findings", "failed", "study_final"]] = Field(
        default_factory=lambda: list(NOTIFICATION_TRIGGERS))
    models: list[str] = Field(default_factory=list, description="models whose jobs notify; empty = all")
    max_attempts: int = Field(8, ge=1)
    backoff_initial_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(10.0, gt=0, description="connect and answer timeout of one attempt")
    url: str = Field("", description="webhook: the http(s) URL the JSON body is POSTed to")
    secret: str = Field("", description="webhook: HMAC-SHA256 key; the X-ScanStream-Signature header is "
                                        "sha256=<hex of HMAC(secret, body)>")
    host: str = Field("", description="hl7: the MLLP listener's host")
    port: int = Field(0, ge=0, le=65535, description="hl7: the MLLP listener's port")
    sending_application: str = "SCANSTREAM"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""

    @model_validator(mode="after")
    def _kind_fields(self) -> "NotificationConfig":
        if self.kind == "webhook" and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError('kind "webhook" needs url, an http:// or https:// URL')
        if self.kind == "webhook" and not self.secret:
            raise ValueError('kind "webhook" needs secret (the HMAC-SHA256 key receivers check the body with)')
        if self.kind == "hl7" and (not self.host or not self.port):
            raise ValueError('kind "hl7" needs host and port (the MLLP listener)')
        return self

    def takes(self, trigger: str, model: str | None) -> bool:
        """True when this notification fires on ``trigger`` for a job of ``model`` (None: a study event)."""
        return trigger in self.triggers and (model is None or not self.models or model in self.models)

    def backoff_s(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempts - 1))


class RoutingConfig(_Entry):
    """Queue order read from the data: the value of ``priority_tag`` looked up in ``priority_values``.

    ``priority_tag`` is a DICOM keyword (``RequestedProcedurePriority``) or a tag as
    8 hex digits (``00401003``); empty turns it off. Values are compared upper-case
    and stripped; a series without the tag or with an unknown value gets 0. Higher
    runs first; equal priorities run oldest first.
    """

    models: list[str] = Field(default_factory=list, description="models the router may use; empty = every "
                                                                "registered model")
    priority_tag: str = ""
    backfill_since: date | None = Field(None, description="at start, every model also runs on the complete series "
                                                          "completed on or after this date (YYYY-MM-DD) it has not "
                                                          "run on; unset = new series only")
    backfill_deliver: bool = Field(False, description="whether backfilled results go to the destinations")
    priority_values: dict[str, int] = Field(default_factory=lambda: {"STAT": 100, "HIGH": 50, "MEDIUM": 10,
                                                                     "ROUTINE": 0, "LOW": -10})

    @field_validator("priority_tag")
    @classmethod
    def _known_tag(cls, value: str) -> str:
        from pydicom.datadict import tag_for_keyword

        if value and not re.fullmatch(r"[0-9A-Fa-f]{8}", value) and tag_for_keyword(value) is None:
            raise ValueError("a DICOM keyword such as RequestedProcedurePriority, or a tag as 8 hex digits")
        return value

    @field_validator("priority_values")
    @classmethod
    def _upper_keys(cls, value: dict[str, int]) -> dict[str, int]:
        return {key.strip().upper(): int(level) for key, level in value.items()}


class SelectorConfig(_Entry):
    """Which series a config-only model takes; every given field must match (empty = any)."""

    modality: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)
    sop_class_uid: list[str] = Field(default_factory=list)
    series_description: str = Field("", description="a regular expression searched case-insensitively")
    calling_ae: list[str] = Field(default_factory=list)
    min_slices: int = Field(1, ge=1)

    @field_validator("series_description")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class PreprocessingConfig(_Entry):
    """How slices become network input: window, normalisation, size, neighbouring slices as channels."""

    window: tuple[float, float] = (-1000.0, 400.0)
    normalise: Literal["window", "zscore"] = Field("window", description="window: [low, high] -> [0, 1]; "
                                                   "zscore: clip to the window, then (x - mean) / std")
    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    size: tuple[int, int] = Field((256, 256), description="rows, columns the network sees")
    context_slices: int = Field(0, ge=0, description="neighbours on each side as extra channels (2.5D)")

    @property
    def channels(self) -> int:
        """Network input channels: the slice and ``context_slices`` neighbours on each side."""
        return 2 * self.context_slices + 1

    @model_validator(mode="after")
    def _window_order(self) -> "PreprocessingConfig":
        if not self.window[1] > self.window[0]:
            raise ValueError("window must be [low, high] with high > low")
        if min(self.size) < 1:
            raise ValueError("size must be two positive integers [rows, columns]")
        return self


class VolumetricConfig(_Entry):
    """A 3D network's plan: orientation, target spacing, sliding window and blending (see docs/models.md).

    Axes are the network's (D, H, W). ``orientation`` names the direction each of
    them runs toward ("RAS": D to the patient's right, H anterior, W superior, as
    MONAI's arrays; "LPS"); empty keeps the series' (slice, row, column) axes.
    ``spacing`` is the voxel size in mm along (D, H, W) after reorienting, empty
    keeps the series'; images are resampled linearly; the output goes back to the
    source grid as logits or probabilities resampled linearly (``invert``), or as
    labels by nearest voxel (``"labels"``).
    """

    orientation: Literal["", "RAS", "LPS"] = ""
    spacing: tuple[float, float, float] | None = Field(None, description="mm along the network's (D, H, W)")
    roi_size: tuple[int, int, int] = Field(description="the sliding window's (D, H, W) in voxels")
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="fraction of the window shared with its neighbour")
    blend: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(0.125, gt=0, description="the Gaussian's sigma as a fraction of the window side")
    pad_value: float = Field(0.0, description="padding in normalised input units, where the volume is "
                                              "smaller than the window")
    background_channel: bool = Field(False, description="one label as (N, 2, D, H, W) logits, channel 0 the "
                                                        "background (MONAI's softmax layout); K > 1 always has it")
    invert: Literal["logits", "probabilities", "labels"] = Field(
        "logits", description="back to the source grid: logits (nnU-Net) or probabilities (softmax/sigmoid "
                              "first, as MONAI's Activations then Invert) resampled linearly, then labels; or "
                              "labels by nearest voxel (less memory)")

    @model_validator(mode="after")
    def _positive(self) -> "VolumetricConfig":
        if min(self.roi_size) < 1:
            raise ValueError("roi_size must be three positive integers [D, H, W]")
        if self.spacing is not None and min(self.spacing) <= 0:
            raise ValueError("spacing must be three positive millimetre values [D, H, W]")
        return self


class LabelCodeConfig(_Entry):
    """A segment's coded concepts: ``category`` (CID 7150) and ``type``, each [scheme, value, meaning]."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]

    @field_validator("category", "type")
    @classmethod
    def _code(cls, value: tuple[str, str, str]) -> tuple[str, str, str]:
        if not all(part.strip() for part in value):
            raise ValueError('a code is [scheme, value, meaning], none empty, e.g. ["SCT", "10200004", "Liver"]')
        return value


class ModelEntryConfig(_Entry):
    """A model registered from configuration alone: a TorchScript (``.pt``/``.ts``) or ONNX (``.onnx``) file.

    The network contract per ``output`` (N = slices, C = 2 * context_slices + 1, H, W = size):
    input (N, C, H, W) float32; segmentation -> (N, 1, H, W) logits (sigmoid) or
    (N, K + 1, H, W) (softmax, class 0 = background); classification -> (N, K) logits
    (sigmoid; the study's probability is the maximum over slices); detection ->
    (N, M, 6) rows of (x0, y0, x1, y1, score, class) in input pixels, score in [0, 1];
    reconstruction -> (N, 1, H, W) in the normalised units of the input.
    K = len(labels). With ``volumetric``, N counts sliding windows, the input is
    (N, 1, D, H, W) and outputs are (N, 1 | K + 1, D, H, W) or (N, K) (the
    study's probability is the maximum over windows); ``preprocessing.size`` is unused.
    """

    name: str = Field(pattern=ENTRY_NAME)
    version: str = Field(min_length=1)
    file: Path | None = Field(None, description="a TorchScript or ONNX file; or give bundle")
    bundle: Path | None = Field(None, description="a MONAI Bundle folder (configs/metadata.json, "
                                                  "configs/inference.json, models/model.ts or model.onnx)")
    output: Literal["classification", "detection", "segmentation", "reconstruction"] | None = None
    labels: list[str] = Field(default_factory=lambda: ["finding"], min_length=1)
    description: str = ""
    threshold: float = Field(0.5, gt=0, lt=1)
    max_batch: int = Field(16, ge=1)
    selector: SelectorConfig = Field(default_factory=SelectorConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    volumetric: VolumetricConfig | None = Field(None, description="a 3D network: input (N, 1, D, H, W) windows")
    label_codes: dict[str, LabelCodeConfig] = Field(default_factory=dict, description="SEG segment codes by "
                                                    "label; others get defaults (engine/outputs/segment_codes.py)")

    @model_validator(mode="after")
    def _file_or_bundle(self) -> "ModelEntryConfig":
        if (self.file is None) == (self.bundle is None):
            raise ValueError("give one of file (a TorchScript or ONNX file) and bundle (a MONAI Bundle folder)")
        if self.file is not None and self.output is None:
            raise ValueError("output is required with file: classification, detection, segmentation "
                             "or reconstruction")
        return self

    @model_validator(mode="after")
    def _coded_labels(self) -> "ModelEntryConfig":
        if self.bundle is not None:
            return self  # the labels come from the bundle; checked once it is read
        unknown = sorted(set(self.label_codes) - set(self.labels))
        if unknown:
            raise ValueError(f"label_codes names {unknown}, which are not in labels {list(self.labels)}")
        return self

    def segment_codes(self) -> dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]]:
        """``label_codes`` as :attr:`engine.api.ModelResult.segment_codes` takes them."""
        return {label: (code.category, code.type) for label, code in self.label_codes.items()}

    @model_validator(mode="after")
    def _volumetric_family(self) -> "ModelEntryConfig":
        if self.volumetric is not None:
            if self.output not in ("segmentation", "classification"):
                raise ValueError("volumetric models are segmentation or classification")
            if self.preprocessing.context_slices:
                raise ValueError("preprocessing.context_slices is for 2.5D networks; a volumetric model takes 0")
        return self

    @field_validator("file")
    @classmethod
    def _model_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if value.suffix.lower() not in (".onnx", ".pt", ".ts", ".pth"):
            raise ValueError("a TorchScript (.pt, .ts, .pth) or ONNX (.onnx) file")
        return value.expanduser()

    @property
    def is_onnx(self) -> bool:
        """True for an ONNX file, False for TorchScript."""
        return self.file is not None and self.file.suffix.lower() == ".onnx"
