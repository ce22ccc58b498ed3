"""Built-in output writers, registered as a plugin like any other."""

from __future__ import annotations

from engine import hookimpl
from engine.api import OutputRegistry
from engine.outputs.result_json import ResultJsonWriter
from engine.outputs.seg import SegWriter


@hookimpl
def scanstream_register_outputs(registry: OutputRegistry) -> None:
    """Register ``result_json`` and ``seg``."""
    registry.add("result_json", ResultJsonWriter())
    registry.add("seg", SegWriter())
