"""Registration: the module the ``scanstream.plugins`` entry point names.

ScanStream imports it in every process (the receiver for the selector, each
worker for the network, handler and outputs) and calls its ``@hookimpl``
functions once at start.
"""

from __future__ import annotations

from engine import hookimpl
from engine.api import ModelRegistry, ModelSpec, SeriesInfo
from scanstream_example import MODEL_NAME, MODEL_VERSION
from scanstream_example.handler import BrightSpotHandler
from scanstream_example.network import load_network

MIN_SLICES = 4


def takes_series(series: SeriesInfo) -> bool:
    """CT series of at least :data:`MIN_SLICES` slices (instances, or frames of an enhanced CT)."""
    return series.modality == "CT" and max(series.instance_count, series.frame_count) >= MIN_SLICES


@hookimpl
def scanstream_register_models(registry: ModelRegistry) -> None:
    """Register ``example-bright-spots``: a label map, written as DICOM SEG and result.json."""
    registry.add(ModelSpec(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        description="teaching example, not a medical model: CT voxels whose 3x3 mean is above 300 HU, as DICOM SEG",
        selector=takes_series,
        load_network=load_network,
        handler=BrightSpotHandler(),
        outputs=("result_json", "seg"),
        max_batch=32,
        input_shape=(1, 256, 256),  # a typical slice: the example for ONNX export and backend timing
        min_input_shape=(1, 16, 16),  # rows and columns vary between series, within these bounds
        max_input_shape=(1, 1024, 1024),
    ))
