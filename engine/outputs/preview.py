"""An RGB Secondary Capture preview: one windowed slice with the result burned in, for any viewer.

Every result gets one (also when nothing was found), so a radiologist sees at a
glance what the model said: the label-map outline (segmentation), the boxes on
the slice of the largest finding (detection), the labels and probabilities
(classification), or the source and derived slice side by side
(reconstruction), with a banner naming the model and "not for diagnostic use".
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from engine import __version__
from engine.api import Artifact, Finding, ModelResult, ModelSpec, PluginError, Volume
from engine.logs import get_logger
from engine.outputs.sr import check_regions
from engine.outputs.uids import result_series_number, result_uid

log = get_logger(__name__)

MAX_SIDE = 512  # the whole preview, banner included, fits in MAX_SIDE x MAX_SIDE
MIN_SIDE = 320  # smaller slices are enlarged (as far as MAX_SIDE allows) so the banner text fits
PANEL_GAP = 4
STRIP_PADDING = 4
MAX_BANNER_LINES = 6
OVERLAY_COLOURS = ((255, 48, 48), (48, 220, 48), (64, 150, 255), (255, 208, 0), (230, 80, 230), (0, 220, 220))
TEXT_COLOUR = (255, 255, 255)
ORIENTATION_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # LPS axes: (negative, positive)


@dataclass(frozen=True)
class Layout:
    """Panel size in preview pixels and the scale from source pixels (x: columns, y: rows)."""

    panel_rows: int
    panel_cols: int
    scale_y: float
    scale_x: float


def _slice_of(volume: Volume, point_mm: tuple[float, float, float]) -> int:
    """The slice index nearest a patient point (x, y, z) mm, along the volume's slice normal."""
    normal = np.cross(np.asarray(volume.orientation[:3], dtype=float), np.asarray(volume.orientation[3:6], dtype=float))
    distance = float(np.dot(np.subtract(point_mm, volume.origin), normal)) / (volume.spacing[0] or 1.0)
    return int(np.clip(round(distance), 0, volume.shape[0] - 1))


def _label_map_slice(label_map: np.ndarray, findings: list[Finding], volume: Volume) -> int | None:
    """The largest segmented finding's centroid slice when it is labelled there, else the most labelled slice.

    Uses the findings' sizes and centroids rather than labelling components: a
    whole-volume connected-component pass costs seconds and gigabytes on a large CT.
    """
    if not label_map.any():
        return None
    sized = [f for f in findings if f.centroid_mm is not None and (f.voxel_count or f.volume_ml)]
    if sized:
        largest = max(sized, key=lambda f: (f.voxel_count or 0, f.volume_ml or 0.0))
        index = _slice_of(volume, largest.centroid_mm)
        if label_map[index].any():
            return index
    # counting every slice's voxels is the costly part (~2 ms for 48 x 256x256): only when the centroid misses
    return int(np.argmax(np.count_nonzero(label_map.reshape(label_map.shape[0], -1), axis=1)))


def choose_slice(result: ModelResult, volume: Volume) -> int:
    """The largest finding's central slice (boxes first, then the label map), else the middle slice."""
    with_regions = [f for f in result.findings if f.regions]
    if with_regions:
        def area(finding) -> float:
            return sum((r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in finding.regions)

        largest = max(with_regions, key=area)
        ordered = sorted(largest.regions, key=lambda r: r.slice_index)
        return ordered[len(ordered) // 2].slice_index
    if result.label_map is not None:
        index = _label_map_slice(result.label_map, result.findings, volume)
        if index is not None:
            return index
    return volume.shape[0] // 2


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in the frame's per-frame group, else the shared group."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds and len(ds.PerFrameFunctionalGroupsSequence) >= frame:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame - 1])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _first(value) -> float:
    """The first of a possibly multi-valued DS (several VOI windows may be listed)."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def window(ds: Dataset, frame: int, values: np.ndarray) -> tuple[float, float]:
    """(centre, width) from the source's VOI attributes, else the slice's 0.5-99.5 percentile range."""
    holder = ds if "WindowCenter" in ds and "WindowWidth" in ds else _functional_item(ds, frame, "FrameVOILUTSequence")
    if holder is not None and "WindowCenter" in holder and "WindowWidth" in holder:
        centre, width = _first(holder.WindowCenter), _first(holder.WindowWidth)
        if math.isfinite(centre) and math.isfinite(width) and width >= 1:
            return centre, width
    low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    high = max(high, low + 1.0)
    return (low + high) / 2, high - low


def to_grey(values: np.ndarray, centre: float, width: float, invert: bool = False) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to uint8; ``invert`` for MONOCHROME1 sources."""
    scaled = ((values.astype(np.float32) - (centre - 0.5)) / max(width - 1.0, 1e-6) + 0.5).clip(0.0, 1.0)
    scaled = np.nan_to_num(scaled, nan=0.0)
    grey = np.rint(scaled * 255.0).astype(np.uint8)
    return 255 - grey if invert else grey


def _source_pixel_spacing(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """PixelSpacing (row, column mm) when the source states it; ImagerPixelSpacing alone is the detector's."""
    holder = ds if "PixelSpacing" in ds else _functional_item(ds, frame, "PixelMeasuresSequence")
    if holder is None or "PixelSpacing" not in holder:
        return None
    row_mm, col_mm = (float(v) for v in holder.PixelSpacing)
    return (row_mm, col_mm) if row_mm > 0 and col_mm > 0 else None


def _imager_pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """The detector's (row, column) spacing of a projection image: its aspect ratio, not patient-plane mm."""
    if "ImagerPixelSpacing" not in ds:
        return None
    row_mm, col_mm = (float(v) for v in ds.ImagerPixelSpacing)
    return (row_mm, col_mm) if row_mm > 0 and col_mm > 0 else None


def _source_orientation(ds: Dataset, frame: int) -> tuple[float, ...] | None:
    holder = ds if "ImageOrientationPatient" in ds else _functional_item(ds, frame, "PlaneOrientationSequence")
    if holder is None or "ImageOrientationPatient" not in holder:
        return None
    return tuple(float(v) for v in holder.ImageOrientationPatient)


def _letter(direction: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return ORIENTATION_LETTERS[axis][int(direction[axis] > 0)]


def patient_orientation(ds: Dataset, frame: int) -> tuple[str, str] | None:
    """Row and column directions as patient letters: from the orientation vectors, else PatientOrientation."""
    orientation = _source_orientation(ds, frame)
    if orientation is not None and len(orientation) == 6:
        return _letter(np.asarray(orientation[:3])), _letter(np.asarray(orientation[3:]))
    stated = [str(v) for v in ds.get("PatientOrientation", []) or []]
    valid = {letter for pair in ORIENTATION_LETTERS for letter in pair}
    if len(stated) == 2 and all(v in valid for v in stated):
        return stated[0], stated[1]
    return None


def layout(rows: int, cols: int, spacing: tuple[float, float], panels: int, strip_rows: int) -> Layout:
    """Square preview pixels; the whole image within :data:`MAX_SIDE`, small slices enlarged to :data:`MIN_SIDE`."""
    row_mm, col_mm = spacing
    pixel_mm = min(row_mm, col_mm)
    base_rows, base_cols = rows * row_mm / pixel_mm, cols * col_mm / pixel_mm
    gaps = PANEL_GAP * (panels - 1)
    fit = min((MAX_SIDE - gaps) / (panels * base_cols), (MAX_SIDE - strip_rows) / base_rows)
    enlarge = MIN_SIDE / max(base_cols, base_rows)
    scale = min(fit, max(1.0, enlarge))
    panel_rows, panel_cols = max(1, int(base_rows * scale)), max(1, int(base_cols * scale))
    return Layout(panel_rows, panel_cols, panel_rows / rows, panel_cols / cols)


def _resize(image: Image.Image, size: tuple[int, int], enlarging: bool, mask: bool = False) -> Image.Image:
    if mask:
        return image.resize(size, Image.Resampling.NEAREST if enlarging else Image.Resampling.BOX)
    return image.resize(size, Image.Resampling.BICUBIC if enlarging else Image.Resampling.LANCZOS)


def _outline(mask: np.ndarray, size: tuple[int, int], enlarging: bool) -> np.ndarray:
    """The boundary pixels of ``mask`` resampled to ``size`` (width, height); 2 px wide when enlarged."""
    resized = np.asarray(_resize(Image.fromarray(mask.astype(np.uint8) * 255), size, enlarging, mask=True)) > 0
    inner = ndimage.binary_erosion(resized, iterations=2 if enlarging else 1, border_value=0)
    return resized & ~inner


class _Canvas:
    """The preview being drawn: panels side by side (source, then derived), the banner strip below."""

    def __init__(self, panels: list[np.ndarray], geometry: Layout, strip_rows: int) -> None:
        width = len(panels) * geometry.panel_cols + PANEL_GAP * (len(panels) - 1)
        self.image = Image.new("RGB", (width, geometry.panel_rows + strip_rows))
        self.geometry = geometry
        enlarging = geometry.scale_x >= 1.0
        for number, grey in enumerate(panels):
            panel = _resize(Image.fromarray(grey), (geometry.panel_cols, geometry.panel_rows), enlarging)
            self.image.paste(panel.convert("RGB"), (number * (geometry.panel_cols + PANEL_GAP), 0))
        self.draw = ImageDraw.Draw(self.image)

    def outline(self, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
        size = (self.geometry.panel_cols, self.geometry.panel_rows)
        edge = _outline(mask, size, self.geometry.scale_x >= 1.0)
        pixels = np.array(self.image)
        pixels[: size[1], : size[0]][edge] = colour
        self.image.paste(Image.fromarray(pixels))

    def box(self, box: tuple[float, float, float, float], colour: tuple[int, int, int]) -> None:
        """A rectangle through the SCOORD box (pixel centres at +0.5), scaled to the panel."""
        c0, r0, c1, r1 = box
        g = self.geometry
        last_x, last_y = g.panel_cols - 1, g.panel_rows - 1
        x0, x1 = (min(last_x, int(math.floor(c * g.scale_x))) for c in (c0, c1))
        y0, y1 = (min(last_y, int(math.floor(r * g.scale_y))) for r in (r0, r1))
        self.draw.rectangle((x0, y0, x1, y1), outline=colour, width=2 if g.scale_x >= 2 else 1)

    def text(self, xy: tuple[int, int], text: str, colour: tuple[int, int, int], font, width: int) -> None:
        """Draw ``text`` at ``xy``, cut with "..." to fit ``width`` pixels."""
        if self.draw.textlength(text, font=font) > width:
            while text and self.draw.textlength(text + "...", font=font) > width:
                text = text[:-1]
            text += "..."
        self.draw.text(xy, text, fill=colour, font=font)


def banner_lines(result: ModelResult, volume: Volume, spec: ModelSpec, index: int,
                 box_colours: dict[str, tuple[int, int, int]]) -> list[tuple[str, tuple[int, int, int]]]:
    """The banner's (text, colour) lines: the model and the warning first, then what was found on ``index``."""
    lines = [(f"NOT FOR DIAGNOSTIC USE - {spec.name} {spec.version}", TEXT_COLOUR)]
    slice_text = f"slice {index + 1}/{volume.shape[0]}"
    present = {f.label for f in result.findings}
    if result.class_probabilities:
        ranked = sorted(result.class_probabilities.items(), key=lambda item: -item[1])
        for label, probability in ranked[: MAX_BANNER_LINES - 2]:
            mark = "PRESENT" if label in present else "absent"
            lines.append((f"{label}: {probability:.2f} ({mark})", OVERLAY_COLOURS[0] if label in present
                          else TEXT_COLOUR))
        if len(ranked) > MAX_BANNER_LINES - 2:
            lines.append((f"+{len(ranked) - (MAX_BANNER_LINES - 2)} more labels", TEXT_COLOUR))
    elif result.findings:
        noun = "finding" if len(result.findings) == 1 else "findings"
        parts = [f"{f.label} {f.probability:.2f}" if f.probability is not None else f.label for f in result.findings]
        lines.append((f"{len(result.findings)} {noun} ({slice_text}): " + ", ".join(parts), TEXT_COLOUR))
        if box_colours:
            for label, colour in list(box_colours.items())[: MAX_BANNER_LINES - 2]:
                lines.append((f"box: {label}", colour))
        else:
            for number, label in enumerate(result.segment_labels[: MAX_BANNER_LINES - 2]):
                lines.append((f"outline: {label}", OVERLAY_COLOURS[number % len(OVERLAY_COLOURS)]))
    elif result.derived_voxels is None:
        lines.append((f"No findings ({slice_text})", TEXT_COLOUR))
    if result.derived_voxels is not None:
        lines.append((f"left: source, right: {spec.name} output ({slice_text})", TEXT_COLOUR))
    return lines[:MAX_BANNER_LINES]


def _font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font, 13-16 px by the preview's width (smaller sizes lose their spaces)."""
    return ImageFont.load_default(size=max(13, min(16, width // 26)))


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    return int(font.getbbox("Ag")[3]) + 3


def _strip_rows(lines: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    return lines * _line_height(font) + 2 * STRIP_PADDING


def _check_shapes(result: ModelResult, volume: Volume, spec: ModelSpec) -> None:
    for name in ("label_map", "derived_voxels"):
        array = getattr(result, name)
        if array is not None and tuple(array.shape) != volume.shape:
            raise PluginError(f"model {spec.name!r}: {name} shape {tuple(array.shape)} != volume {volume.shape}")
    check_regions(result, volume, spec)


def render(result: ModelResult, volume: Volume, spec: ModelSpec) -> tuple[np.ndarray, int, tuple[float, float] | None]:
    """The preview as (rows, cols, 3) uint8, the slice index shown, and its pixel spacing (mm) when known."""
    _check_shapes(result, volume, spec)
    index = choose_slice(result, volume)
    source_index, frame = volume.frames[index]
    source = volume.sources[source_index]
    values = volume.stored[index].astype(np.float32) * np.float32(volume.slope) + np.float32(volume.intercept)
    centre, width = window(source, frame, values)
    invert = str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    panels = [to_grey(values, centre, width, invert)]
    if result.derived_voxels is not None:
        panels.append(to_grey(result.derived_voxels[index], centre, width, invert))

    box_colours: dict[str, tuple[int, int, int]] = {}
    for finding in result.findings:
        if any(r.slice_index == index for r in finding.regions) and finding.label not in box_colours:
            box_colours[finding.label] = OVERLAY_COLOURS[len(box_colours) % len(OVERLAY_COLOURS)]
    lines = banner_lines(result, volume, spec, index, box_colours)
    spacing = _source_pixel_spacing(source, frame)
    rows, cols = values.shape
    # the layout leaves room for the banner in the largest font; the font then follows the width
    aspect = spacing or _imager_pixel_spacing(source) or volume.spacing[1:]
    geometry = layout(rows, cols, aspect, len(panels), _strip_rows(len(lines), _font(MAX_SIDE)))
    font = _font(len(panels) * geometry.panel_cols)
    canvas = _Canvas(panels, geometry, _strip_rows(len(lines), font))

    if result.label_map is not None:
        for number in range(1, len(result.segment_labels) + 1):
            mask = result.label_map[index] == number
            if mask.any():
                canvas.outline(mask, OVERLAY_COLOURS[(number - 1) % len(OVERLAY_COLOURS)])
    for finding in result.findings:
        for region in finding.regions:
            if region.slice_index == index:
                canvas.box(region.box, box_colours[finding.label])

    for number, (text, colour) in enumerate(lines):
        y = geometry.panel_rows + STRIP_PADDING + number * _line_height(font)
        canvas.text((STRIP_PADDING, y), text, colour, font, canvas.image.width - 2 * STRIP_PADDING)
    out_spacing = None
    if spacing is not None:
        out_spacing = (spacing[0] / geometry.scale_y, spacing[1] / geometry.scale_x)
    return np.array(canvas.image), index, out_spacing


def _laterality(ds: Dataset) -> str | None:
    """The source's R/L (series or image) laterality; None for unpaired, both or unknown."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(ds.get(keyword, "") or "")
        if value in ("R", "L"):
            return value
    return None


def _source_reference(source: Dataset, frame: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if "NumberOfFrames" in source:
        item.ReferencedFrameNumber = frame
    return item


class PreviewWriter:
    """Writes ``preview.dcm``, an RGB Secondary Capture, for every result."""

    def write(self, result: ModelResult, volume: Volume, spec: ModelSpec) -> list[Artifact]:
        if not volume.sources:
            raise PluginError(f"model {spec.name!r}: the preview needs the source instances")
        pixels, index, spacing = render(result, volume, spec)
        source_index, frame = volume.frames[index]
        source = volume.sources[source_index]
        orientation = patient_orientation(source, frame)
        preview = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=result_uid(volume.series, spec, "preview-series"),
            series_number=result_series_number(spec.name, "preview"),
            sop_instance_uid=result_uid(volume.series, spec, "preview"),
            instance_number=1,
            manufacturer="ScanStream",
            pixel_spacing=spacing,
            laterality=_laterality(source),
            # highdicom requires letters for a PATIENT image; an unknown orientation is emptied below (Type 2)
            patient_orientation=orientation or ("L", "P"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            manufacturer_model_name=spec.name,
            software_versions=f"scanstream {__version__}; {spec.name} {spec.version}",
            device_serial_number="0",
            series_description=f"{spec.name} {spec.version} preview"[:64],
        )
        if orientation is None:
            preview.PatientOrientation = None
        if "Laterality" not in preview:
            preview.Laterality = None  # Type 2C: known for a paired body part only, so empty rather than absent
        preview.BurnedInAnnotation = "YES"
        preview.SourceImageSequence = [_source_reference(source, frame)]
        preview.DerivationDescription = f"{spec.name} {spec.version} result on slice {index + 1}, not for diagnosis"
        buffer = io.BytesIO()
        preview.save_as(buffer, enforce_file_format=True)
        log.info("output.preview.written", model=spec.name, rows=pixels.shape[0], cols=pixels.shape[1],
                 bytes=buffer.tell())
        return [Artifact(name="preview.dcm", data=buffer.getvalue(), media_type="application/dicom")]
