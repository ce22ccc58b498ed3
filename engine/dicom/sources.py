"""A series' source instances for the writers: pydicom datasets built on first use, header facts at once.

A job's outputs need few full source datasets (the preview one, a SEG those
of its segmented planes), yet building all of them (every top-level element
kept as a raw element, a pydicom dataset per file) was half of decoding a
series (~13 ms of ~27 for 48 CT slices). The decode walks each file once,
keeping only :data:`SOURCE_HEADER_TAGS`; a dataset is built from the file when
a writer first asks for it, by the same walk :func:`~engine.dicom.walk.read_part10`
does, so it is the dataset an eager decode would have given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from engine.dicom.values import RawHeader
from engine.dicom.walk import read_part10
from engine.dicom.fast_header import FAST_HEADER_TAGS

# What the writers read of every source without needing the dataset: the references and positions of a SEG.
SOURCE_HEADER_TAGS = FAST_HEADER_TAGS | {BaseTag(tag) for tag in (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)}


class SourceInstances(Sequence[Dataset]):
    """The instances of a series in arrival order: ``[i]`` is the pydicom dataset (built once, on first use),
    :meth:`header` the elements of :data:`SOURCE_HEADER_TAGS` already walked."""

    def __init__(self, blobs: Sequence[bytes | memoryview], headers: Sequence[dict[BaseTag, RawDataElement]]) -> None:
        if len(blobs) != len(headers):
            raise ValueError("one header per instance")
        self._blobs = list(blobs)
        self._headers = list(headers)
        self._datasets: list[Dataset | None] = [None] * len(self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)

    @overload
    def __getitem__(self, index: int) -> Dataset: ...

    @overload
    def __getitem__(self, index: slice) -> list[Dataset]: ...

    def __getitem__(self, index: int | slice) -> Dataset | list[Dataset]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        dataset = self._datasets[index]
        if dataset is None:
            dataset = self._datasets[index] = self._read(index)
        return dataset

    def _read(self, index: int) -> Dataset:
        read = read_part10(self._blobs[index])
        if read is None:  # the same walk accepted these bytes when the series was decoded
            raise RuntimeError(f"source instance {index} no longer reads as a Part-10 file")
        return read.dataset

    def header(self, index: int) -> RawHeader:
        """The instance's header facts (:data:`SOURCE_HEADER_TAGS`) without building its dataset."""
        return RawHeader(self._headers[index])

    def built(self) -> int:
        """How many datasets were built so far (for tests and diagnostics)."""
        return sum(dataset is not None for dataset in self._datasets)


def source_header(sources: Sequence[Any], index: int) -> Any:
    """Header facts of one source (``.get(keyword)``, attributes): without building its dataset when the
    sources are :class:`SourceInstances`, else the dataset itself."""
    if isinstance(sources, SourceInstances):
        return sources.header(index)
    return sources[index]
