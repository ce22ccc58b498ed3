"""``scanstream plugins check NAME``: does a plugin's model work end to end, before any scanner sends to it?

For the plugin NAME (as ``scanstream plugins`` lists it) or the plugin of the
model NAME, each check reports pass, fail or skip with its reason:

- plugin: ``load`` (the module or entry point imports), ``hooks`` (every
  ``scanstream_*`` function is marked ``@hookimpl`` and valid against
  :mod:`engine.hookspecs`, as pluggy validates it), ``register`` (its hooks run);
- each model: ``spec`` (:meth:`ModelSpec.check`, output kinds registered, name
  unique), ``weights`` (``load_network()`` returns a module; ``torch.load`` is not
  called with ``weights_only=False``), ``phantom`` (a built-in phantom series the
  selector takes: a CT from :mod:`engine.synthetic.ct_phantom`, the same at low dose, else a
  radiograph from ``engine.synthetic.dx_phantom``; skipped when none matches),
  ``preprocess``, ``plan`` (a handler's :class:`SlicePlan`, which GPU workers run
  instead of ``preprocess``, gives the same input), ``network`` (torch on the CPU,
  or ONNX Runtime for an ONNX file, through the engine's backend interface, which
  enforces the declared input shapes), ``postprocess`` (the result fits the
  volume), ``export`` (optional: ONNX export runs and agrees with torch), and
  ``output:KIND`` per declared writer: every file re-reads (DICOM with pydicom,
  SEG and SR with highdicom, with a SOP class, the source's Study Instance UID
  and a series of its own; ``result.json`` parses and names the model and the
  source series).

The plugins are loaded here one by one (not with :func:`engine.plugins.load_plugins`,
which stops at the first error) so a broken plugin is reported, not raised.
Plugin code may raise anything: each call into it is caught and reported as
that check's failure, never ignored.
"""

from __future__ import annotations

from engine.plugin_check.command import check_plugin
from engine.plugin_check.report import FAIL, PASS, SKIP, Check, CheckFailed, ModelReport, PluginReport, render

__all__ = ["FAIL", "PASS", "SKIP", "Check", "CheckFailed", "ModelReport", "PluginReport", "check_plugin", "render"]
