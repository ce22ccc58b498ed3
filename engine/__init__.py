"""ScanStream: a streaming inference engine for medical imaging devices.

Plugins implement hooks from :mod:`engine.hookspecs` with :data:`hookimpl` and are
found through the ``scanstream.plugins`` entry-point group::

    # setup.cfg of a plugin package
    [options.entry_points]
    scanstream.plugins =
        my_model = my_package.plugin

    # my_package/plugin.py
    from engine import hookimpl

    @hookimpl
    def scanstream_register_models(registry, config):
        registry.add(ModelSpec(...))
"""

import pluggy

__version__ = "0.1.0"
PROJECT_NAME = "scanstream"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for plugin hook implementations (``@hookimpl``)."""

__all__ = ["hookimpl", "__version__", "PROJECT_NAME"]
