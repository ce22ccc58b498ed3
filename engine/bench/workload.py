"""What ``scanstream bench`` sends: generated phantom studies, or a folder of real DICOM replayed under new UIDs.

Every study sent gets fresh Study, Series and SOP Instance UIDs, so replaying
the same files never meets the engine's duplicate handling and every send is a
new study with its own result. Studies are written to disk before timing starts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series


@dataclass(frozen=True)
class Study:
    """One study on disk, ready to send: its files, UIDs, and per-series instance counts."""

    study_uid: str
    files: tuple[Path, ...]
    series: dict[str, int] = field(default_factory=dict)  # series UID -> instances
    nbytes: int = 0

    @property
    def instances(self) -> int:
        return len(self.files)


def _read_study(files: list[Path]) -> Study:
    series: dict[str, int] = defaultdict(int)
    study_uid = ""
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID",
                                                                               "SeriesInstanceUID"])
        study_uid = str(header.StudyInstanceUID)
        series[str(header.SeriesInstanceUID)] += 1
    return Study(study_uid, tuple(files), dict(series), sum(p.stat().st_size for p in files))


def reidentify(template: list[Path], out_dir: Path) -> Study:
    """Copy ``template`` (one study's files) to ``out_dir`` with new study, series and instance UIDs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    series_map: dict[str, str] = {}
    files = []
    for index, path in enumerate(template):
        dataset = pydicom.dcmread(path)
        old_series = str(dataset.SeriesInstanceUID)
        series_map.setdefault(old_series, generate_uid())
        sop_uid = generate_uid()
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_map[old_series]
        dataset.SOPInstanceUID = sop_uid
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
        target = out_dir / f"{index:05d}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        files.append(target)
    return _read_study(files)


def folder_templates(folder: Path) -> list[list[Path]]:
    """The DICOM files under ``folder`` grouped by study (non-DICOM files are ignored)."""
    studies: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        if "StudyInstanceUID" in header:
            studies[str(header.StudyInstanceUID)].append(path)
    if not studies:
        raise ValueError(f"no DICOM studies under {folder}")
    return list(studies.values())


def phantom_templates(out_dir: Path, variants: int, slices: int, size: int, seed: int) -> list[list[Path]]:
    """``variants`` different phantom CT series (each a study of one series) written under ``out_dir``."""
    return [write_ct_series(generate_ct_phantom(seed + i, slices=slices, size=size), out_dir / f"template-{i}")
            for i in range(variants)]


def prepare_studies(templates: list[list[Path]], count: int, out_dir: Path) -> list[Study]:
    """``count`` studies to send, cycling through ``templates``, each under new UIDs."""
    return [reidentify(templates[i % len(templates)], out_dir / f"study-{i:05d}") for i in range(count)]
