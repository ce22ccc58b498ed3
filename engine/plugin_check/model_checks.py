"""One model's checks in order: spec, weights, phantom, preprocess, plan, network, postprocess, outputs."""

from __future__ import annotations

import time
from typing import Any, Callable
from unittest import mock

import torch

from engine.api import Artifact, ModelResult, ModelSpec, OutputRegistry, PluginError, Volume
from engine.config import EngineConfig
from engine.plugin_check.artifacts import check_result, verify_artifact
from engine.plugin_check.phantoms import PhantomCache, PhantomSeries, describe_series
from engine.plugin_check.report import FAIL, PASS, SKIP, Check, CheckFailed, ModelReport, error_text

PLAN_TOLERANCE = 1e-4
EXPORT_TOLERANCE = 1e-3  # ONNX vs torch, relative to the largest output magnitude


class ModelChecker:
    """Runs one model's checks in order; a failed step skips the steps that need it."""

    def __init__(self, spec: ModelSpec, outputs: OutputRegistry, config: EngineConfig, phantoms: PhantomCache,
                 duplicate_of: str | None, export: bool) -> None:
        self.spec = spec
        self.outputs = outputs
        self.config = config
        self.phantoms = phantoms
        self.duplicate_of = duplicate_of
        self.export = export
        self.report = ModelReport(spec.name, str(spec.version))

    def _record(self, name: str, step: Callable[[], str]) -> bool:
        """Run ``step``; its return is the pass reason, :class:`CheckFailed` or any plugin error a failure."""
        try:
            reason = step()
        except CheckFailed as finding:
            self.report.checks.append(Check(name, FAIL, str(finding)))
            return False
        except Exception as error:  # noqa: BLE001 - plugin code: whatever it raises is this check's failure
            self.report.checks.append(Check(name, FAIL, error_text(error)))
            return False
        self.report.checks.append(Check(name, PASS, reason))
        return True

    def _skip(self, names: list[str], reason: str) -> None:
        self.report.checks.extend(Check(name, SKIP, reason) for name in names)

    def _later_checks(self) -> list[str]:
        names = ["preprocess", "plan", "network", "postprocess"]
        if self.export:
            names.append("export")
        return names + [f"output:{kind}" for kind in self.spec.outputs]

    def run(self) -> ModelReport:
        if not self._record("spec", self.check_spec):
            self._skip(["weights", "phantom", *self._later_checks()], "the spec is unusable")
            return self.report
        weights_ok = self._record("weights", self.check_weights)
        phantom = self.pick_phantom()
        if phantom is None:
            return self.report
        if not weights_ok:
            self._skip(self._later_checks(), "the network did not load")
            return self.report
        self.run_phantom(phantom)
        return self.report

    def check_spec(self) -> str:
        try:
            self.spec.check()
        except PluginError as error:
            raise CheckFailed(str(error)) from None
        for kind in self.spec.outputs:
            try:
                self.outputs.get(kind)
            except PluginError as error:
                raise CheckFailed(str(error)) from None
        if self.duplicate_of:
            raise CheckFailed(f"model name {self.spec.name!r} is also registered by {self.duplicate_of}; "
                              "the engine refuses to start with both")
        return f"outputs {', '.join(self.spec.outputs)}; max_batch {self.spec.max_batch}; " + (
            f"input_shape {self.spec.input_shape}" if self.spec.input_shape else "no input_shape: torch backend only")

    def check_weights(self) -> str:
        spec = self.spec
        if spec.onnx_file:
            import onnx

            onnx.checker.check_model(spec.onnx_file)
            return f"ONNX file {spec.onnx_file} passes onnx.checker"
        unsafe: list[str] = []
        original = torch.load

        def recording_load(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("weights_only") is False:
                unsafe.append(str(args[0]) if args else "?")
            return original(*args, **kwargs)

        clock = time.perf_counter()
        # Patched for the duration of this call only, to see how the plugin loads its weights.
        with mock.patch.object(torch, "load", recording_load):
            network = spec.load_network()
        seconds = time.perf_counter() - clock
        if not isinstance(network, torch.nn.Module):
            raise CheckFailed(f"load_network returned {type(network).__name__}, expected a torch.nn.Module")
        if unsafe:
            raise CheckFailed(f"torch.load(weights_only=False) on {', '.join(unsafe)}: unpickling can run any code; "
                              "save a state_dict and load it with weights_only=True")
        parameters = sum(p.numel() for p in network.parameters())
        return f"{type(network).__name__}, {parameters:,} parameters, loaded in {seconds:.2f} s"

    def pick_phantom(self) -> PhantomSeries | None:
        tried: list[str] = []
        for candidate in self.phantoms.candidates():
            if isinstance(candidate, str):
                tried.append(candidate)
                continue
            try:
                taken = bool(self.spec.selector(candidate.info))
            except Exception as error:  # noqa: BLE001 - plugin code: a selector that raises fails the check
                self.report.checks.append(Check("phantom", FAIL, f"selector raised on the {candidate.label}: "
                                                                  f"{error_text(error)}"))
                self._skip(self._later_checks(), "the selector raised")
                return None
            if taken:
                info = candidate.info
                self.report.checks.append(Check("phantom", PASS, f"selector takes the {candidate.label}: "
                                                f"{info.modality} {info.body_part}, {info.instance_count} "
                                                f"instance(s), {info.frame_count} frame(s)"))
                return candidate
            tried.append(f"{candidate.label} ({describe_series(candidate.info)})")
        self.report.checks.append(Check("phantom", SKIP, "no built-in phantom matches the selector; tried "
                                        + "; ".join(tried)))
        self._skip(self._later_checks(), "no phantom series for this model")
        return None

    def run_phantom(self, phantom: PhantomSeries) -> None:
        volume = phantom.volume()
        state: dict[str, Any] = {}

        def preprocess() -> str:
            batch = self.spec.handler.preprocess(volume)
            if not isinstance(batch, torch.Tensor):
                raise CheckFailed(f"preprocess returned {type(batch).__name__}; the backends take a torch.Tensor "
                                  "(N, C, H, W) or (N, C, D, H, W)")
            if batch.ndim not in (4, 5) or not batch.is_floating_point():
                raise CheckFailed(f"preprocess returned {tuple(batch.shape)} {batch.dtype}; expected floating "
                                  "(N, C, H, W) or (N, C, D, H, W)")
            state["batch"] = batch
            return f"{tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')} from a {volume.shape} volume"

        if not self._record("preprocess", preprocess):
            self._skip(self._later_checks()[1:], "preprocess failed")
            return
        self._record_plan(volume, state["batch"])

        def network() -> str:
            backend = "onnxruntime" if self.spec.onnx_file else "torch"  # what a CPU worker can run it on
            outputs, described = self._infer(state["batch"], backend)
            state["output"] = outputs
            return described

        if not self._record("network", network):
            self._skip(self._later_checks()[3:], "the network did not run")
            return

        def postprocess() -> str:
            result = self.spec.handler.postprocess(state["output"], volume)
            state["result"] = result
            return check_result(result, volume, self.spec)

        result_ok = self._record("postprocess", postprocess)
        if self.export:
            self._record_export(state)
        if not result_ok:
            self._skip([f"output:{kind}" for kind in self.spec.outputs], "postprocess failed")
            return
        for kind in self.spec.outputs:
            self._record(f"output:{kind}", lambda k=kind: self._write(k, state["result"], volume))

    def _record_plan(self, volume: Volume, batch: torch.Tensor) -> None:
        plan_of = getattr(self.spec.handler, "plan", None)
        if not callable(plan_of):
            self.report.checks.append(Check("plan", SKIP, "the handler states no plan(volume): GPU workers run "
                                                          "its preprocess on the CPU"))
            return

        def plan() -> str:
            from engine.kernels.cpu import run_slice_plan
            from engine.kernels.plan import SlicePlan

            stated = plan_of(volume)
            if not isinstance(stated, SlicePlan):
                raise CheckFailed(f"plan(volume) returned {type(stated).__name__}, expected engine.kernels.plan."
                                  "SlicePlan")
            planned = run_slice_plan(volume.stored, stated).float()
            if tuple(planned.shape) != tuple(batch.shape):
                raise CheckFailed(f"the plan gives {tuple(planned.shape)} but preprocess gives {tuple(batch.shape)}: "
                                  "GPU workers would feed the network a different input")
            difference = float((planned - batch.float()).abs().max()) if planned.numel() else 0.0
            if difference > PLAN_TOLERANCE:
                raise CheckFailed(f"the plan and preprocess differ by up to {difference:.3g}: GPU workers would "
                                  "feed the network a different input")
            return f"SlicePlan gives preprocess's input (max difference {difference:.1e})"

        self._record("plan", plan)

    def _backend(self, name: str) -> Any:
        from engine.runtime.artifacts import ModelArtifacts
        from engine.runtime.selection import make_backend

        backend = make_backend(name, "cpu", threads=self.config.worker.torch_threads)
        backend.initialize(ModelArtifacts(self.spec, self.config.worker.model_cache_path()))
        return backend

    def _infer(self, batch: torch.Tensor, backend_name: str) -> tuple[Any, str]:
        from engine.runtime.base import InferenceRequest

        backend = self._backend(backend_name)
        try:
            clock = time.perf_counter()
            (response,) = backend.execute([InferenceRequest("check", batch)])
            seconds = time.perf_counter() - clock
        finally:
            backend.finalize()
        if not response.ok:
            raise CheckFailed(f"{backend_name}: {response.error}")
        output = response.output()
        shapes = [tuple(o.shape) for o in (output if isinstance(output, tuple) else (output,))]
        return output, f"{backend.describe()}: {', '.join(map(str, shapes))} in {seconds:.2f} s"

    def _record_export(self, state: dict[str, Any]) -> None:
        if not self.spec.input_shape or self.spec.onnx_file or "output" not in state:
            why = ("it declares no input_shape (torch backend only)" if not self.spec.input_shape else
                   "it is an ONNX file already" if self.spec.onnx_file else "the network did not run")
            self.report.checks.append(Check("export", SKIP, f"no ONNX export for this model: {why}"))
            return

        def export() -> str:
            exported, described = self._infer(state["batch"], "onnxruntime")
            pairs = zip(exported if isinstance(exported, tuple) else (exported,),
                        state["output"] if isinstance(state["output"], tuple) else (state["output"],))
            worst = 0.0
            for onnx_out, torch_out in pairs:
                scale = max(float(torch_out.abs().max()), 1.0)
                worst = max(worst, float((onnx_out - torch_out).abs().max()) / scale)
            if worst > EXPORT_TOLERANCE:
                raise CheckFailed(f"ONNX Runtime and torch differ by {worst:.3g} (relative)")
            return f"exported and run on {described}; agrees with torch within {worst:.1e}"

        self._record("export", export)

    def _write(self, kind: str, result: ModelResult, volume: Volume) -> str:
        if kind == "seg" and result.label_map is None:
            raise CheckFailed("outputs name 'seg' but postprocess left label_map None, so no SEG is ever written")
        if kind == "derived_series" and result.derived_voxels is None:
            raise CheckFailed("outputs name 'derived_series' but postprocess left derived_voxels None")
        artifacts = self.outputs.get(kind).write(result, volume, self.spec)
        if not isinstance(artifacts, list) or not all(isinstance(a, Artifact) for a in artifacts):
            raise CheckFailed(f"the {kind!r} writer returned {type(artifacts).__name__}, expected a list of Artifact")
        if not artifacts:
            return "the writer wrote no file for this result (nothing to encode); nothing to re-read"
        reasons = [verify_artifact(a, volume, self.spec) for a in artifacts]
        if len(reasons) > 3:  # a derived series: one file per slice
            return f"{len(reasons)} files, each re-read; the first: {reasons[0]}"
        return "; ".join(reasons)
