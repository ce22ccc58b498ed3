"""Every ScanStream hook, typed and documented.

Plugins implement these with :data:`engine.hookimpl`; an implementation may take
any subset of a hook's arguments. Hooks run in every process that needs them:
the receiver (for routing: selectors) and each worker (networks, outputs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from engine import PROJECT_NAME

if TYPE_CHECKING:
    from engine.api import ModelRegistry, OutputRegistry
    from engine.config import EngineConfig
    from engine.notify.registry import NotifierRegistry

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def scanstream_register_models(registry: "ModelRegistry", config: "EngineConfig") -> None:
    """Register models with ``registry.add(ModelSpec(...))``.

    Called once per process at start, after configuration is loaded, for every
    plugin. Each model carries its selector (which series it takes), its network
    loader, its pre/postprocessing handler and the output kinds it produces.
    Registration errors (duplicate name, invalid spec) stop start-up.
    Returns nothing.
    """


@hookspec
def scanstream_register_outputs(registry: "OutputRegistry", config: "EngineConfig") -> None:
    """Register output writers with ``registry.add(kind, writer)``.

    Called once per process at start, before models are registered, so a
    model's ``outputs`` can be checked against the known kinds. Built-ins
    register ``result_json`` and ``seg``. Returns nothing.
    """


@hookspec
def scanstream_register_notifiers(registry: "NotifierRegistry", config: "EngineConfig") -> None:
    """Register notification kinds with ``registry.add(kind, factory)``.

    Called once in the receiver process at start. ``factory`` takes one
    ``[[notifications]]`` entry (:class:`engine.config.entries.NotificationConfig`)
    and returns a :class:`engine.notify.registry.Notifier`; an entry whose kind
    nobody registered stops start-up naming it. Built-ins register ``webhook``
    and ``hl7``. Returns nothing.
    """
