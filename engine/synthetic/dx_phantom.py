"""Generated PA chest radiographs (DX) with known nodules, projected from the phantom chest CT.

The CT phantom (:func:`engine.synthetic.ct_phantom.generate_ct_phantom`) is turned into
linear attenuation (``mu = mu_water * (1 + HU / 1000)``), integrated along the
anterior-posterior axis (the CT row axis, y) as a parallel-beam projection,
resampled to square pixels with the head at the top, blurred a little
(detector spread), given Poisson quantum noise (Beer-Lambert transmission times
a photon count per pixel) and log-transformed back to a display image: high
values attenuate more, so bone is bright and lung dark (MONOCHROME2). A
nodule's truth is its (row, col) centre and radius in the image.

Visibility: a nodule adds ``2 * r * (mu_nodule - mu_lung)`` (about 0.018 per mm
of path) to the line integral at its centre against quantum noise of about
0.04 per pixel in the lungs at the default dose, so nodules of 5 mm radius
and more stand out, while 3 mm ones (two pixels of 1.4 mm) hide among
vessels, ribs and the mediastinum edge, as on a real radiograph. ``write_dx_image`` writes one Digital X-Ray Image
Storage - For Presentation file::

    python -m engine.synthetic.dx_phantom OUT_DIR --seed 7
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from engine.synthetic.ct_phantom import NODULE_RADIUS_MM, CTPhantom, generate_ct_phantom

MU_WATER_PER_MM = 0.02  # linear attenuation of water at an effective energy of about 60 keV (0.2 / cm)
DEFAULT_SLICES = 96  # 96 slices of 2.5 mm: a 24 cm chest, lung apex to base
DEFAULT_PHOTONS = 4000.0  # mean photons per pixel before the patient: the quantum noise level
DETECTOR_BLUR_PX = 0.6  # Gaussian sigma of the detector's point spread, in pixels
STORED_PER_UNIT = 500.0  # stored value per unit of line integral (12 bits hold 0..8.19)
STORED_BITS = 12
CHEST_CODE = ("SCT", "51185008", "Chest")  # SNOMED CT code DICOM uses for BodyPartExamined CHEST


@dataclass(frozen=True)
class DXNodule:
    """A nodule as the radiograph shows it: centre (row, col) in pixels (pixel centres at integers), radius."""

    row: float
    col: float
    radius_px: float
    radius_mm: float


@dataclass
class DXPhantom:
    """A phantom radiograph with its truth.

    ``image`` (uint16, ``STORED_BITS`` bits, shape (rows, cols)) is what the DICOM
    file stores: ``STORED_PER_UNIT`` times the noisy line integral; ``line_integral``
    is the noise-free one (float32); ``pixel_mm`` is the square pixel size;
    ``nodules`` the truth in image coordinates, head at row 0 and the patient's
    right on the left (column 0), as a PA chest film is read.
    """

    image: np.ndarray
    line_integral: np.ndarray
    pixel_mm: float
    nodules: list[DXNodule] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return int(self.image.shape[0]), int(self.image.shape[1])


def attenuation_per_mm(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm, float32) of Hounsfield units: ``mu_water * (1 + HU / 1000)``, never negative."""
    mu = np.float32(MU_WATER_PER_MM) * (1.0 + hu.astype(np.float32) / np.float32(1000.0))
    return np.maximum(mu, 0.0, out=mu)


def project(ct: CTPhantom) -> tuple[np.ndarray, float]:
    """Noise-free line integrals (rows, cols) of a CT phantom along y, head at the top, square pixels.

    The (slices, cols) projection is resampled linearly along z to the column
    pixel size and flipped so the most superior slice (largest z) is row 0.
    Returns the image and its pixel size in mm.
    """
    slice_mm, row_mm, col_mm = ct.spacing
    coronal = attenuation_per_mm(ct.hu).sum(axis=1, dtype=np.float32) * np.float32(row_mm)  # (slices, cols)
    slices = coronal.shape[0]
    rows = max(1, int(round(slices * slice_mm / col_mm)))
    top = (slices - 1) * slice_mm + slice_mm / 2  # superior edge, in mm above the first slice's centre
    z = top - (np.arange(rows) + 0.5) * col_mm  # row centres, mm above the first slice's centre
    position = np.clip(z / slice_mm, 0.0, slices - 1.0)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, slices - 1)
    weight = (position - low).astype(np.float32)[:, None]
    return (coronal[low] * (1.0 - weight) + coronal[high] * weight).astype(np.float32), float(col_mm)


def nodule_truth(ct: CTPhantom, pixel_mm: float) -> list[DXNodule]:
    """Each CT nodule's centre and radius in the projection made by :func:`project`."""
    slice_mm = ct.spacing[0]
    slices = ct.hu.shape[0]
    z_first, x_first = ct.origin[2], ct.origin[0]
    top = z_first + (slices - 1) * slice_mm + slice_mm / 2
    truth = []
    for (z, _, x), radius in ct.nodules:
        truth.append(DXNodule(row=(top - z) / pixel_mm - 0.5, col=(x - x_first) / pixel_mm,
                              radius_px=radius / pixel_mm, radius_mm=float(radius)))
    return truth


def expose(line_integral: np.ndarray, rng: np.random.Generator, photons: float = DEFAULT_PHOTONS,
           blur_px: float = DETECTOR_BLUR_PX) -> np.ndarray:
    """Beer-Lambert transmission, detector blur, Poisson counts, and the log back to a noisy line integral."""
    if photons <= 0:
        raise ValueError(f"photons per pixel must be positive, got {photons}")
    transmitted = np.exp(-line_integral.astype(np.float64))
    if blur_px > 0:
        transmitted = ndimage.gaussian_filter(transmitted, blur_px, mode="nearest")
    counts = rng.poisson(photons * transmitted)
    return (-np.log(np.maximum(counts, 0.5) / photons)).astype(np.float32)


def to_stored(noisy: np.ndarray) -> np.ndarray:
    """Noisy line integrals to ``STORED_BITS``-bit unsigned stored values (``STORED_PER_UNIT`` per unit)."""
    limit = (1 << STORED_BITS) - 1
    return np.clip(np.rint(noisy * STORED_PER_UNIT), 0, limit).astype(np.uint16)


def render_dx(ct: CTPhantom, rng: np.random.Generator, *, photons: float = DEFAULT_PHOTONS,
              blur_px: float = DETECTOR_BLUR_PX) -> DXPhantom:
    """Project ``ct`` to a PA radiograph with quantum noise drawn from ``rng``, keeping the nodule truth."""
    line_integral, pixel_mm = project(ct)
    image = to_stored(expose(line_integral, rng, photons, blur_px))
    return DXPhantom(image=image, line_integral=line_integral, pixel_mm=pixel_mm,
                     nodules=nodule_truth(ct, pixel_mm))


def generate_dx_phantom(
    seed: int,
    *,
    slices: int = DEFAULT_SLICES,
    size: int = 256,
    pixel_mm: float = 1.4,
    slice_mm: float = 2.5,
    nodules: int | None = None,
    nodule_radius_mm: tuple[float, float] = NODULE_RADIUS_MM,
    photons: float = DEFAULT_PHOTONS,
) -> DXPhantom:
    """A PA chest radiograph of ``generate_ct_phantom(seed, ...)``, the same for the same arguments.

    The CT is generated without its own noise (``noise_hu=0``): the radiograph's
    noise is the quantum noise of :func:`expose`, drawn from a generator seeded
    by ``seed`` too. The image has ``round(slices * slice_mm / pixel_mm)`` rows
    and ``size`` columns of ``pixel_mm``.
    """
    ct = generate_ct_phantom(seed, slices=slices, size=size, pixel_mm=pixel_mm, slice_mm=slice_mm,
                             nodules=nodules, noise_hu=0.0, nodule_radius_mm=nodule_radius_mm)
    return render_dx(ct, np.random.default_rng([seed, 1]), photons=photons)


def _code_item(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def dx_dataset(
    phantom: DXPhantom,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^Test",
    series_description: str = "Phantom chest PA",
) -> Dataset:
    """The radiograph as a Digital X-Ray Image Storage - For Presentation dataset (with file meta)."""
    rows, cols = phantom.shape
    ds = Dataset()
    when = datetime.datetime(2026, 1, 1, 12, 0, 0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), series_uid or generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "PHANTOM1", ""
    ds.Modality, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "DX", 1, 1, 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesDescription, ds.BodyPartExamined = series_description, "CHEST"
    ds.Manufacturer, ds.ManufacturerModelName = "ScanStream", "Phantom"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    # DX anatomy and positioning: a PA chest read with the head up and the patient's right on the left.
    ds.AnatomicRegionSequence = Sequence([_code_item(*CHEST_CODE)])
    ds.ImageLaterality = "U"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.AcquisitionContextSequence = Sequence()
    # DX detector: a parallel-beam projection has no magnification, so both spacings agree.
    ds.ImagerPixelSpacing = [phantom.pixel_mm, phantom.pixel_mm]
    ds.PixelSpacing = [phantom.pixel_mm, phantom.pixel_mm]
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    ds.DetectorType = "SCINTILLATOR"
    # DX image pixels: log-transformed, higher values mean less beam intensity, displayed as they are.
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, STORED_BITS, STORED_BITS - 1, 0
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    body = phantom.image[phantom.image > 0.2 * STORED_PER_UNIT]
    low, high = np.percentile(body, (1, 99)) if body.size else (0.0, float((1 << STORED_BITS) - 1))
    ds.WindowCenter, ds.WindowWidth = round(float(low + high) / 2, 1), round(max(float(high - low), 1.0), 1)
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.KVP = 120
    ds.PixelData = phantom.image.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_dx_image(
    phantom: DXPhantom,
    out_dir: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^Test",
    series_description: str = "Phantom chest PA",
) -> Path:
    """Write the radiograph as one Part-10 file ``out_dir/dx_0001.dcm`` and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = dx_dataset(phantom, study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_instance_uid,
                    patient_id=patient_id, patient_name=patient_name, series_description=series_description)
    path = out_dir / "dx_0001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write a phantom radiograph: ``python -m engine.synthetic.dx_phantom OUT_DIR [--seed N] [--nodules K] [--slices S]``."""
    parser = argparse.ArgumentParser(description="Write a phantom PA chest radiograph as one DICOM DX file")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--nodules", type=int, default=None, help="number of nodules (default: 0-3 from the seed)")
    parser.add_argument("--slices", type=int, default=DEFAULT_SLICES, help="CT slices of 2.5 mm projected")
    parser.add_argument("--size", type=int, default=256, help="CT columns (and rows) of 1.4 mm")
    parser.add_argument("--photons", type=float, default=DEFAULT_PHOTONS, help="photons per pixel (noise level)")
    args = parser.parse_args(argv)
    phantom = generate_dx_phantom(args.seed, slices=args.slices, size=args.size, nodules=args.nodules,
                                  photons=args.photons)
    path = write_dx_image(phantom, args.out_dir)
    rows, cols = phantom.shape
    print(f"wrote {path} ({rows} x {cols} pixels of {phantom.pixel_mm} mm) with {len(phantom.nodules)} nodule(s)")
    for nodule in phantom.nodules:
        print(f"  nodule radius {nodule.radius_mm:.1f} mm at (row, col) = ({nodule.row:.1f}, {nodule.col:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
