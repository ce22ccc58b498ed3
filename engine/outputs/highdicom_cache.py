"""Memoise highdicom's IOD lookup, a pure function of static tables that highdicom rescans on every call.

``highdicom._standard_utils.is_attribute_in_iod(attribute, sop_class_uid)``
walks every module of the IOD and every attribute of each module, ~0.3 ms a
call, and highdicom calls it once per source image when it builds a SEG (to ask
whether the source is a multi-frame IOD), and again for SR evidence and secondary
captures: ~20 ms of a 48-slice SEG. Its answer depends only on its arguments
and on the standard's tables shipped with highdicom, so it is cached here.
:func:`install` rebinds the name in the highdicom modules that imported it;
a highdicom without that function is left as it is (only slower).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence

_MODULES = ("highdicom._standard_utils", "highdicom.base", "highdicom.sr.content")


def cached_lookup(lookup: Callable[..., bool]) -> Callable[..., bool]:
    """``lookup`` (highdicom's signature) with its answers kept per (attribute, SOP class, excluded path)."""

    @functools.lru_cache(maxsize=1024)
    def remembered(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return bool(lookup(attribute, sop_class_uid, list(exclude) if exclude is not None else None))

    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
        return remembered(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.__wrapped__ = lookup  # type: ignore[attr-defined]
    return is_attribute_in_iod


def install() -> bool:
    """Cache highdicom's ``is_attribute_in_iod`` where highdicom uses it; True when installed (idempotent)."""
    standard = importlib.import_module(_MODULES[0])
    original = getattr(standard, "is_attribute_in_iod", None)
    if original is None:
        return False
    replacement = original if hasattr(original, "__wrapped__") else cached_lookup(original)
    for name in _MODULES:
        module = importlib.import_module(name)
        if getattr(module, "is_attribute_in_iod", None) is original:
            module.is_attribute_in_iod = replacement  # type: ignore[attr-defined]
    return True


def preload_tables() -> None:
    """Load highdicom's tables of the standard now (~0.6 s on first use), so a worker's first SEG or SR does not."""
    standard = importlib.import_module(_MODULES[0])
    for loader in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        function = getattr(standard, loader, None)
        if callable(function):
            function()
