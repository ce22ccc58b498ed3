"""The plugin manager: entry points, then configured modules, then built-ins.

Callers use the typed methods here and never touch ``pm.hook`` directly.
Built-in pieces (output writers, notification kinds, the models) are plugins like any other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

import pluggy

from engine import PROJECT_NAME, hookspecs
from engine.api import ModelRegistry, OutputRegistry, PluginError
from engine.config import EngineConfig
from engine.logs import get_logger
from engine.notify.registry import NotifierRegistry

ENTRY_POINT_GROUP = "scanstream.plugins"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "engine.outputs.builtin",
    "engine.notify.builtin",
    "engine.model_files.plugin",
    "plugins.nodule_seg",
    "plugins.nodule_det",
    "plugins.nodule_cls",
    "plugins.ct_denoise",
)

log = get_logger(__name__)


@dataclass(frozen=True)
class LoadedPlugins:
    """What the plugin manager found: models, output writers and notification kinds, ready to use."""

    models: ModelRegistry
    outputs: OutputRegistry
    plugin_names: tuple[str, ...]
    notifiers: NotifierRegistry = field(default_factory=NotifierRegistry)


class PluginManager:
    """Loads plugins and asks them to register models and outputs."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)

    def load(self) -> LoadedPlugins:
        """Register every plugin, validate hook implementations, collect registrations.

        Raises :class:`PluginError` naming the plugin or model that is unusable.
        """
        for name in self._config.plugins.disabled:
            self._pm.set_blocked(name)
        self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for module_name in (*self._config.plugins.modules, *BUILTIN_PLUGINS):
            self._register_module(module_name)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
        outputs = OutputRegistry()
        self._pm.hook.scanstream_register_outputs(registry=outputs, config=self._config)
        models = ModelRegistry()
        self._pm.hook.scanstream_register_models(registry=models, config=self._config)
        for spec in models.all():
            for kind in spec.outputs:
                try:
                    outputs.get(kind)
                except PluginError as exc:
                    raise PluginError(f"model {spec.name!r}: {exc}") from None
        notifiers = NotifierRegistry()
        self._pm.hook.scanstream_register_notifiers(registry=notifiers, config=self._config)
        names = tuple(sorted(n for n, _ in self._pm.list_name_plugin() if n))
        log.info("plugins.loaded", plugins=len(names), models=len(models), outputs=len(outputs.kinds()))
        return LoadedPlugins(models=models, outputs=outputs, plugin_names=names, notifiers=notifiers)

    def _register_module(self, module_name: str) -> None:
        if self._pm.is_blocked(module_name) or self._pm.has_plugin(module_name):
            return
        try:
            module: ModuleType = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"plugin module {module_name!r} cannot be imported: {exc}") from None
        self._pm.register(module, name=module_name)

    def hook_names(self) -> list[str]:
        """Names of every hook the engine defines (for docs and checks)."""
        return sorted(name for name in dir(self._pm.hook) if name.startswith("scanstream_"))


def load_plugins(config: EngineConfig) -> LoadedPlugins:
    """Convenience: one manager, loaded."""
    return PluginManager(config).load()
