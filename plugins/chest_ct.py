"""Conventions the built-in 2.5D chest CT models share: lung window, training geometry, neighbouring slices.

nodule-seg, nodule-det, nodule-cls and ct-denoise were all trained on the
phantoms of :mod:`engine.synthetic.ct_phantom` (1.4 mm pixels, 2.5 mm slices) and see each
slice with neighbours about 2.5 mm away, whatever the scanner's spacing.
"""

from __future__ import annotations

from engine.api import Volume
from engine.kernels.cpu import spacing_to_size

LUNG_WINDOW_HU = (-1000.0, 400.0)
MODEL_PIXEL_MM = 1.4
MODEL_SLICE_MM = 2.5
SPACING_TOLERANCE = 0.05  # within 5 % of MODEL_PIXEL_MM the slices are used as they are


def working_size(volume: Volume) -> tuple[int, int]:
    """In-plane (rows, cols) the network sees: resampled to :data:`MODEL_PIXEL_MM` unless already close."""
    rows, cols = volume.shape[1:]
    _, row_mm, col_mm = volume.spacing
    if all(abs(mm / MODEL_PIXEL_MM - 1.0) <= SPACING_TOLERANCE for mm in (row_mm, col_mm)):
        return int(rows), int(cols)
    return spacing_to_size((rows, cols), (row_mm, col_mm), (MODEL_PIXEL_MM, MODEL_PIXEL_MM))


def neighbour_step(volume: Volume) -> int:
    """How many slices apart the neighbours are: about :data:`MODEL_SLICE_MM`, at least one."""
    return max(1, int(round(MODEL_SLICE_MM / max(volume.spacing[0], 1e-3))))
