"""Generated phantom chest CT studies with known nodules: for the demo, training and tests.

Anatomy in Hounsfield units like real CT: air, an elliptical body with a fat
ring, two lungs with vessel-like tubes, spine and ribs, and spherical nodules
inside the lungs; a little blur (partial volume) and Gaussian noise. Fully
vectorised and deterministic per seed. ``write_ct_series`` writes one CT Image
Storage file per slice with real geometry, so the engine sees what a scanner sends.

    python -m engine.phantom OUT_DIR --seed 7
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

HU_AIR, HU_FAT, HU_SOFT, HU_LUNG, HU_BONE, HU_VESSEL = -1000, -100, 40, -850, 700, 40
RESCALE_INTERCEPT = -1024
COMPRESSED = (RLELossless, JPEG2000Lossless)


@dataclass
class CTPhantom:
    """A phantom volume (slices, rows, cols) in HU with its truth and geometry."""

    hu: np.ndarray
    nodule_mask: np.ndarray
    nodules: list[tuple[tuple[float, float, float], float]] = field(default_factory=list)
    spacing: tuple[float, float, float] = (2.5, 1.4, 1.4)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _blur(volume: np.ndarray) -> np.ndarray:
    """A separable [1, 2, 1]/4 blur in-plane: partial volume at edges, vectorised."""
    out = volume.copy()
    for axis in (1, 2):
        out = 0.25 * np.roll(out, 1, axis) + 0.5 * out + 0.25 * np.roll(out, -1, axis)
    return out


def generate_ct_phantom(
    seed: int,
    *,
    slices: int = 48,
    size: int = 256,
    pixel_mm: float = 1.4,
    slice_mm: float = 2.5,
    nodules: int | None = None,
    noise_hu: float = 20.0,
) -> CTPhantom:
    """A chest CT phantom; ``nodules=None`` draws 0-3 nodules from the seed."""
    rng = np.random.default_rng(seed)
    z = (np.arange(slices) * slice_mm)[:, None, None]
    y = ((np.arange(size) - size / 2 + 0.5) * pixel_mm)[None, :, None]
    x = ((np.arange(size) - size / 2 + 0.5) * pixel_mm)[None, None, :]
    half_x, half_y = 0.42 * size * pixel_mm * rng.uniform(0.9, 1.0), 0.30 * size * pixel_mm * rng.uniform(0.9, 1.0)
    body_r = (x / half_x) ** 2 + (y / half_y) ** 2
    hu = np.full((slices, size, size), HU_AIR, dtype=np.float32)
    hu = np.where(body_r <= 1.0, HU_FAT, hu)
    hu = np.where(body_r <= 0.86, HU_SOFT, hu)
    lung_cx, lung_rx, lung_ry = 0.48 * half_x, 0.34 * half_x, 0.62 * half_y
    z_mid, z_len = slices * slice_mm / 2, slices * slice_mm
    taper = 1.0 - 0.25 * ((z - z_mid) / (z_len / 2)) ** 2
    lungs = np.zeros_like(hu, dtype=bool)
    for side in (-1, 1):
        lungs |= ((x - side * lung_cx) / (lung_rx * taper)) ** 2 + ((y + 0.05 * half_y) / (lung_ry * taper)) ** 2 <= 1
    hu = np.where(lungs, HU_LUNG, hu)
    spine = (x ** 2 + (y - 0.62 * half_y) ** 2) <= (0.11 * half_y) ** 2
    ribs_ring = (body_r > 0.74) & (body_r < 0.80) & (np.cos(np.arctan2(y, x) * 9 + z / 12.0) > 0.55)
    hu = np.where(spine | ribs_ring, HU_BONE, hu)
    vessels = np.zeros_like(lungs)
    for _ in range(int(rng.integers(3, 7))):
        side = rng.choice([-1, 1])
        x0, y0 = side * lung_cx + rng.uniform(-0.5, 0.5) * lung_rx, rng.uniform(-0.5, 0.5) * lung_ry
        dx, dy = rng.uniform(-0.6, 0.6, size=2)
        radius = rng.uniform(1.0, 2.2)
        vessels |= ((x - x0 - dx * (z - z_mid)) ** 2 + (y - y0 - dy * (z - z_mid)) ** 2) <= radius ** 2
    hu = np.where(vessels & lungs, HU_VESSEL, hu)
    count = int(rng.integers(0, 4)) if nodules is None else nodules
    mask = np.zeros_like(lungs)
    placed: list[tuple[tuple[float, float, float], float]] = []
    attempts = 0
    while len(placed) < count and attempts < 200:
        attempts += 1
        radius = float(rng.uniform(3.0, 10.0))
        side = rng.choice([-1, 1])
        center = (float(rng.uniform(0.25, 0.75) * z_len),
                  float(rng.uniform(-0.5, 0.4) * lung_ry),
                  float(side * lung_cx + rng.uniform(-0.45, 0.45) * lung_rx))
        sphere = ((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2) <= radius ** 2
        inside = (sphere & lungs).sum() == sphere.sum() and sphere.any()
        apart = all(np.linalg.norm(np.subtract(center, c)) > radius + r + 4 for c, r in placed)
        if inside and apart:
            placed.append((center, radius))
            mask |= sphere
    hu = np.where(mask, rng.uniform(30, 60), hu)
    hu = _blur(hu) + rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), RESCALE_INTERCEPT, 3071).astype(np.int16)
    origin = (float(x.min()), float(y.min()), 0.0)
    return CTPhantom(hu=hu, nodule_mask=mask, nodules=placed, spacing=(slice_mm, pixel_mm, pixel_mm), origin=origin)


def _series_dataset(phantom: CTPhantom, study_uid: str, series_uid: str, frame_uid: str, patient_id: str,
                    patient_name: str, series_description: str, body_part: str) -> Dataset:
    ds = Dataset()
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "PHANTOM1", ""
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.BodyPartExamined = "CT", 1, series_description, body_part
    ds.Manufacturer, ds.ManufacturerModelName = "ScanStream", "Phantom"
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [phantom.spacing[1], phantom.spacing[2]]
    ds.SliceThickness = phantom.spacing[0]
    ds.ImagesInAcquisition = phantom.hu.shape[0]
    ds.Rows, ds.Columns = phantom.hu.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.KVP = 120
    return ds


def write_ct_series(
    phantom: CTPhantom,
    out_dir: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^Test",
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_description: str = "Phantom chest CT",
    body_part: str = "CHEST",
) -> list[Path]:
    """Write one CT Image Storage file per slice (``slice_0001.dcm`` ...); returns the paths."""
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, *COMPRESSED):
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}; use explicit/implicit LE, RLE or J2K lossless")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    template = _series_dataset(phantom, study_uid, series_uid, generate_uid(), patient_id, patient_name,
                               series_description, body_part)
    stored = (phantom.hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    paths = []
    for index in range(phantom.hu.shape[0]):
        ds = Dataset()
        ds.update(template)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [phantom.origin[0], phantom.origin[1], phantom.origin[2] + index * phantom.spacing[0]]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored[index].tobytes()
        if transfer_syntax in COMPRESSED:
            ds.compress(transfer_syntax, stored[index])
        else:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        path = out_dir / f"slice_{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write a phantom study: ``python -m engine.phantom OUT_DIR [--seed N] [--nodules K]``."""
    parser = argparse.ArgumentParser(description="Write a phantom chest CT series as DICOM files")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--nodules", type=int, default=None)
    parser.add_argument("--slices", type=int, default=48)
    args = parser.parse_args(argv)
    phantom = generate_ct_phantom(args.seed, nodules=args.nodules, slices=args.slices)
    paths = write_ct_series(phantom, args.out_dir)
    print(f"wrote {len(paths)} slices with {len(phantom.nodules)} nodule(s) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
