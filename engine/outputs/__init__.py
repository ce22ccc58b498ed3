"""Output writers (result.json, DICOM SEG) and the result store that files them."""
