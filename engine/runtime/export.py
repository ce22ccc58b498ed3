"""ONNX export of a model's network with a dynamic batch axis (and dynamic spatial axes where declared).

Uses torch's ``torch.export``-based exporter (the TorchScript one is deprecated).
The graph's input is named :data:`INPUT_NAME`, its outputs ``output``,
``output_1``, ... so ONNX Runtime and TensorRT bind them by name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from engine.api import ModelSpec

INPUT_NAME = "input"
OPSET = 18


class ExportError(RuntimeError):
    """The network could not be exported to ONNX; the message names the model."""


def output_names(count: int) -> list[str]:
    """``output``, ``output_1``, ... for ``count`` network outputs."""
    return ["output"] + [f"output_{i}" for i in range(1, count)]


def _dynamic_shapes(spec: ModelSpec, max_batch: int) -> dict[int, object]:
    """torch.export dims: the batch axis, and each item axis whose bounds differ (a multiple of ``shape_multiple``)."""
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=max(2, max_batch * 64))}
    low, high = spec.input_bounds()
    for axis, (lo, hi) in enumerate(zip(low, high), start=1):
        if lo == hi:
            continue
        multiple = spec.shape_multiple
        base = torch.export.Dim(f"axis{axis}", min=max(1, -(-lo // multiple)), max=max(2, hi // multiple))
        dims[axis] = base * multiple if multiple > 1 else base
    return dims


def export_onnx(network: torch.nn.Module, spec: ModelSpec, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``network`` as ONNX to ``path`` (opset :data:`OPSET`) and check the file with onnx.

    ``dtype`` float16 gives a graph whose weights, activations and I/O are all fp16:
    what a strongly typed TensorRT build needs for FP16 (TensorRT 11 has no FP16
    builder flag; precision lives in the graph).
    """
    if not spec.input_shape:
        raise ExportError(f"model {spec.name!r} declares no input_shape, so it cannot be exported to ONNX")
    import copy

    import onnx

    example = torch.rand((2, *spec.input_shape), generator=torch.Generator().manual_seed(0)).to(dtype)
    network = copy.deepcopy(network).eval().to("cpu", dtype)
    with torch.inference_mode():
        sample = network(example)
    count = len(sample) if isinstance(sample, (tuple, list)) else 1
    parameter = next(iter(_forward_parameters(network)))
    quiet = io.StringIO()
    previous = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=output_names(count), opset_version=OPSET, dynamo=True,
                              dynamic_shapes={parameter: _dynamic_shapes(spec, spec.max_batch)},
                              external_data=False)
    except Exception as error:  # torch.export raises many unrelated types; report them all the same way
        raise ExportError(f"model {spec.name!r}: ONNX export failed: {type(error).__name__}: {error}") from error
    finally:
        logging.getLogger("torch").setLevel(previous)
    onnx.checker.check_model(str(path))
    return path


def _forward_parameters(network: torch.nn.Module) -> list[str]:
    """Names of ``forward``'s parameters (torch.export keys dynamic shapes by them)."""
    import inspect

    names = [name for name in inspect.signature(network.forward).parameters if name != "self"]
    if not names:
        raise ExportError(f"{type(network).__name__}.forward takes no input")
    return names


def import_onnx_file(source: Path, target: Path) -> None:
    """Copy a ready ONNX model to ``target`` with its one input renamed to :data:`INPUT_NAME`.

    Every backend binds the input by that name; a graph with several inputs is
    refused. (Names used inside control-flow subgraphs are not rewritten.)
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(source))
    except (OSError, DecodeError, ValueError) as error:
        raise ExportError(f"{source} is not a readable ONNX model: {error}") from error
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"{source} has {len(inputs)} inputs; ScanStream feeds exactly one (N, C, H, W) tensor")
    old = inputs[0].name
    if old != INPUT_NAME:
        inputs[0].name = INPUT_NAME
        for node in model.graph.node:
            node.input[:] = [INPUT_NAME if name == old else name for name in node.input]
    onnx.save(model, str(target))
