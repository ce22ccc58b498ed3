"""Generated phantom chest CT studies with known nodules: for the demo, training, tests and benchmarks.

Anatomy in Hounsfield units like real CT: air, an elliptical body with a fat
ring, two lungs crossed by vessel-like tubes (so a plain threshold is not a
nodule detector), spine and ribs, and spherical nodules inside the lungs; a
little in-plane blur (partial volume) and Gaussian noise. Fully vectorised and
deterministic per seed. ``write_ct_series`` writes one CT Image Storage file
per slice with real geometry, so the engine sees what a scanner sends::

    python -m engine.synthetic.ct_phantom OUT_DIR --seed 7
    storescu -aec SCANSTREAM 127.0.0.1 11112 OUT_DIR/*.dcm

Coordinates are DICOM patient coordinates (LPS, mm) with the isocentre at the
middle of the volume: x grows with the column index, y with the row index and
z with the slice index.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    UID,
    generate_uid,
)

# Tissue codes of CTPhantom.tissue and their nominal HU.
AIR, FAT, SOFT, LUNG, BONE, VESSEL, NODULE = range(7)
TISSUE_HU = {AIR: -1000.0, FAT: -100.0, SOFT: 40.0, LUNG: -850.0, BONE: 700.0, VESSEL: 40.0}
NODULE_HU_RANGE = (30.0, 60.0)
NODULE_RADIUS_MM = (3.0, 10.0)
MAX_RANDOM_NODULES = 3
CHEST_WALL_R, RIBS_R = 0.66, (0.74, 0.80)  # inner edges as squared normalised body radius
RESCALE_INTERCEPT = -1024
MAX_HU = 3071  # 12 stored bits: 0..4095 after the intercept
STANDARD_NOISE_HU = 20.0  # generate_ct_phantom's default noise: the "standard dose"
LOW_DOSE_FACTOR = 0.25  # low_dose_phantom's default dose, relative to the standard dose
LOW_DOSE_DESCRIPTION = "Phantom chest CT low dose"
WATER_MU_PER_MM = 0.019  # linear attenuation of water near 70 keV
_LOW_DOSE_STREAM = 0x10D05E  # second SeedSequence word: low-dose noise never repeats a phantom's own draws

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
COMPRESSED = (RLELossless, JPEG2000Lossless, JPEGLSLossless)
SYNTAX_NAMES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
}

Nodule = tuple[tuple[float, float, float], float]


@dataclass
class CTPhantom:
    """A phantom CT volume with its truth and geometry.

    ``hu`` (int16) and ``nodule_mask`` (bool) have shape (slices, rows, cols);
    ``tissue`` holds the tissue code of every voxel before blur and noise;
    ``nodules`` lists (centre (z, y, x) in patient mm, radius mm);
    ``spacing`` is (slice, row, col) mm and ``origin`` the (x, y, z) mm of the
    first slice's first voxel.
    """

    hu: np.ndarray
    nodule_mask: np.ndarray
    nodules: list[Nodule]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    tissue: np.ndarray


def _axes(slices: int, size: int, pixel_mm: float, slice_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable z, y, x voxel-centre coordinates (mm), centred on the isocentre."""
    z = ((np.arange(slices) - (slices - 1) / 2) * slice_mm).astype(np.float32)[:, None, None]
    y = ((np.arange(size) - (size - 1) / 2) * pixel_mm).astype(np.float32)[None, :, None]
    x = ((np.arange(size) - (size - 1) / 2) * pixel_mm).astype(np.float32)[None, None, :]
    return z, y, x


def _blur_in_plane(volume: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur along rows and columns: partial volume at tissue edges."""
    out = volume
    for axis in (1, 2):
        out = 0.25 * np.roll(out, 1, axis) + 0.5 * out + 0.25 * np.roll(out, -1, axis)
    return out


def _place_nodules(
    rng: np.random.Generator,
    lungs: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    count: int,
    radius_mm: tuple[float, float],
    attempts: int = 400,
) -> tuple[list[Nodule], np.ndarray]:
    """Draw non-touching spheres that lie wholly inside the lungs; returns them and their mask."""
    z, y, x = axes
    spacing = (float(z[1, 0, 0] - z[0, 0, 0]) if z.shape[0] > 1 else 1.0, float(y[0, 1, 0] - y[0, 0, 0]),
               float(x[0, 0, 1] - x[0, 0, 0]))
    origin = (float(z[0, 0, 0]), float(y[0, 0, 0]), float(x[0, 0, 0]))
    candidates = np.argwhere(lungs[:, ::4, ::4]) * np.array([1, 4, 4])
    mask = np.zeros(lungs.shape, dtype=bool)
    placed: list[Nodule] = []
    for _ in range(attempts):
        if len(placed) == count or not len(candidates):
            break
        radius = float(rng.uniform(*radius_mm))
        centre_index = candidates[int(rng.integers(len(candidates)))]
        centre = tuple(float(origin[a] + centre_index[a] * spacing[a] + rng.uniform(-0.5, 0.5) * spacing[a])
                       for a in range(3))
        if any(np.linalg.norm(np.subtract(centre, c)) < radius + r + 4.0 for c, r in placed):
            continue
        box = tuple(slice(max(0, int(np.floor((centre[a] - radius - origin[a]) / spacing[a]))),
                          int(np.ceil((centre[a] + radius - origin[a]) / spacing[a])) + 1) for a in range(3))
        sphere = ((z[box[0]] - centre[0]) ** 2 + (y[:, box[1]] - centre[1]) ** 2
                  + (x[:, :, box[2]] - centre[2]) ** 2) <= radius ** 2
        touches_edge = any(box[a].start == 0 or box[a].stop > lungs.shape[a] for a in range(3))
        if touches_edge or not sphere.any() or not lungs[box][sphere].all():
            continue
        placed.append((centre, radius))
        mask[box] |= sphere
    return placed, mask


def generate_ct_phantom(
    seed: int,
    *,
    slices: int = 48,
    size: int = 256,
    pixel_mm: float = 1.4,
    slice_mm: float = 2.5,
    nodules: int | None = None,
    noise_hu: float = 20.0,
    nodule_radius_mm: tuple[float, float] = NODULE_RADIUS_MM,
) -> CTPhantom:
    """A chest CT phantom, the same for the same arguments.

    ``nodules=None`` draws 0-3 nodules from the seed (fewer when small lungs
    cannot hold them); an explicit count that does not fit raises ValueError.
    Nodule radii are uniform in ``nodule_radius_mm``.
    """
    if slices < 1 or size < 16:
        raise ValueError(f"phantom needs at least 1 slice and 16x16 pixels, got {slices} x {size}")
    if not 0 < nodule_radius_mm[0] <= nodule_radius_mm[1]:
        raise ValueError(f"nodule radius range must be positive and ordered, got {nodule_radius_mm}")
    rng = np.random.default_rng(seed)
    z, y, x = _axes(slices, size, pixel_mm, slice_mm)
    fov = size * pixel_mm
    half_x, half_y = 0.42 * fov * rng.uniform(0.9, 1.0), 0.30 * fov * rng.uniform(0.9, 1.0)
    body_r = (x / half_x) ** 2 + (y / half_y) ** 2  # (1, H, W)
    z_half = max(slices * slice_mm / 2, 1e-3)
    taper = 1.0 - 0.25 * (z / z_half) ** 2  # lungs narrow towards apex and base
    lung_cx, lung_rx, lung_ry = 0.48 * half_x, 0.34 * half_x, 0.62 * half_y
    lungs = np.zeros((slices, size, size), dtype=bool)
    for side in (-1.0, 1.0):
        lungs |= (((x - side * lung_cx) / (lung_rx * taper)) ** 2
                  + ((y + 0.05 * half_y) / (lung_ry * taper)) ** 2) <= 1.0
    lungs &= body_r < CHEST_WALL_R  # chest wall (soft tissue) between the lungs and the ribs
    spine = (x ** 2 + (y - 0.62 * half_y) ** 2) <= (0.11 * half_y) ** 2
    ribs = (body_r > RIBS_R[0]) & (body_r < RIBS_R[1]) & (np.cos(np.arctan2(y, x) * 9 + z / 12.0) > 0.55)
    vessels = np.zeros_like(lungs)
    for _ in range(int(rng.integers(4, 9))):
        side = float(rng.choice([-1.0, 1.0]))
        x0, y0 = side * lung_cx + rng.uniform(-0.5, 0.5) * lung_rx, rng.uniform(-0.5, 0.5) * lung_ry
        dx, dy = rng.uniform(-0.6, 0.6, size=2)
        radius = rng.uniform(1.0, 2.2)
        vessels |= ((x - x0 - dx * z) ** 2 + (y - y0 - dy * z) ** 2) <= radius ** 2

    tissue = np.full((slices, size, size), AIR, dtype=np.uint8)
    tissue[np.broadcast_to(body_r <= 1.0, tissue.shape)] = FAT
    tissue[np.broadcast_to(body_r <= 0.86, tissue.shape)] = SOFT
    tissue[lungs] = LUNG
    tissue[np.broadcast_to(spine | ribs, tissue.shape)] = BONE
    tissue[vessels & lungs] = VESSEL

    count = int(rng.integers(0, MAX_RANDOM_NODULES + 1)) if nodules is None else nodules
    placed, mask = _place_nodules(rng, lungs, (z, y, x), count, nodule_radius_mm)
    if nodules is not None and len(placed) < nodules:
        raise ValueError(f"only {len(placed)} of {nodules} nodules fit in a {slices}x{size}x{size} phantom")
    tissue[mask] = NODULE

    lut = np.array([TISSUE_HU[t] for t in (AIR, FAT, SOFT, LUNG, BONE, VESSEL)]
                   + [rng.uniform(*NODULE_HU_RANGE)], dtype=np.float32)
    hu = _blur_in_plane(lut[tissue]) + rng.normal(0.0, noise_hu, size=tissue.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), RESCALE_INTERCEPT, MAX_HU).astype(np.int16)
    return CTPhantom(
        hu=hu,
        nodule_mask=mask,
        nodules=placed,
        spacing=(float(slice_mm), float(pixel_mm), float(pixel_mm)),
        origin=(float(x[0, 0, 0]), float(y[0, 0, 0]), float(z[0, 0, 0])),
        tissue=tissue,
    )


def dose_noise_weight(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Relative noise variance per voxel of a (S, H, W) HU volume: mean 1 over the body, float32.

    Quantum noise in a projection has variance ~ 1 / photons ~ exp(line integral
    of attenuation); filtered back-projection spreads each ray's variance along
    it. Approximated with the two in-plane ray directions through each voxel
    (along its row and along its column): variance ~ the mean of the two rays'
    exp(attenuation), so noise is higher in the body's middle and behind bone,
    lower near the skin. Normalised so body voxels (HU > -500) average 1.
    """
    hu = np.asarray(hu, dtype=np.float32)
    mu = np.clip(WATER_MU_PER_MM * (1.0 + hu / 1000.0), 0.0, None) * np.float32(pixel_mm)
    along_rows = np.exp(mu.sum(axis=2, keepdims=True))  # (S, H, 1): the ray along each row
    along_cols = np.exp(mu.sum(axis=1, keepdims=True))  # (S, 1, W): the ray along each column
    weight = 0.5 * (along_rows + along_cols)
    body = hu > -500.0
    scale = float(weight[body].mean()) if body.any() else float(weight.mean())
    return (weight / np.float32(scale)).astype(np.float32)


def low_dose_phantom(
    phantom: CTPhantom,
    seed: int,
    *,
    dose: float = LOW_DOSE_FACTOR,
    standard_noise_hu: float = STANDARD_NOISE_HU,
) -> CTPhantom:
    """The same phantom scanned at ``dose`` times the standard dose: more noise, same anatomy and truth.

    Noise standard deviation scales as 1 / sqrt(dose), so on average over the
    body the result has ``standard_noise_hu / sqrt(dose)`` HU of noise when
    ``phantom`` was generated with ``noise_hu=standard_noise_hu``: the extra
    Gaussian noise has variance ``standard_noise_hu**2 * (1 / dose - 1)``
    times :func:`dose_noise_weight` (Poisson-like: more where rays are more
    attenuated). Deterministic per (phantom, seed, dose); ``dose=1`` returns
    the same values. Write it with ``write_ct_series(...,
    series_description=LOW_DOSE_DESCRIPTION)``.
    """
    if not 0.0 < dose <= 1.0:
        raise ValueError(f"dose must be in (0, 1] (a fraction of the standard dose), got {dose}")
    if standard_noise_hu < 0.0:
        raise ValueError(f"standard_noise_hu must be >= 0, got {standard_noise_hu}")
    rng = np.random.default_rng((seed, _LOW_DOSE_STREAM))
    sigma = np.float32(standard_noise_hu * np.sqrt(1.0 / dose - 1.0)) * np.sqrt(
        dose_noise_weight(phantom.hu, phantom.spacing[1]))
    noisy = phantom.hu.astype(np.float32) + rng.standard_normal(phantom.hu.shape, dtype=np.float32) * sigma
    hu = np.clip(np.rint(noisy), RESCALE_INTERCEPT, MAX_HU).astype(np.int16)
    return dataclasses.replace(phantom, hu=hu)


def _series_template(phantom: CTPhantom, study_uid: str, series_uid: str, patient_id: str, patient_name: str,
                     series_description: str, body_part: str) -> Dataset:
    """Attributes shared by every slice of the series (patient, study, series, equipment, image pixel)."""
    ds = Dataset()
    when = datetime.datetime(2026, 1, 1, 12, 0, 0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), ""
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "PHANTOM1", ""
    ds.Modality, ds.SeriesNumber, ds.AcquisitionNumber = "CT", 1, 1
    ds.SeriesDescription, ds.BodyPartExamined, ds.PatientPosition = series_description, body_part, "HFS"
    ds.Manufacturer, ds.ManufacturerModelName = "ScanStream", "Phantom"
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


def check_transfer_syntax(transfer_syntax: str) -> UID:
    """The syntax as a UID when this installation can write it, else ValueError saying why."""
    uid = UID(transfer_syntax)
    if uid in UNCOMPRESSED:
        return uid
    if uid not in COMPRESSED:
        known = ", ".join(f"{u.name} ({u})" for u in (*UNCOMPRESSED, *COMPRESSED))
        raise ValueError(f"cannot write transfer syntax {uid!r}; supported: {known}")
    encoder = get_encoder(uid)
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies) or "no plugin installed"
        raise ValueError(f"no encoder for {uid.name} is available ({missing})")
    return uid


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
    """Write one CT Image Storage Part-10 file per slice (``slice_0001.dcm`` ...); returns the paths.

    Pixels are stored as 12-bit unsigned values with RescaleIntercept -1024, so
    stored value + intercept is the phantom's HU exactly, in every syntax.
    """
    syntax = check_transfer_syntax(transfer_syntax)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = _series_template(phantom, study_uid or generate_uid(), series_uid or generate_uid(), patient_id,
                                patient_name, series_description, body_part)
    stored = (phantom.hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    z0 = phantom.origin[2]
    paths = []
    for index in range(stored.shape[0]):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [phantom.origin[0], phantom.origin[1], z0 + index * phantom.spacing[0]]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax if syntax in UNCOMPRESSED else ExplicitVRLittleEndian
        if syntax in COMPRESSED:
            ds.compress(syntax, stored[index], generate_instance_uid=False)
        else:
            ds.PixelData = stored[index].tobytes()
        path = out_dir / f"slice_{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write a phantom study: ``python -m engine.synthetic.ct_phantom OUT_DIR [--seed N] [--nodules K] [--syntax rle]``.

    ``--low-dose D`` writes its low-dose version (:func:`low_dose_phantom`) for the ``ct-denoise`` model.
    """
    parser = argparse.ArgumentParser(description="Write a phantom chest CT series as DICOM files")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--nodules", type=int, default=None, help="number of nodules (default: 0-3 from the seed)")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--syntax", choices=sorted(SYNTAX_NAMES), default="explicit")
    parser.add_argument("--low-dose", type=float, default=None, metavar="DOSE",
                        help=f"write a low-dose version instead (DOSE in (0, 1], e.g. {LOW_DOSE_FACTOR}), "
                             f"described {LOW_DOSE_DESCRIPTION!r}")
    args = parser.parse_args(argv)
    phantom = generate_ct_phantom(args.seed, nodules=args.nodules, slices=args.slices, size=args.size)
    extra = {}
    if args.low_dose is not None:
        phantom = low_dose_phantom(phantom, args.seed, dose=args.low_dose)
        extra["series_description"] = LOW_DOSE_DESCRIPTION
    paths = write_ct_series(phantom, args.out_dir, transfer_syntax=SYNTAX_NAMES[args.syntax], **extra)
    print(f"wrote {len(paths)} slices ({SYNTAX_NAMES[args.syntax].name}) with {len(phantom.nodules)} nodule(s) "
          f"to {args.out_dir}")
    for (z, y, x), radius in phantom.nodules:
        print(f"  nodule radius {radius:.1f} mm at (x, y, z) = ({x:.1f}, {y:.1f}, {z:.1f}) mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
