"""engine.postprocess.components: the same components, in the same order, as scipy.ndimage.label over the whole volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.postprocess.components import components

FULL = ndimage.generate_binary_structure(3, 3)
FACES = ndimage.generate_binary_structure(3, 1)


def reference(mask: np.ndarray, structure: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    labels, _ = ndimage.label(mask, structure=structure)
    return [(box, labels[box] == index) for index, box in enumerate(ndimage.find_objects(labels), start=1)]


@pytest.mark.parametrize("structure", [FULL, FACES], ids=["26-connected", "6-connected"])
@pytest.mark.parametrize("density", [0.0005, 0.01, 0.2])
def test_components_match_ndimage_label_in_order(structure: np.ndarray, density: float) -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((24, 40, 36)) < density
    mask[5:8, 10:14, 3:9] = True  # one block crossing slices
    mask[-1, -1, -1] = True  # a voxel at the far corner
    found = list(components(mask, structure))
    expected = reference(mask, structure)
    assert len(found) == len(expected)
    for (box, region), (want_box, want_region) in zip(found, expected):
        assert box == want_box
        np.testing.assert_array_equal(region, want_region)


def test_an_empty_mask_has_no_components() -> None:
    assert list(components(np.zeros((4, 5, 6), dtype=bool), FULL)) == []


def test_a_2d_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="3D mask"):
        list(components(np.zeros((5, 6), dtype=bool), FULL))
