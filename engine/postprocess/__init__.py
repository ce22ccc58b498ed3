"""Postprocessing shared by models: box arithmetic for detectors, connected components of masks."""
