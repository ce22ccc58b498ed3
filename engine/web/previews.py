"""A job's preview (an RGB Secondary Capture in its result folder) as a PNG for the browser."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

PREVIEW_FILE = "preview.dcm"
CACHE_PREVIEWS = 64


def render_png(path: Path) -> bytes | None:
    """The first frame of a DICOM image as PNG bytes (RGB or greyscale 8-bit), or None when unreadable."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (OSError, InvalidDicomError, AttributeError, ValueError):
        return None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.dtype != np.uint8:  # a greyscale preview of more than 8 bits: stretch to its own range
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")  # (rows, cols, 3): RGB; 2-D: L
    return buffer.getvalue()


class PreviewImages:
    """PNG renderings of previews, kept for the newest few (a study page polled or reopened reads no file)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, result_dir: str | None) -> bytes | None:
        """The preview of the job whose results are in ``result_dir``, or None when it has none (any more)."""
        if not result_dir:
            return None
        path = Path(result_dir) / PREVIEW_FILE
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            return None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = render_png(path)
        if data is not None:
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > CACHE_PREVIEWS:
                    self._cache.popitem(last=False)
        return data
