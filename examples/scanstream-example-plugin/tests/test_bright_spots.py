"""The example plugin through a real engine: a phantom CT in over DICOM, its DICOM SEG out.

The fixtures (``scanstream_phantom_study``, ``scanstream_engine``,
``scanstream_send``) come from ScanStream's pytest plugin, active whenever
scanstream is installed; this package only has to be importable and its entry
point installed (``pip install -e .``) for the engine to load it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.synthetic.ct_phantom import BONE
from engine.testing import PhantomStudy, read_seg_mask
from scanstream_example import MODEL_NAME
from scanstream_example.network import THRESHOLD_HU


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.scanstream_engine(models=[MODEL_NAME])  # route only to this model: the built-ins stay idle
def test_segments_the_bright_regions_of_a_phantom_ct(scanstream_phantom_study: PhantomStudy, scanstream_engine,
                                                     scanstream_send) -> None:
    results = scanstream_send(scanstream_phantom_study, scanstream_engine)
    (job,) = results.for_model(MODEL_NAME)
    assert job.state == "done", job.reason
    assert job.document["series_instance_uid"] == scanstream_phantom_study.series_uid
    assert job.document["findings"], job.document["summary"]

    mask = read_seg_mask(job.files["seg.dcm"], scanstream_phantom_study.files)
    truth = scanstream_phantom_study.phantom
    smoothed = ndimage.uniform_filter(truth.hu.astype(np.float32), size=(1, 3, 3), mode="nearest")
    assert dice(mask, smoothed > THRESHOLD_HU) > 0.99  # the network is exactly this threshold, in the SEG's geometry
    assert dice(mask, truth.tissue == BONE) > 0.9  # in a chest phantom, what is that bright is bone
