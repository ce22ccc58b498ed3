"""``scanstream plugins check NAME``: load, find the plugin or model, run every check."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from engine.api import OutputRegistry, PluginError
from engine.config import EngineConfig
from engine.logs import get_logger
from engine.model_files.plugin import check_entry_file, resolved, spec_for
from engine.plugin_check.loading import RecordingModels, call_impls, hook_problems, load_all
from engine.plugin_check.model_checks import ModelChecker
from engine.plugin_check.phantoms import PhantomCache
from engine.plugin_check.report import FAIL, PASS, Check, PluginReport

log = get_logger(__name__)
MODEL_FILES_PLUGIN = "engine.model_files.plugin"  # the built-in plugin of [[models]] entries


def check_plugin(name: str, config: EngineConfig, *, export: bool = False,
                 work_dir: Path | None = None) -> PluginReport:
    """Check the plugin ``name``, or the plugin of the model ``name``; unknown names raise :class:`PluginError`."""
    loaded = load_all(config)
    outputs = OutputRegistry()
    output_errors = call_impls(loaded, "scanstream_register_outputs", lambda _: outputs, config)
    recorders: dict[str, RecordingModels] = {}
    model_errors = call_impls(loaded, "scanstream_register_models",
                               lambda plugin: recorders.setdefault(plugin, RecordingModels()), config)
    owners: dict[str, list[str]] = {}
    for plugin, recorder in recorders.items():
        for spec in recorder.specs:
            owners.setdefault(spec.name, []).append(plugin)
    only_model: str | None = None
    entries = {entry.name: entry for entry in config.models}
    if name in entries and MODEL_FILES_PLUGIN in loaded.objects:
        # One [[models]] entry: its own fault, not the first bad entry's (the plugin stops at that one).
        plugin, only_model = MODEL_FILES_PLUGIN, name
        recorders[plugin] = RecordingModels()
        try:
            entry = resolved(entries[name])
            check_entry_file(entry)
            recorders[plugin].add(spec_for(entry))
            model_errors.pop(plugin, None)
        except PluginError as error:
            model_errors[plugin] = f"scanstream_register_models: {error}"
    elif name in loaded.sources:
        plugin = name
    elif name in owners:
        plugin, only_model = owners[name][0], name
    else:
        raise PluginError(f"no plugin or model named {name!r}; plugins: {', '.join(sorted(loaded.sources))}; "
                          f"models: {', '.join(sorted(owners)) or 'none'}")
    report = PluginReport(target=name, plugin=plugin, source=loaded.sources[plugin])
    if plugin in loaded.load_errors:
        report.checks.append(Check("load", FAIL, loaded.load_errors[plugin]))
        return report
    report.checks.append(Check("load", PASS, f"imported ({loaded.sources[plugin]})"))
    if plugin in loaded.hook_errors:
        report.checks.append(Check("hooks", FAIL, loaded.hook_errors[plugin]))
        return report
    problems, implemented = hook_problems(loaded, plugin)
    if problems:
        report.checks.append(Check("hooks", FAIL, "; ".join(problems)))
    else:
        report.checks.append(Check("hooks", PASS, f"valid against the specs: {', '.join(implemented)}"))
    registration = [text for text in (output_errors.get(plugin), model_errors.get(plugin)) if text]
    report.checks.append(Check("register", FAIL, "; ".join(registration)) if registration else
                         Check("register", PASS, f"{len(recorders.get(plugin, RecordingModels()).specs)} model(s)"))
    specs = [s for s in recorders.get(plugin, RecordingModels()).specs if only_model in (None, s.name)]
    with ExitStack() as stack:
        folder = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scanstream-check-")))
        phantoms = PhantomCache(folder)
        for spec in specs:
            others = [p for p in owners.get(spec.name, []) if p != plugin]
            twice = [s for s in recorders[plugin].specs if s.name == spec.name]
            duplicate = (f"plugin {others[0]!r}" if others else
                         f"plugin {plugin!r} again" if len(twice) > 1 else None)
            report.models.append(ModelChecker(spec, outputs, config, phantoms, duplicate, export).run())
    log.info("plugin_check.done", plugin=plugin, models=len(report.models), ok=report.ok,
             failed=sum(c.status == FAIL for c in report.all_checks()))
    return report
