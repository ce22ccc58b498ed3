"""Plugin manager and registries: documented hooks, clear registration errors."""

from __future__ import annotations

import types

import pytest
import torch

from engine import hookimpl, hookspecs
from engine.api import ModelRegistry, ModelResult, ModelSpec, OutputRegistry, PluginError, SeriesInfo
from engine.config import EngineConfig
from engine.plugins import PluginManager


class Handler:
    def preprocess(self, volume):
        return torch.zeros(1)

    def postprocess(self, output, volume):
        return ModelResult(summary="ok")


def spec(**changes) -> ModelSpec:
    fields = dict(name="m1", version="1", description="d", selector=lambda s: True,
                  load_network=torch.nn.Identity, handler=Handler())
    fields.update(changes)
    return ModelSpec(**fields)


def test_every_hook_is_documented() -> None:
    hooks = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("scanstream_")]
    assert hooks
    for hook in hooks:
        assert hook.__doc__ and "Returns" in hook.__doc__ and "Called" in hook.__doc__, hook.__name__


@pytest.mark.parametrize("changes, message", [
    ({"name": "Bad Name"}, "name must match"),
    ({"version": ""}, "version"),
    ({"selector": "CT"}, "selector must be callable"),
    ({"handler": object()}, "handler must define"),
    ({"outputs": ()}, "at least one output"),
    ({"max_batch": 0}, "max_batch"),
])
def test_invalid_model_is_refused_at_registration(changes, message) -> None:
    with pytest.raises(PluginError, match=message):
        ModelRegistry().add(spec(**changes))


def test_duplicate_and_unknown_names() -> None:
    registry = ModelRegistry()
    registry.add(spec())
    with pytest.raises(PluginError, match="registered twice"):
        registry.add(spec())
    with pytest.raises(PluginError, match="registered models: m1"):
        registry.get("m2")
    with pytest.raises(PluginError, match="unknown output kind 'sr'"):
        OutputRegistry().get("sr")


def test_selection_by_series() -> None:
    registry = ModelRegistry()
    registry.add(spec(name="ct-only", selector=lambda s: s.modality == "CT"))
    registry.add(spec(name="all"))
    ct = SeriesInfo("1.2", "1.2.3", "CT", "1.2.840.10008.5.1.4.1.1.2")
    mr = SeriesInfo("1.2", "1.2.4", "MR", "1.2.840.10008.5.1.4.1.1.4")
    assert [m.name for m in registry.select(ct)] == ["all", "ct-only"]
    assert [m.name for m in registry.select(mr)] == ["all"]


def test_manager_loads_builtins_and_configured_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("extra_plugin_for_test")

    @hookimpl
    def scanstream_register_models(registry):
        registry.add(spec(name="extra", outputs=("result_json",)))

    module.scanstream_register_models = scanstream_register_models
    monkeypatch.setitem(__import__("sys").modules, "extra_plugin_for_test", module)
    config = EngineConfig.model_validate({"plugins": {"modules": ["extra_plugin_for_test"]}})
    loaded = PluginManager(config).load()
    assert {"extra", "nodule-seg"} <= {m.name for m in loaded.models.all()}
    assert set(loaded.outputs.kinds()) >= {"preview", "result_json", "seg", "sr"}


def test_model_naming_an_unknown_output_stops_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("bad_output_plugin")

    @hookimpl
    def scanstream_register_models(registry):
        registry.add(spec(name="needs-sr", outputs=("no-such-kind",)))

    module.scanstream_register_models = scanstream_register_models
    monkeypatch.setitem(__import__("sys").modules, "bad_output_plugin", module)
    config = EngineConfig.model_validate({"plugins": {"modules": ["bad_output_plugin"]}})
    with pytest.raises(PluginError, match="model 'needs-sr': unknown output kind 'no-such-kind'"):
        PluginManager(config).load()


def test_unknown_hook_and_missing_module_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def scanstream_register_modles(registry):
        return None

    module.scanstream_register_modles = scanstream_register_modles
    monkeypatch.setitem(__import__("sys").modules, "typo_plugin", module)
    with pytest.raises(PluginError, match="unknown hook"):
        PluginManager(EngineConfig.model_validate({"plugins": {"modules": ["typo_plugin"]}})).load()
    with pytest.raises(PluginError, match="'no_such_plugin' cannot be imported"):
        PluginManager(EngineConfig.model_validate({"plugins": {"modules": ["no_such_plugin"]}})).load()


def test_disabled_plugin_is_skipped() -> None:
    config = EngineConfig.model_validate({"plugins": {"disabled": ["plugins.nodule_seg"]}})
    names = {spec.name for spec in PluginManager(config).load().models.all()}
    assert "nodule-seg" not in names and "ct-denoise" in names
