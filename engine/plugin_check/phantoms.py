"""The built-in phantom series a check runs a model on: CT, low-dose CT, then a radiograph."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from engine.api import SeriesInfo, Volume

PHANTOM_SEED = 90210  # never used for training the built-in models
PHANTOM_SLICES = 16  # enough for selectors that want a volume (the built-ins take >= 8), quick on a CPU
PHANTOM_NODULES = 2  # something to find, so SEG and SR writers have content
CALLING_AE = "SCANSTREAM_SCU"  # what `scanstream send` calls itself


@dataclass
class PhantomSeries:
    """A built-in phantom series written as DICOM and decoded as a worker would."""

    label: str
    info: SeriesInfo
    files: list[Path]

    def volume(self) -> Volume:
        """A fresh :class:`Volume` each call (handlers may modify what they are given)."""
        from engine.worker.decode import decode_series

        return decode_series([path.read_bytes() for path in self.files], self.info)


def series_info_of(files: list[Path], calling_ae: str = CALLING_AE) -> SeriesInfo:
    """The :class:`SeriesInfo` the receiver's ledger would give a series of these files."""
    import pydicom

    from engine.ledger.store import InstanceMeta

    metas = [InstanceMeta.from_dataset(pydicom.dcmread(path, stop_before_pixels=True)) for path in files]
    first = metas[0]
    return SeriesInfo(study_uid=first.study_uid, series_uid=first.series_uid, modality=first.modality,
                      sop_class_uid=first.sop_class_uid, body_part=first.body_part,
                      series_description=first.series_description, calling_ae=calling_ae,
                      instance_count=len(metas), frame_count=sum(m.number_of_frames or 1 for m in metas))


def _ct_phantom(folder: Path) -> list[Path]:
    from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series

    phantom = generate_ct_phantom(PHANTOM_SEED, slices=PHANTOM_SLICES, nodules=PHANTOM_NODULES,
                                  nodule_radius_mm=(5.0, 8.0))
    return write_ct_series(phantom, folder)


def _low_dose_ct_phantom(folder: Path) -> list[Path]:
    from engine.synthetic.ct_phantom import LOW_DOSE_DESCRIPTION, generate_ct_phantom, low_dose_phantom, write_ct_series

    phantom = generate_ct_phantom(PHANTOM_SEED, slices=PHANTOM_SLICES, nodules=PHANTOM_NODULES,
                                  nodule_radius_mm=(5.0, 8.0))
    return write_ct_series(low_dose_phantom(phantom, PHANTOM_SEED), folder, series_description=LOW_DOSE_DESCRIPTION)


def _dx_phantom(folder: Path) -> list[Path]:
    module = importlib.import_module("engine.synthetic.dx_phantom")
    return [module.write_dx_image(module.generate_dx_phantom(PHANTOM_SEED), folder)]


PHANTOM_MAKERS: tuple[tuple[str, Callable[[Path], list[Path]]], ...] = (
    ("CT phantom (engine.synthetic.ct_phantom)", _ct_phantom),
    ("low-dose CT phantom (engine.synthetic.ct_phantom)", _low_dose_ct_phantom),
    ("DX phantom (engine.synthetic.dx_phantom)", _dx_phantom),
)


class PhantomCache:
    """Writes each built-in phantom once per check run, on first use."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._made: dict[str, PhantomSeries | str] = {}

    def candidates(self) -> Iterator[PhantomSeries | str]:
        """Each phantom series, or why it is unavailable here."""
        for index, (label, maker) in enumerate(PHANTOM_MAKERS):
            if label not in self._made:
                try:
                    files = maker(self._folder / f"phantom{index}")
                    self._made[label] = PhantomSeries(label, series_info_of(files), files)
                except ImportError as error:
                    self._made[label] = f"{label} unavailable: {error}"
            yield self._made[label]


def describe_series(info: SeriesInfo) -> str:
    return (f"modality={info.modality} body_part={info.body_part or '-'} instances={info.instance_count} "
            f"frames={info.frame_count} sop_class={info.sop_class_uid} description={info.series_description!r} "
            f"calling_ae={info.calling_ae}")
