"""Preview writer: an RGB Secondary Capture of one windowed slice with the result drawn in colour."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from engine.api import Finding, ImageRegion, ModelResult, PluginError
from engine.outputs.preview import (
    MAX_SIDE,
    OVERLAY_COLOURS,
    PreviewWriter,
    banner_lines,
    layout,
    to_grey,
    window,
)
from engine.outputs.uids import derived_uid, result_series_number
from tests.unit.test_sr_writer import ct_volume, dx_volume, make_spec

RED = OVERLAY_COLOURS[0]


def _preview(result, volume, version: str = "1.3") -> pydicom.Dataset:
    (artifact,) = PreviewWriter().write(result, volume, make_spec(version))
    assert artifact.name == "preview.dcm"
    return pydicom.dcmread(io.BytesIO(artifact.data))


def _coloured(pixels: np.ndarray) -> np.ndarray:
    """Where a pixel is not grey (R, G and B differ)."""
    return (pixels[..., 0] != pixels[..., 1]) | (pixels[..., 1] != pixels[..., 2])


def _shown_instance(preview: pydicom.Dataset) -> str:
    return str(preview.SourceImageSequence[0].ReferencedSOPInstanceUID)


def _instance_uid(volume, slice_index: int) -> str:
    return str(volume.sources[volume.frames[slice_index][0]].SOPInstanceUID)


def test_detection_preview_boxes_the_largest_finding_on_its_central_slice(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    box = (10.5, 12.5, 30.5, 28.5)
    large = Finding("nodule", 0.91, regions=[ImageRegion(i, box) for i in (2, 3, 4)])
    small = Finding("nodule", 0.55, regions=[ImageRegion(6, (40.0, 40.0, 44.0, 44.0))])
    preview = _preview(ModelResult(summary="2", findings=[small, large]), volume)

    assert preview.SOPClassUID == SecondaryCaptureImageStorage
    assert (preview.PhotometricInterpretation, preview.SamplesPerPixel, preview.BitsAllocated) == ("RGB", 3, 8)
    assert preview.BurnedInAnnotation == "YES"
    assert preview.StudyInstanceUID == volume.series.study_uid
    assert preview.SeriesInstanceUID == derived_uid(volume.series.series_uid, "unit-model", "1.3", "preview-series")
    assert preview.SOPInstanceUID == derived_uid(volume.series.series_uid, "unit-model", "1.3", "preview")
    assert (preview.SeriesNumber, preview.SeriesDescription) == (result_series_number("unit-model", "preview"),
                                                           "unit-model 1.3 preview")
    assert max(preview.Rows, preview.Columns) <= MAX_SIDE
    assert _shown_instance(preview) == _instance_uid(volume, 3)
    assert list(preview.PatientOrientation) == ["L", "P"]

    pixels = preview.pixel_array
    scale = preview.Columns / 64
    assert [float(v) for v in preview.PixelSpacing] == pytest.approx([1.4 / scale] * 2)
    left, top, right, bottom = (int(np.floor(v * scale)) for v in box)
    middle_row, middle_col = (top + bottom) // 2, (left + right) // 2
    for row, col in ((middle_row, left), (middle_row, right), (top, middle_col), (bottom, middle_col)):
        assert tuple(pixels[row, col]) == RED
    assert not _coloured(pixels[top + 3: bottom - 2, left + 3: right - 2]).any()  # inside the box stays grey
    small_box = pixels[int(40 * scale): int(44 * scale), int(40 * scale): int(44 * scale)]
    assert not _coloured(small_box).any()  # the other finding's box is on another slice

    again = _preview(ModelResult(summary="2", findings=[small, large]), volume)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (preview.SOPInstanceUID, preview.SeriesInstanceUID)
    assert _preview(ModelResult(summary="2", findings=[large]), volume, "2.0").SOPInstanceUID != preview.SOPInstanceUID


def test_segmentation_preview_outlines_the_largest_finding_on_its_centroid_slice(tmp_path) -> None:
    volume, phantom = ct_volume(tmp_path, nodules=2)
    label_map = phantom.nodule_mask.astype(np.uint8)
    (z0, y0, x0), _ = phantom.nodules[0]
    (z1, y1, x1), _ = phantom.nodules[1]
    shown = int(round((z1 - phantom.origin[2]) / phantom.spacing[0]))
    findings = [Finding("nodule", 0.9, volume_ml=0.2, voxel_count=100, centroid_mm=(x0, y0, z0)),
                Finding("nodule", 0.8, volume_ml=0.4, voxel_count=200, centroid_mm=(x1, y1, z1))]
    result = ModelResult(summary="2", findings=findings, label_map=label_map, segment_labels=["Nodule"])
    preview = _preview(result, volume)
    assert _shown_instance(preview) == _instance_uid(volume, shown)

    pixels = preview.pixel_array
    scale = preview.Columns / 64
    image = pixels[: int(64 * scale)]
    red = np.all(image == RED, axis=-1)
    assert red.sum() > 8
    rows, cols = np.nonzero(label_map[shown])
    red_rows, red_cols = np.nonzero(red)
    # every outline pixel lies on the mask (in source pixels), and the outline reaches its edges
    assert label_map[shown][(red_rows / scale).astype(int), (red_cols / scale).astype(int)].all()
    assert int(red_rows.min() / scale) == rows.min() and int(red_rows.max() / scale) == rows.max()
    assert int(red_cols.min() / scale) == cols.min() and int(red_cols.max() / scale) == cols.max()
    centre = (int((rows.mean() + 0.5) * scale), int((cols.mean() + 0.5) * scale))
    assert not red[centre]  # an outline, not a filled mask

    without_centroids = ModelResult(summary="2", findings=[Finding("nodule", 0.9)], label_map=label_map,
                                    segment_labels=["Nodule"])
    most_labelled = int(np.argmax(label_map.sum(axis=(1, 2))))
    assert _shown_instance(_preview(without_centroids, volume)) == _instance_uid(volume, most_labelled)


def test_no_finding_preview_is_grey_and_says_so(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    empty_map = ModelResult(summary="0", label_map=np.zeros(volume.shape, np.uint8), segment_labels=["Nodule"])
    for result in (ModelResult(summary="nothing"), empty_map):
        preview = _preview(result, volume)
        assert not _coloured(preview.pixel_array).any()
        assert _shown_instance(preview) == _instance_uid(volume, 4)  # the middle slice
        texts = [text for text, _ in banner_lines(result, volume, make_spec(), 4, {})]
        assert texts[0] == "NOT FOR DIAGNOSTIC USE - unit-model 1.3"
        assert texts[1].startswith("No findings")


def test_classification_preview_of_a_radiograph_is_small_inverted_and_lists_the_labels() -> None:
    volume = dx_volume(rows=600, cols=500)
    result = ModelResult(summary="pneumothorax", findings=[Finding("pneumothorax", 0.87)],
                         class_probabilities={"pneumothorax": 0.87, "effusion": 0.12})
    preview = _preview(result, volume)
    assert max(preview.Rows, preview.Columns) <= MAX_SIDE
    assert list(preview.PatientOrientation) == ["L", "F"]
    assert "PixelSpacing" not in preview  # a DX with ImagerPixelSpacing only states no patient-plane spacing
    pixels = preview.pixel_array
    image_rows = int(round(600 * preview.Columns / 500))
    grey = pixels[: image_rows - 1, :, 0].astype(int)
    # MONOCHROME1: the stored ramp rises to the right, so the rendering darkens to the right
    assert grey[:, :20].mean() > 200 and grey[:, -20:].mean() < 55
    banner = pixels[image_rows:]
    assert np.all(banner == RED, axis=-1).any()  # the present label is written in colour
    texts = [text for text, _ in banner_lines(result, volume, make_spec(), 0, {})]
    assert texts[1:] == ["pneumothorax: 0.87 (PRESENT)", "effusion: 0.12 (absent)"]


def test_reconstruction_preview_shows_source_and_derived_side_by_side(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    derived = np.full(volume.shape, -600.0, dtype=np.float32)  # the window centre: mid grey everywhere
    preview = _preview(ModelResult(summary="denoised", derived_voxels=derived), volume)
    geometry = layout(64, 64, (1.4, 1.4), 2, 0)
    pixels = preview.pixel_array
    assert preview.Columns == 2 * geometry.panel_cols + 4 <= MAX_SIDE
    body = pixels[: geometry.panel_rows // 2 + 10, :, 0]
    left, right = body[:, : geometry.panel_cols], body[:, -geometry.panel_cols:]
    assert left.std() > 20 and np.abs(right.astype(int) - 128).max() <= 1
    assert not _coloured(pixels).any()
    texts = [text for text, _ in banner_lines(ModelResult(summary="", derived_voxels=derived), volume,
                                              make_spec(), 4, {})]
    assert texts[1] == "left: source, right: unit-model output (slice 5/8)"


def test_window_from_the_source_else_from_the_slice_range() -> None:
    volume = dx_volume(rows=40, cols=50, window=True)
    values = volume.stored[0].astype(np.float32)
    assert window(volume.sources[0], 1, values) == (2000.0, 4000.0)
    unwindowed = dx_volume(rows=40, cols=50)
    centre, width = window(unwindowed.sources[0], 1, values)
    assert 1900 < centre < 2100 and 3800 < width <= 4000
    grey = to_grey(np.array([-200.0, -160.0, 40.0, 240.0, 500.0]), centre=40.0, width=400.0)
    assert grey.tolist()[:2] == [0, 0] and grey.tolist()[3:] == [255, 255] and 126 <= grey[2] <= 129
    assert to_grey(np.array([-200.0]), 40.0, 400.0, invert=True).tolist() == [255]


def test_bad_results_are_plugin_errors_naming_the_model(tmp_path) -> None:
    volume, _ = ct_volume(tmp_path)
    off_volume = ModelResult(summary="1", findings=[Finding("nodule", 0.5, regions=[ImageRegion(9, (1, 1, 4, 4))])])
    with pytest.raises(PluginError, match=r"unit-model.*slice_index"):
        PreviewWriter().write(off_volume, volume, make_spec())
    wrong_shape = ModelResult(summary="x", label_map=np.zeros((1, 2, 2), np.uint8), segment_labels=["Nodule"])
    with pytest.raises(PluginError, match=r"unit-model.*label_map shape"):
        PreviewWriter().write(wrong_shape, volume, make_spec())
