"""Output writers (result.json, DICOM SEG) and the result store that files them."""

from engine.outputs.highdicom_cache import install as _install_highdicom_cache

_install_highdicom_cache()
