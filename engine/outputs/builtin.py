"""Built-in output writers, registered as a plugin like any other.

``result_json`` (summary JSON), ``seg`` (DICOM SEG of a label map), ``sr``
(Comprehensive SR measurement report of classification labels and detection
boxes), ``derived_series`` (one derived CT instance per source slice, from a
reconstruction) and ``preview`` (RGB Secondary Capture of one slice with the
result burned in).
"""

from __future__ import annotations

from engine import hookimpl
from engine.api import OutputRegistry
from engine.outputs.derived import DerivedSeriesWriter
from engine.outputs.preview import PreviewWriter
from engine.outputs.result_json import ResultJsonWriter
from engine.outputs.seg import SegWriter
from engine.outputs.sr import SrWriter


@hookimpl
def scanstream_register_outputs(registry: OutputRegistry) -> None:
    """Register ``result_json``, ``seg``, ``sr``, ``derived_series`` and ``preview``."""
    registry.add("result_json", ResultJsonWriter())
    registry.add("seg", SegWriter())
    registry.add("sr", SrWriter())
    registry.add("derived_series", DerivedSeriesWriter())
    registry.add("preview", PreviewWriter())
