"""A decoded series builds a source dataset only when asked, and it is the one an eager read gives."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, RLELossless

from engine.api import ModelResult, SeriesInfo
from engine.outputs.preview import PreviewWriter
from engine.outputs.seg import SegWriter
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.worker.decode import decode_series
from engine.dicom.sources import SourceInstances, source_header
from tests.unit.factories import ct_slice, resave, writer_spec

SERIES = SeriesInfo("1.2.3", "1.2.3.4", "CT", CTImageStorage)


def _blobs(tmp_path: Path, slices: int = 8) -> list[bytes]:
    paths = write_ct_series(generate_ct_phantom(6, slices=slices, size=32), tmp_path)
    return [path.read_bytes() for path in reversed(paths)]


def test_sources_are_built_on_first_use_and_equal_pydicoms_reading(tmp_path: Path) -> None:
    blobs = _blobs(tmp_path)
    volume = decode_series(blobs, SERIES)
    sources = volume.sources
    assert isinstance(sources, SourceInstances) and len(sources) == len(blobs) and sources.built() == 0
    for index in (0, 5):
        read = pydicom.dcmread(io.BytesIO(blobs[index]))
        built = sources[index]
        assert sorted(built.keys()) == sorted(read.keys()) and built.file_meta == read.file_meta
        assert all(built[element.tag].value == element.value for element in read)
        assert sources[index] is built  # built once
        header = source_header(sources, index)
        assert (header.get("SOPInstanceUID"), header.get("SeriesInstanceUID"), header.get("SOPClassUID")) == (
            read.SOPInstanceUID, read.SeriesInstanceUID, read.SOPClassUID)
        assert header.get("ImagePositionPatient") == [float(v) for v in read.ImagePositionPatient]
    assert sources.built() == 2 and len(sources[1:4]) == 3 and sources.built() == 5


def test_writers_build_only_the_sources_they_show(tmp_path: Path) -> None:
    volume = decode_series(_blobs(tmp_path), SERIES)
    mask = np.zeros(volume.shape, np.uint8)
    mask[3:5, 10:14, 10:14] = 1
    result = ModelResult(summary="1", label_map=mask, segment_labels=["Nodule"])
    spec = writer_spec("lazy-seg", "1")
    (seg,) = SegWriter().write(result, volume, spec)
    # the two segmented planes, and the first slice for the shared pixel measures
    assert volume.sources.built() == 3
    assert len(pydicom.dcmread(io.BytesIO(seg.data)).SourceImageSequence) == 8
    PreviewWriter().write(result, volume, spec)  # shows one of the segmented planes: nothing new built
    assert volume.sources.built() == 3


def test_a_series_the_fast_path_cannot_read_gets_its_datasets_at_once() -> None:
    blobs = [resave(ct_slice(float(z), 1000, number=z + 1), RLELossless) for z in range(3)]
    volume = decode_series(blobs, SERIES)
    assert isinstance(volume.sources, list) and len(volume.sources) == 3
    assert source_header(volume.sources, 1) is volume.sources[1]
