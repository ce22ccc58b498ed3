"""Retention: what the ledger names against what is on disk (``scanstream verify``)."""
