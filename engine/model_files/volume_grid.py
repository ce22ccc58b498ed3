"""A series' voxel grid as a 3D network wants it: axes permuted and flipped to RAS or LPS, resampled to a spacing.

Every step has its inverse, so labels computed on the network's grid land on
the source voxels they came from: :func:`to_network_axes` and
:func:`from_network_axes` are exact permutations and flips (no interpolation),
and :func:`resample_linear` / :func:`resample_nearest` share MONAI's sampling
rule (first voxel centres aligned, the exact target spacing, border values),
so a label resampled back lands where its image voxel came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.api import Volume

# Each orientation letter as (patient LPS axis, sign): R = -x, A = -y, S = +z, L = +x, P = +y, I = -z.
_LETTERS = {"R": (0, -1), "L": (0, 1), "A": (1, -1), "P": (1, 1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class AxisPlan:
    """Network axis k is source axis ``order[k]`` (0 slice, 1 row, 2 column), reversed where ``flips[k]``."""

    order: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """A source (slices, rows, columns) shape on the network's axes."""
        return tuple(shape[a] for a in self.order)  # type: ignore[return-value]

    def spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """A source (slice, row, column) spacing on the network's axes."""
        return tuple(float(spacing[a]) for a in self.order)  # type: ignore[return-value]


def source_directions(volume: Volume) -> np.ndarray:
    """(3, 3): the patient (LPS) direction each source axis (slice, row index, column index) increases along."""
    row_dir = np.asarray(volume.orientation[:3], dtype=float)  # along a row: the column index grows
    col_dir = np.asarray(volume.orientation[3:6], dtype=float)  # down a column: the row index grows
    return np.stack([np.cross(row_dir, col_dir), col_dir, row_dir])


def axis_plan(volume: Volume, orientation: str) -> AxisPlan:
    """How to lay the series' axes out as ``orientation`` (three letters such as "RAS"); "" keeps them."""
    if not orientation:
        return AxisPlan((0, 1, 2), (False, False, False))
    directions = source_directions(volume)
    dominant = np.abs(directions).argmax(axis=1)  # the patient axis each source axis runs closest to
    if len(set(dominant.tolist())) != 3:
        raise ValueError("the series' axes are too oblique to map onto " + orientation)
    order, flips = [], []
    for letter in orientation:
        patient_axis, sign = _LETTERS[letter]
        source_axis = int(np.flatnonzero(dominant == patient_axis)[0])
        order.append(source_axis)
        flips.append(bool(np.sign(directions[source_axis, patient_axis]) != sign))
    return AxisPlan(tuple(order), tuple(flips))  # type: ignore[arg-type]


def to_network_axes(array: torch.Tensor, plan: AxisPlan) -> torch.Tensor:
    """A (slices, rows, columns) array on the network's (D, H, W) axes."""
    out = array.permute(*plan.order)
    dims = [k for k, flip in enumerate(plan.flips) if flip]
    return out.flip(dims) if dims else out


def from_network_axes(array: np.ndarray, plan: AxisPlan) -> np.ndarray:
    """The inverse of :func:`to_network_axes` for a (D, H, W) array."""
    for k, flip in enumerate(plan.flips):
        if flip:
            array = np.flip(array, axis=k)
    return np.ascontiguousarray(np.transpose(array, np.argsort(plan.order)))


def resampled_size(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                   target: tuple[float, float, float] | None) -> tuple[int, int, int]:
    """The grid from the first voxel centre to the last at ``target`` mm (MONAI's Spacing rule); ``shape`` without."""
    if target is None:
        return shape
    return tuple(int(round((n - 1) * mm / t)) + 1 for n, mm, t in zip(shape, spacing, target))  # type: ignore


def _positions(n_out: int, step: float, n_in: int) -> np.ndarray:
    """Output voxel i sits at input index i * step (first centres aligned), clamped to the input (border)."""
    return np.clip(np.arange(n_out, dtype=np.float64) * step, 0.0, n_in - 1)


def resample_linear(image: torch.Tensor, steps: tuple[float, float, float],
                    size: tuple[int, int, int]) -> torch.Tensor:
    """(D, H, W) float image to ``size``, output voxel i at input index i x ``steps`` (trilinear, border values).

    Trilinear is separable, so it is three 1D interpolations, one per axis."""
    out = image
    for axis, (step, n_out) in enumerate(zip(steps, size)):
        n_in = out.shape[axis]
        if n_in == n_out and step == 1.0:
            continue
        positions = _positions(n_out, step, n_in)
        low = np.floor(positions).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        shape = [1, 1, 1]
        shape[axis] = n_out
        weight = torch.from_numpy((positions - low).astype(np.float32)).reshape(shape)
        out = (out.index_select(axis, torch.from_numpy(low)) * (1 - weight)
               + out.index_select(axis, torch.from_numpy(high)) * weight)
    return out


def resample_nearest(labels: np.ndarray, steps: tuple[float, float, float], size: tuple[int, int, int]) -> np.ndarray:
    """(D, H, W) label map to ``size`` by the nearest voxel, on the sampling rule of :func:`resample_linear`."""
    if tuple(labels.shape) == tuple(size) and all(step == 1.0 for step in steps):
        return labels
    index = [np.rint(_positions(n_out, step, n_in)).astype(np.intp)
             for step, n_out, n_in in zip(steps, size, labels.shape)]
    return np.ascontiguousarray(labels[np.ix_(*index)])
