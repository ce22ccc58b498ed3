"""Load every plugin on its own (entry points, ``plugins.modules``, built-ins), keeping errors per plugin."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Callable

import pluggy

from engine import PROJECT_NAME, hookspecs
from engine.api import ModelRegistry, ModelSpec
from engine.config import EngineConfig
from engine.plugin_check.report import error_text
from engine.plugins import BUILTIN_PLUGINS, ENTRY_POINT_GROUP


@dataclass
class LoadedForCheck:
    """Every plugin as loaded here: the pluggy manager, where each came from, and what went wrong."""

    pm: pluggy.PluginManager
    sources: dict[str, str]
    load_errors: dict[str, str]
    hook_errors: dict[str, str]
    objects: dict[str, object]


def load_all(config: EngineConfig) -> LoadedForCheck:
    """Entry points, then ``plugins.modules``, then built-ins, as the engine does; errors kept per plugin."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in config.plugins.disabled:
        pm.set_blocked(name)
    loaded = LoadedForCheck(pm, {}, {}, {}, {})
    candidates: list[tuple[str, str, Callable[[], object]]] = []
    # Every distribution, as pluggy's load_setuptools_entrypoints reads them (entry_points(group=...) would
    # keep one distribution per name, so a stale egg-info in the working folder could hide the installed one).
    for dist in list(importlib.metadata.distributions()):
        for entry in dist.entry_points:
            if entry.group == ENTRY_POINT_GROUP:
                where = f"entry point {entry.value} of {dist.metadata['name']} {dist.version}"
                candidates.append((entry.name, where, entry.load))
    for module_name in config.plugins.modules:
        candidates.append((module_name, "plugins.modules", lambda m=module_name: importlib.import_module(m)))
    for module_name in BUILTIN_PLUGINS:
        candidates.append((module_name, "built-in", lambda m=module_name: importlib.import_module(m)))
    for name, where, load in candidates:
        if pm.is_blocked(name) or pm.has_plugin(name) or name in loaded.load_errors:
            continue
        loaded.sources[name] = where
        try:
            plugin = load()
        except Exception as error:  # noqa: BLE001 - plugin code: any import error is this plugin's finding
            loaded.load_errors[name] = error_text(error)
            continue
        loaded.objects[name] = plugin
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as error:
            loaded.hook_errors[name] = str(error)
    return loaded


def hook_problems(loaded: LoadedForCheck, name: str) -> tuple[list[str], list[str]]:
    """(problems, implemented hook names) of one registered plugin."""
    plugin = loaded.pm.get_plugin(name)
    callers = loaded.pm.get_hookcallers(plugin) or []
    implemented = sorted(caller.name for caller in callers)
    problems = [f"{caller.name} is not a ScanStream hook (known: {', '.join(hook_names())})"
                for caller in callers if not caller.has_spec()]
    obj = loaded.objects.get(name)
    for attribute in dir(obj):
        if attribute.startswith("scanstream_") and callable(getattr(obj, attribute)) and attribute not in implemented:
            problems.append(f"{attribute} is not marked @hookimpl (from engine import hookimpl), so it never runs")
    if not implemented and not problems:
        problems.append("implements no ScanStream hook")
    return problems, implemented


def hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("scanstream_"))


class RecordingModels(ModelRegistry):
    """A registry that keeps every spec as given, so ``spec.check()`` is reported per model, not raised."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[ModelSpec] = []

    def add(self, spec: ModelSpec) -> None:
        self.specs.append(spec)


def call_impls(loaded: LoadedForCheck, hook: str, registry_for: Callable[[str], object],
                config: EngineConfig) -> dict[str, str]:
    """Call each plugin's implementation of ``hook`` on its own; returns errors by plugin name."""
    errors: dict[str, str] = {}
    for impl in getattr(loaded.pm.hook, hook).get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            continue
        arguments = {"registry": registry_for(impl.plugin_name), "config": config}
        try:
            impl.function(*[arguments[a] for a in impl.argnames])
        except Exception as error:  # noqa: BLE001 - plugin code: reported as this plugin's register failure
            errors[impl.plugin_name] = f"{hook}: {error_text(error)}"
    return errors
