"""The models as the console shows them: selector, version, backend and why, and why a series went unrouted.

Backends are chosen on each worker; the receiver states what a worker with
this configuration picks (``scanstream plugins``' line, without timing
anything: a choice not timed yet says so). The line is worked out once per
model and kept.
"""

from __future__ import annotations

import inspect
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from engine.api import ModelRegistry, ModelSpec, Selector, SeriesInfo
from engine.config import WorkerConfig
from engine.receiver.router import run_selector


def describe_selector(selector: Selector) -> str:
    """What a selector takes, in words: a config entry's rule, else the first paragraph of its docstring."""
    entry = getattr(selector, "entry", None)
    rule = getattr(entry, "selector", None)
    if rule is not None and hasattr(rule, "model_dump"):
        facts = [f"{key} {'matches' if key == 'series_description' else 'in'} {value}"
                 for key, value in rule.model_dump().items() if value and key != "min_slices"]
        return "; ".join([*facts, f"at least {rule.min_slices} slice(s)"])
    doc = inspect.getdoc(selector)
    if doc:
        return _ROLE.sub(lambda match: _value(selector, match.group(1)), doc.split("\n\n")[0].replace("\n", " "))
    return getattr(selector, "__qualname__", type(selector).__name__)


_ROLE = re.compile(r":\w+:`~?([\w.]+)`")  # a Sphinx cross-reference such as :data:`MIN_SLICES`


def _value(selector: Selector, name: str) -> str:
    """A constant a docstring names, as its value where the selector's module has one (``MIN_SLICES`` -> 16)."""
    value = getattr(inspect.getmodule(selector), name.rsplit(".", 1)[-1], None)
    return str(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else name


@dataclass(frozen=True)
class ModelView:
    name: str
    version: str
    description: str
    outputs: tuple[str, ...]
    selector: str
    routed: bool  # False when routing.models leaves it out
    backend: str


def why_unrouted(info: SeriesInfo, models: Sequence[ModelSpec], enabled: Sequence[str]) -> list[str]:
    """For each model loaded now, why it made no job of the series."""
    reasons = []
    for spec in models:
        taken, error = run_selector(spec, info)  # as the router calls it
        if error:
            reasons.append(f"{spec.name}: its selector raised {error}")
        elif not taken:
            reasons.append(f"{spec.name}: its selector does not take it ({describe_selector(spec.selector)})")
        elif enabled and spec.name not in enabled:
            reasons.append(f"{spec.name}: would take it, but routing.models leaves it out")
        else:
            reasons.append(f"{spec.name}: takes it now (the series completed before this model was loaded; "
                           f"`scanstream backfill {spec.name} --since DATE` runs it, or a new revision)")
    return reasons or ["no model is loaded"]


class ModelCatalogue:
    """The registry's models with their backend lines, worked out on first use."""

    def __init__(self, registry: ModelRegistry, enabled: Sequence[str], worker: WorkerConfig,
                 describe_backend: Callable[[ModelSpec], str] | None = None) -> None:
        self._registry = registry
        self.enabled = tuple(enabled)
        self._worker = worker
        self._describe = describe_backend or self._describe_choice
        self._backends: dict[str, str] = {}
        self._lock = threading.Lock()

    def _describe_choice(self, spec: ModelSpec) -> str:
        from engine.runtime.prepare import describe_choice

        return describe_choice(spec, self._worker, measure=False)

    def specs(self) -> list[ModelSpec]:
        return self._registry.all()

    def views(self) -> list[ModelView]:
        """Every model, by name."""
        return [ModelView(spec.name, spec.version, spec.description, tuple(spec.outputs),
                          describe_selector(spec.selector), not self.enabled or spec.name in self.enabled,
                          self._backend(spec)) for spec in self._registry.all()]

    def _backend(self, spec: ModelSpec) -> str:
        with self._lock:
            if spec.name not in self._backends:
                self._backends[spec.name] = self._describe(spec)
            return self._backends[spec.name]

    def as_json(self) -> list[dict[str, Any]]:
        return [view.__dict__ | {"outputs": list(view.outputs)} for view in self.views()]
