"""The derived-series writer: one derived CT instance per source slice, referencing it, decodable back."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from engine.api import ModelResult, ModelSpec, PluginError, SeriesInfo, Volume
from engine.outputs.derived import DerivedSeriesWriter, fit_rescale
from engine.outputs.uids import derived_uid, result_series_number
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.worker.decode import decode_series

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns",
            "FrameOfReferenceUID", "StudyInstanceUID", "PatientID", "SOPClassUID")


class _Handler:
    def preprocess(self, volume):
        return volume

    def postprocess(self, output, volume):
        return ModelResult(summary="")


SPEC = ModelSpec(name="toy-recon", version="2.1", description="test reconstruction", selector=lambda s: True,
                 load_network=lambda: None, handler=_Handler(), outputs=("derived_series",))


def _volume(tmp_path: Path, seed: int = 3, syntax: str = ExplicitVRLittleEndian) -> Volume:
    phantom = generate_ct_phantom(seed, slices=8, size=64)
    paths = write_ct_series(phantom, tmp_path / f"src-{seed}", transfer_syntax=syntax)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series = SeriesInfo(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, modality="CT",
                        sop_class_uid=CTImageStorage, instance_count=len(paths))
    # shuffled on purpose: the decoder orders slices by position, the writer must follow volume.frames
    order = np.random.default_rng(seed).permutation(len(paths))
    return decode_series([paths[i].read_bytes() for i in order], series)


def _smoothed(volume: Volume) -> np.ndarray:
    """Stand-in model output: a slightly smoothed, non-integer version of the volume in HU."""
    voxels = volume.voxels
    return (0.5 * voxels + 0.25 * np.roll(voxels, 1, axis=2) + 0.25 * np.roll(voxels, -1, axis=2) + 0.3).astype(
        np.float32)


def _read(artifacts) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(a.data)) for a in artifacts]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    volume = _volume(tmp_path_factory.mktemp("derived"))
    derived = _smoothed(volume)
    result = ModelResult(summary="", derived_voxels=derived)
    return volume, derived, DerivedSeriesWriter().write(result, volume, SPEC), DerivedSeriesWriter().write(
        result, volume, SPEC)


def test_one_named_instance_per_slice(written) -> None:
    volume, _, artifacts, _ = written
    assert [a.name for a in artifacts] == [f"derived-{i:04d}.dcm" for i in range(1, volume.shape[0] + 1)]
    assert all(re.match(NAME_RE, a.name) for a in artifacts)
    assert {a.media_type for a in artifacts} == {"application/dicom"}
    datasets = _read(artifacts)
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, volume.shape[0] + 1))
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {ExplicitVRLittleEndian}


def test_uids_are_stable_derived_and_new(written) -> None:
    volume, _, first, second = written
    a, b = _read(first), _read(second)
    source_series = volume.series.series_uid
    expected_series = derived_uid(source_series, SPEC.name, SPEC.version, "derived-series")
    assert {ds.SeriesInstanceUID for ds in a} == {expected_series} != {source_series}
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b]
    source_uids = {ds.SOPInstanceUID for ds in volume.sources}
    assert len({ds.SOPInstanceUID for ds in a}) == len(a) and not source_uids & {ds.SOPInstanceUID for ds in a}
    for ds, (source_index, _) in zip(a, volume.frames):
        source = volume.sources[source_index]
        assert ds.SOPInstanceUID == derived_uid(source_series, SPEC.name, SPEC.version,
                                                f"derived-{source.SOPInstanceUID}")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    other = DerivedSeriesWriter().write(ModelResult(summary="", derived_voxels=written[1]), volume,
                                        dataclasses.replace(SPEC, version="2.2"))
    assert {ds.SeriesInstanceUID for ds in _read(other)}.isdisjoint({expected_series})


def test_references_geometry_and_derivation(written) -> None:
    volume, _, artifacts, _ = written
    for ds, (source_index, _) in zip(_read(artifacts), volume.frames):
        source = volume.sources[source_index]
        for keyword in GEOMETRY:
            assert ds[keyword].value == source[keyword].value, keyword
        assert (ds.PatientName, ds.Modality) == (source.PatientName, "CT")
        reference = ds.SourceImageSequence[0]
        assert len(ds.SourceImageSequence) == 1
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        code = ds.DerivationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113087", "DCM", "Smoothing")
        assert ds.DerivationDescription.startswith("toy-recon 2.1: test reconstruction")
        assert ds.SeriesDescription == "toy-recon 2.1 derived" and ds.SeriesNumber == result_series_number("toy-recon", "derived")
        assert ds.Manufacturer == "ScanStream" and ds.ManufacturerModelName == "toy-recon"


def test_pixels_round_trip_within_rescale_precision(written) -> None:
    volume, derived, artifacts, _ = written
    for index, ds in enumerate(_read(artifacts)):
        assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)  # the phantom's own: every value fits
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - derived[index]).max() <= 0.5 + 1e-3
    decoded = decode_series([a.data for a in artifacts], volume.series)
    assert decoded.shape == volume.shape
    assert np.abs(decoded.voxels - derived).max() <= 0.5 + 1e-3
    assert decoded.origin == volume.origin and decoded.spacing == volume.spacing
    assert not np.array_equal(decoded.voxels, volume.voxels)  # really the new pixels


def test_values_beyond_the_stored_range_get_their_own_rescale(tmp_path: Path) -> None:
    volume = _volume(tmp_path, seed=4)
    derived = volume.voxels.copy()
    derived[2] = np.linspace(-1500.0, 5000.0, derived[2].size, dtype=np.float32).reshape(derived[2].shape)
    artifacts = DerivedSeriesWriter().write(ModelResult(summary="", derived_voxels=derived), volume, SPEC)
    datasets = _read(artifacts)
    assert float(datasets[2].RescaleSlope) > 1.0
    assert all((float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
               for i, ds in enumerate(datasets) if i != 2)
    slope = float(datasets[2].RescaleSlope)
    decoded = decode_series([a.data for a in artifacts], volume.series)
    assert np.abs(decoded.voxels - derived).max() <= slope / 2 + 1e-3


def test_fit_rescale_keeps_the_source_when_it_fits_and_never_clips() -> None:
    assert fit_rescale(np.array([-1024.0, 3071.0]), 1.0, -1024.0, 0, 4095) == (1.0, -1024.0)
    for values in (np.array([-2000.0, 100.0]), np.array([-1024.0, 9000.0]), np.array([5.0, 5.0 + 1e7])):
        slope, intercept = fit_rescale(values, 1.0, -1024.0, 0, 4095)
        stored = (values - intercept) / slope
        assert stored.min() >= -0.5 and stored.max() <= 4095.5, (values, slope, intercept)
        assert len(str(slope)) <= 16 and len(str(intercept)) <= 16


def test_compressed_sources_give_uncompressed_derived_instances(tmp_path: Path) -> None:
    volume = _volume(tmp_path, seed=5, syntax=RLELossless)
    artifacts = DerivedSeriesWriter().write(ModelResult(summary="", derived_voxels=volume.voxels), volume, SPEC)
    decoded = decode_series([a.data for a in artifacts], volume.series)
    assert np.array_equal(decoded.voxels, volume.voxels)
    assert {pydicom.dcmread(io.BytesIO(a.data)).file_meta.TransferSyntaxUID for a in artifacts} == {
        ExplicitVRLittleEndian}


def test_nothing_without_derived_voxels_and_errors_name_the_model(written, tmp_path: Path) -> None:
    volume, derived, _, _ = written
    writer = DerivedSeriesWriter()
    assert writer.write(ModelResult(summary="nothing"), volume, SPEC) == []
    with pytest.raises(PluginError, match="toy-recon.*shape"):
        writer.write(ModelResult(summary="", derived_voxels=derived[:-1]), volume, SPEC)
    with pytest.raises(PluginError, match="toy-recon.*NaN"):
        writer.write(ModelResult(summary="", derived_voxels=np.full(volume.shape, np.nan, np.float32)), volume, SPEC)
    multi = Volume(stored=volume.stored, spacing=volume.spacing, origin=volume.origin,
                   orientation=volume.orientation, sources=volume.sources[:1],
                   frames=[(0, i + 1) for i in range(volume.shape[0])], series=volume.series)
    with pytest.raises(PluginError, match="toy-recon.*single-frame"):
        writer.write(ModelResult(summary="", derived_voxels=derived), multi, SPEC)
