"""The HTTP side: health, readiness and metrics (open), and the operations console with its API (signed in)."""
