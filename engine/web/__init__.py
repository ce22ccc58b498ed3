"""The HTTP side: health, readiness, metrics and the study API."""
