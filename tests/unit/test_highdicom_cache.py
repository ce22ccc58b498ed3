"""engine.outputs.highdicom_cache: the same answers as highdicom's own IOD lookup, installed once."""

from __future__ import annotations

import highdicom._standard_utils as standard
import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, SegmentationStorage

import engine.outputs  # noqa: F401 - installs the cache
from engine.outputs.highdicom_cache import cached_lookup, install


@pytest.mark.parametrize("attribute, sop_class, exclude", [
    ("PerFrameFunctionalGroupsSequence", CTImageStorage, None),
    ("PerFrameFunctionalGroupsSequence", EnhancedCTImageStorage, None),
    ("PixelData", SegmentationStorage, ["IconImageSequence"]),
    ("ContentDate", CTImageStorage, None),
    ("NoSuchKeyword", CTImageStorage, None),
])
def test_cached_lookup_answers_as_highdicom(attribute: str, sop_class: str, exclude: list[str] | None) -> None:
    original = standard.is_attribute_in_iod.__wrapped__
    cached = cached_lookup(original)
    assert cached(attribute, sop_class, exclude) == original(attribute, sop_class, exclude)
    assert cached(attribute, sop_class, exclude) == original(attribute, sop_class, exclude)  # from the cache


def test_install_is_idempotent_and_reaches_highdicoms_callers() -> None:
    installed = standard.is_attribute_in_iod
    assert hasattr(installed, "__wrapped__")
    assert install() and standard.is_attribute_in_iod is installed
    import highdicom.base

    assert highdicom.base.is_attribute_in_iod is installed


def test_an_unknown_sop_class_still_raises_highdicoms_error() -> None:
    with pytest.raises(KeyError, match="No IOD"):
        standard.is_attribute_in_iod("PixelData", "1.2.3.4")
