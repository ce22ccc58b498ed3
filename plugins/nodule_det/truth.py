"""Truth boxes of a phantom's nodules: per slice for training, per nodule for scoring.

Boxes follow :mod:`plugins.nodule_det.boxes`: (x_min, y_min, x_max, y_max) in
pixel coordinates where pixel (r, c) covers [c, c + 1] x [r, r + 1], so a mask
whose pixels span columns c0..c1 has the box x from c0 to c1 + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.synthetic.ct_phantom import CTPhantom

IN_PLANE_ONLY = np.array([np.zeros((3, 3)), ndimage.generate_binary_structure(2, 2), np.zeros((3, 3))], dtype=bool)


def slice_boxes(mask: np.ndarray) -> list[np.ndarray]:
    """Per slice of a (S, H, W) mask, the boxes (K, 4) of its 8-connected in-plane components."""
    labels, _ = ndimage.label(mask, structure=IN_PLANE_ONLY)
    boxes: list[list[tuple[float, float, float, float]]] = [[] for _ in range(mask.shape[0])]
    for found in ndimage.find_objects(labels):
        if found is not None:
            z, y, x = found
            boxes[z.start].append((float(x.start), float(y.start), float(x.stop), float(y.stop)))
    return [np.array(b, dtype=np.float32).reshape(-1, 4) for b in boxes]


@dataclass(frozen=True)
class NoduleTruth:
    """One nodule as the accuracy criterion sees it: its central slice and its box there (volume pixels)."""

    central_slice: int
    box: tuple[float, float, float, float]
    radius_mm: float


def nodule_truths(phantom: CTPhantom) -> list[NoduleTruth]:
    """Each nodule's central slice (the slice nearest its centre) and the box of its mask on that slice.

    Nodules never touch (the phantom keeps them 4 mm apart), so the mask pixels
    of that slice within the radius of the centre belong to this nodule alone.
    """
    slice_mm, row_mm, col_mm = phantom.spacing
    x0, y0, z0 = phantom.origin
    truths = []
    for (z, y, x), radius in phantom.nodules:
        central = int(np.clip(round((z - z0) / slice_mm), 0, phantom.hu.shape[0] - 1))
        rows, cols = np.nonzero(phantom.nodule_mask[central])
        near = np.hypot((rows - (y - y0) / row_mm) * row_mm, (cols - (x - x0) / col_mm) * col_mm) <= radius + 1.0
        if not near.any():
            raise ValueError(f"nodule at z={z:.1f} mm has no mask pixel on its central slice {central}")
        rows, cols = rows[near], cols[near]
        truths.append(NoduleTruth(central, (float(cols.min()), float(rows.min()), float(cols.max() + 1),
                                            float(rows.max() + 1)), float(radius)))
    return truths
