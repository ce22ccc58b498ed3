"""scanstream bench: drive an engine with DICOM studies and report throughput and per-stage latency."""
