"""How every zoo output says it comes from a benchmark model, so no one mistakes it for a finding.

With the deterministic random weights (no ``zoo.weights.<model>`` file) the
result's summary starts with :data:`UNTRAINED`, ``extra`` carries
``"untrained_benchmark_model": True``, the model description starts with the
same words and the model version ends in ``-untrained`` (the DICOM writers put
name and version into the SeriesDescription, e.g. "zoo-ssd 1.0-untrained
report"). With a weights file the outputs still say they come from a benchmark
model, name the file's SHA-256 prefix, and the version carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugins.zoo.weights import SEED, WeightsSource

UNTRAINED = "UNTRAINED BENCHMARK MODEL"
BENCHMARK = "BENCHMARK MODEL"
VERSION = "1.0"


@dataclass(frozen=True)
class Provenance:
    """One zoo model's identity and weights, and the labels derived from them."""

    model: str
    architecture: str
    weights: WeightsSource

    @property
    def untrained(self) -> bool:
        """True for the deterministic random initialisation."""
        return self.weights.untrained

    @property
    def version(self) -> str:
        """``1.0-untrained``, or ``1.0-w<first 12 hex of the weights file's SHA-256>``."""
        return f"{VERSION}-untrained" if self.untrained else f"{VERSION}-w{self.weights.sha256[:12]}"

    def headline(self) -> str:
        """The words every summary and description starts with."""
        if self.untrained:
            return f"{UNTRAINED} ({self.model}: {self.architecture}, random weights, seed {SEED})"
        return (f"{BENCHMARK} ({self.model}: {self.architecture}, weights sha256 {self.weights.sha256[:12]}, "
                "not a validated diagnostic model)")

    def summary(self, text: str) -> str:
        """``ModelResult.summary``: the headline, then what this run computed."""
        return f"{self.headline()}: {text}"

    def description(self, text: str) -> str:
        """``ModelSpec.description``."""
        meaning = ("a throughput workload; its outputs carry no clinical meaning" if self.untrained
                   else "a throughput workload with user-supplied weights; outputs are not validated")
        return f"{self.headline()}: {text}; {meaning}"

    def extra(self, **fields: Any) -> dict[str, Any]:
        """``ModelResult.extra``: the benchmark-model flags first, then ``fields``."""
        marks: dict[str, Any] = {"untrained_benchmark_model": self.untrained, "benchmark_model": True,
                                 "architecture": self.architecture}
        if not self.untrained:
            marks["weights_sha256"] = self.weights.sha256
        return {**marks, **fields}
