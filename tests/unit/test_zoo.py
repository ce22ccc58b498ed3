"""The model zoo (plugins/zoo): reference parameter counts, one phantom study per model, ONNX parity, the benchmark.

Reference parameter counts (3 input channels where the reference takes RGB):

- ResNet-18 11,689,512; ResNet-50 25,557,032; VGG-16 138,357,544; Inception-v3
  27,161,264 with its auxiliary classifier: torchvision's documented figures
  (``resnet18``, ``resnet50``, ``vgg16``, ``inception_v3``; 1000 classes).
  Inception-v3's inference graph (no auxiliary head): 27,161,264 minus the head
  (1x1 768->128 conv 98,304 + BN 256, 5x5 128->768 conv 2,457,600 + BN 1,536,
  linear 768->1000 769,000) = 23,834,568.
- SSD300-VGG16 35,641,826: torchvision's ``ssd300_vgg16`` (91 COCO classes).
- MLPerf 3D U-Net 31,190,243: the layer list of the MLCommons reference
  (``image_segmentation/pytorch/model/unet3d.py``, ``layers.py``; instance norm,
  1 channel in, 3 classes), summed by :func:`mlperf_unet3d_reference_count`
  below independently of the zoo's module code.
- pix2pix ``unet_256`` generator: 54.414 M, the figure the authors' code prints
  ("[Network G] Total number of parameters : 54.414 M", batch norm, 3 -> 3 channels).

Everything runs at tiny sizes on one thread; the ONNX exports (torch.export, 5-20 s
each here) are marked slow.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import CTImageStorage

from engine.api import ModelRegistry, ModelSpec, PluginError, SeriesInfo, Volume
from engine.config import EngineConfig
from engine.outputs.sr import check_regions
from engine.synthetic.ct_phantom import generate_ct_phantom
from engine.runtime.artifacts import ModelArtifacts, network_fingerprint
from engine.runtime.onnx_backend import OnnxRuntimeBackend
from engine.runtime.torch_backend import TorchBackend
from plugins import zoo
from plugins.zoo import boxes, dcgan, inception, resnet, ssd, unet3d, vgg
from plugins.zoo.catalogue import takes_series, zoo_specs
from plugins.zoo.labels import UNTRAINED
from plugins.zoo.options import ZooOptions
from plugins.zoo.sliding_window import SlidingWindowHandler, blend_weights, patch_grid
from plugins.zoo.weights import parameter_count

MODEL_NAMES = ["zoo-resnet18", "zoo-resnet50", "zoo-inception-v3", "zoo-vgg16", "zoo-ssd", "zoo-unet3d", "zoo-dcgan"]
TINY = {"zoo.input_size": 75, "zoo.num_classes": 10, "zoo.ssd.input_size": 268, "zoo.unet3d.patch": "64x32x32",
        "zoo.max_batch": 4}
PARITY_TOLERANCE = 1e-3  # absolute, on logits/outputs of order 1-10; measured 1e-7 .. 3e-5 (3D U-Net) here
TOLERANCE = 0.01  # parameter counts within 1 % of the reference


def mlperf_unet3d_reference_count(in_channels: int = 1, classes: int = 3,
                                  filters: tuple[int, ...] = (32, 64, 128, 256, 320)) -> int:
    """Parameters of the MLCommons reference 3D U-Net, summed from its layer list.

    conv_block = 3x3x3 conv without bias + affine InstanceNorm3d (2 per channel);
    InputBlock: 2 conv blocks; DownsampleBlock(i, o): 2 conv blocks (i->o, o->o);
    bottleneck = DownsampleBlock(320, 320); UpsampleBlock(i, o): 2x2x2 transposed
    conv with bias (i->o) + conv blocks (2o->o, o->o); OutputLayer: 1x1x1 conv with bias.
    """
    def block(cin: int, cout: int) -> int:
        return 27 * cin * cout + 2 * cout

    def down(cin: int, cout: int) -> int:
        return block(cin, cout) + block(cout, cout)

    def up(cin: int, cout: int) -> int:
        return 8 * cin * cout + cout + block(2 * cout, cout) + block(cout, cout)

    total = block(in_channels, filters[0]) + block(filters[0], filters[0])
    total += sum(down(i, o) for i, o in zip(filters[:-1], filters[1:])) + down(filters[-1], filters[-1])
    total += up(filters[-1], filters[-1]) + sum(up(i, o) for i, o in zip(reversed(filters[1:]),
                                                                         reversed(filters[:-1])))
    return total + filters[0] * classes + classes


REFERENCE_COUNTS = {
    "resnet18": (resnet.resnet18, 11_689_512),
    "resnet50": (resnet.resnet50, 25_557_032),
    "inception-v3": (inception.InceptionV3, 23_834_568),
    "inception-v3+aux": (lambda: inception.InceptionV3(aux_logits=True), 27_161_264),
    "vgg16": (vgg.VGG16, 138_357_544),
    "ssd300-vgg16": (ssd.SSD300, 35_641_826),
    "unet3d-mlperf": (unet3d.UNet3D, 31_190_243),
    "pix2pix-unet256": (lambda: dcgan.Pix2PixGenerator(3, 3), 54_414_000),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in zoo_specs(ZooOptions.from_mapping(TINY))}


_NETWORKS: dict[str, torch.nn.Module] = {}


def network_of(spec: ModelSpec) -> torch.nn.Module:
    """Each tiny network built once per test session (VGG-16 alone takes seconds to initialise)."""
    if spec.name not in _NETWORKS:
        _NETWORKS[spec.name] = spec.load_network()
    return _NETWORKS[spec.name]


def phantom_study(slices: int = 3, size: int = 32) -> Volume:
    """A tiny phantom CT series as a worker would decode it (seed never used for training anywhere)."""
    phantom = generate_ct_phantom(7013, slices=slices, size=size, nodules=0)
    return Volume(stored=phantom.hu, spacing=phantom.spacing, origin=phantom.origin,
                  orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), sources=[], frames=[(i, 1) for i in range(slices)],
                  series=SeriesInfo(study_uid="1.2.3", series_uid="1.2.3.4", modality="CT",
                                    sop_class_uid=CTImageStorage, instance_count=slices, frame_count=slices))


def expected_output(spec: ModelSpec, batch: int) -> tuple[int, ...]:
    """What each family's network returns for ``batch`` items of its input shape at the TINY options."""
    if spec.name == "zoo-ssd":
        return (batch, int(ssd.default_boxes(spec.input_shape[-1]).shape[0]), 4 + 91)
    if spec.name == "zoo-unet3d":
        return (batch, 3, *spec.input_shape[1:])
    if spec.name == "zoo-dcgan":
        return (batch, *spec.input_shape)
    return (batch, TINY["zoo.num_classes"])


# --- architectures ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_parameter_count_matches_the_reference(name: str) -> None:
    make, reference = REFERENCE_COUNTS[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        count = parameter_count(make())
    assert abs(count - reference) <= TOLERANCE * reference, (count, reference)


def test_mlperf_unet3d_layer_sum_is_the_stated_reference() -> None:
    assert mlperf_unet3d_reference_count() == REFERENCE_COUNTS["unet3d-mlperf"][1]


def test_input_channels_and_classes_change_only_the_stem_and_head() -> None:
    with torch.device("meta"):
        rgb, grey = parameter_count(resnet.resnet50()), parameter_count(resnet.resnet50(in_channels=1, num_classes=10))
    assert rgb - grey == 2 * 64 * 7 * 7 + 990 * 2048 + 990


def test_random_initialisation_is_deterministic(specs) -> None:
    spec = specs["zoo-resnet18"]
    assert network_fingerprint(spec.load_network(), spec) == network_fingerprint(spec.load_network(), spec)


def test_ssd_default_boxes_follow_ssd300() -> None:
    anchors = ssd.default_boxes(300)
    assert anchors.shape == (8732, 4)
    assert torch.allclose(anchors[0], torch.tensor([4 / 300, 4 / 300, 0.07, 0.07]))
    assert torch.allclose(anchors[1, 2:], torch.tensor([math.sqrt(0.07 * 0.15)] * 2))
    assert torch.allclose(anchors[-1], torch.tensor([0.5, 0.5, 0.87 / math.sqrt(2), 1.0]))  # 0.87*sqrt(2) clipped
    assert ssd.feature_map_sizes(300) == [38, 19, 10, 5, 3, 1]
    with pytest.raises(ValueError, match="268"):
        ssd.feature_map_sizes(200)


# --- boxes: decoding and NMS ------------------------------------------------------------------------------------

def _greedy_nms(box_list: torch.Tensor, scores: torch.Tensor, threshold: float, classes: torch.Tensor) -> list[int]:
    """The textbook loop (its own IoU arithmetic in numpy), for comparison."""
    corners, labels = box_list.numpy().astype(np.float64), classes.numpy()
    kept: list[int] = []
    for index in scores.argsort(descending=True, stable=True).tolist():
        others, box = corners[kept], corners[index]
        width = np.clip(np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0]), 0, None)
        height = np.clip(np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1]), 0, None)
        areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
        iou = width * height / (areas + (box[2] - box[0]) * (box[3] - box[1]) - width * height)
        if not np.any((iou > threshold) & (labels[kept] == labels[index])):
            kept.append(index)
    return kept


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_nms_equals_the_greedy_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand((300, 2), generator=generator) * 0.8
    sizes = torch.rand((300, 2), generator=generator) * 0.2 + 0.02
    box_list = torch.cat([corners, corners + sizes], 1)
    scores = torch.rand(300, generator=generator)
    classes = torch.randint(1, 4, (300,), generator=generator)
    kept = boxes.nms(box_list, scores, 0.45, classes)
    assert kept.tolist() == _greedy_nms(box_list, scores, 0.45, classes)
    assert 0 < len(kept) < 300  # the case suppresses something and keeps something


def test_iou_of_known_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(boxes.pairwise_iou(a, b), expected)


def test_decode_inverts_the_ssd_encoding() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.05]])
    truth = torch.tensor([[0.35, 0.25, 0.7, 0.8], [0.08, 0.86, 0.13, 0.95]])
    centre, size = (truth[:, :2] + truth[:, 2:]) / 2, truth[:, 2:] - truth[:, :2]
    deltas = torch.cat([(centre - anchors[:, :2]) / anchors[:, 2:] / 0.1, torch.log(size / anchors[:, 2:]) / 0.2], 1)
    assert torch.allclose(boxes.decode(deltas[None], anchors)[0], truth, atol=1e-6)


# --- sliding window ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 40, 37), (70, 64, 100), (1, 20, 20)])
def test_patch_grid_covers_the_volume_with_whole_strides(shape) -> None:
    grid = patch_grid(shape, (64, 32, 32), 0.5)
    for n, padded, patch, stride, before in zip(shape, grid.padded, grid.patch, grid.strides, grid.before):
        assert padded >= max(n, patch) and (padded - patch) % stride == 0 and padded - max(n, patch) < stride
        assert 0 <= before <= padded - n
    assert len(grid.origins()) == math.prod(grid.counts)


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_blending_reconstructs_what_the_patches_say(blend: str) -> None:
    from plugins.zoo.labels import Provenance
    from plugins.zoo.weights import WeightsSource

    handler = SlidingWindowHandler(Provenance("zoo-unet3d", "test", WeightsSource()), (64, 32, 32), 0.5, blend)
    volume = phantom_study(slices=6, size=40)
    patches = handler.preprocess(volume)
    grid = handler.grid(volume)
    assert patches.shape == (len(grid.origins()), 1, 64, 32, 32) and len(grid.origins()) > 1
    blended = handler.blend_logits(patches.expand(-1, 3, -1, -1, -1), grid)  # "logits" = the input itself
    (bz, by, bx), (d, h, w) = grid.before, grid.resampled
    expected = handler.resampled_input(volume)[bz:bz + d, by:by + h, bx:bx + w]
    assert torch.allclose(blended[1], expected, atol=1e-5)


def test_gaussian_weights_peak_in_the_middle_and_stay_positive() -> None:
    weights = blend_weights((64, 32, 32), "gaussian")
    assert float(weights.max()) == pytest.approx(1.0) and float(weights.min()) > 0
    assert float(weights[32, 16, 16]) > float(weights[0, 16, 16]) > float(weights[0, 0, 0])


def test_segmentation_label_map_comes_back_at_the_series_size(specs) -> None:
    handler = specs["zoo-unet3d"].handler
    volume = phantom_study(slices=4, size=40)
    grid = handler.grid(volume)
    logits = torch.zeros((len(grid.origins()), 3, *grid.patch))
    logits[:, 1] = 1.0  # "kidney" everywhere
    result = handler.postprocess(logits, volume)
    assert result.label_map.shape == volume.shape and result.label_map.dtype == np.uint8
    assert (result.label_map == 1).all() and [f.label for f in result.findings] == ["Kidney"]
    assert result.findings[0].volume_ml == pytest.approx(np.prod(volume.shape) * volume.voxel_volume_ml, rel=1e-3)
    centre = volume.patient_coordinates(np.array([(n - 1) / 2 for n in volume.shape]))[0]
    assert np.allclose(result.findings[0].centroid_mm, centre, atol=0.1)


# --- one phantom study through each handler (preprocess -> network -> postprocess) ------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_phantom_study_through_the_handler(name: str, specs) -> None:
    spec = specs[name]
    volume = phantom_study()
    batch = spec.handler.preprocess(volume)
    assert tuple(batch.shape[1:]) == spec.input_shape and batch.dtype == torch.float32
    with torch.inference_mode():
        output = torch.cat([network_of(spec)(chunk) for chunk in batch.split(spec.max_batch)])
    assert tuple(output.shape) == expected_output(spec, batch.shape[0])
    result = spec.handler.postprocess(output, volume)
    assert result.summary.startswith(UNTRAINED) and result.extra["untrained_benchmark_model"] is True
    if name == "zoo-ssd":
        assert 0 < len(result.findings) <= 20 and result.extra["detections"] >= len(result.findings)
        assert all(len(f.regions) == 1 and 0 <= f.probability <= 1 for f in result.findings)
        check_regions(result, volume, spec)  # what the SR writer enforces
    elif name == "zoo-unet3d":
        assert result.label_map.shape == volume.shape and set(np.unique(result.label_map)) <= {0, 1, 2}
        assert result.segment_labels == ["Kidney", "Kidney tumour"] and result.extra["patches"] == batch.shape[0]
    elif name == "zoo-dcgan":
        assert result.derived_voxels.shape == volume.shape and result.derived_voxels.dtype == np.float32
        assert np.isfinite(result.derived_voxels).all()
        assert -1024 <= result.derived_voxels.min() and result.derived_voxels.max() <= 3071
    else:
        probabilities = list(result.class_probabilities.values())
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6


def test_the_untrained_label_reaches_result_json_and_the_dicom_series_description(specs, tmp_path: Path) -> None:
    import io

    import pydicom

    from engine.outputs.result_json import ResultJsonWriter
    from engine.outputs.sr import SrWriter
    from engine.synthetic.ct_phantom import write_ct_series
    from engine.worker.decode import decode_series

    paths = write_ct_series(generate_ct_phantom(7014, slices=2, size=32, nodules=0), tmp_path)
    volume = decode_series([path.read_bytes() for path in paths],
                           SeriesInfo("1.2", "1.2.3", "CT", CTImageStorage, instance_count=2))
    spec = specs["zoo-resnet18"]
    with torch.inference_mode():
        result = spec.handler.postprocess(network_of(spec)(spec.handler.preprocess(volume)), volume)
    document = json.loads(ResultJsonWriter().write(result, volume, spec)[0].data)
    assert document["summary"].startswith(UNTRAINED) and document["extra"]["untrained_benchmark_model"] is True
    (report,) = SrWriter().write(result, volume, spec)
    assert "untrained" in pydicom.dcmread(io.BytesIO(report.data)).SeriesDescription


def test_each_slice_gets_its_neighbours_as_channels(specs) -> None:
    volume = phantom_study(slices=5)
    batch = specs["zoo-resnet18"].handler.preprocess(volume)
    assert torch.equal(batch[2, 0], batch[1, 1]) and torch.equal(batch[2, 2], batch[3, 1])


# --- ONNX export and parity -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo-model-cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_matches_torch(name: str, specs, cache: Path) -> None:
    spec = replace(specs[name], load_network=lambda: network_of(specs[name]))  # the network built above, reused
    artifacts = ModelArtifacts(spec, cache)
    torch_backend, ort_backend = TorchBackend("cpu", threads=1), OnnxRuntimeBackend("cpu", threads=1)
    torch_backend.initialize(artifacts)
    ort_backend.initialize(artifacts)
    inputs = torch.rand((1, *spec.input_shape), generator=torch.Generator().manual_seed(3))  # export used batch 2
    expected, got = torch_backend._run(inputs)[0], ort_backend._run(inputs)[0]
    assert tuple(got.shape) == tuple(expected.shape) == expected_output(spec, 1)
    assert float((got - expected).abs().max()) <= PARITY_TOLERANCE


# --- options, labels and registration ---------------------------------------------------------------------------

def _config(**sections) -> EngineConfig:
    return EngineConfig.model_validate({"plugins": {"modules": ["plugins.zoo"]}, **sections})


def test_every_model_registers_with_untrained_labels_at_the_reference_sizes() -> None:
    registry = ModelRegistry()
    zoo.scanstream_register_models(registry=registry, config=_config())
    assert [spec.name for spec in registry.all()] == sorted(MODEL_NAMES)
    shapes = {spec.name: spec.input_shape for spec in registry.all()}
    assert shapes["zoo-unet3d"] == (1, 128, 128, 128) and shapes["zoo-resnet50"] == (3, 224, 224)
    assert shapes["zoo-ssd"] == (3, 300, 300) and shapes["zoo-dcgan"] == (1, 256, 256)
    kinds = {spec.name: spec.outputs for spec in registry.all()}
    assert kinds["zoo-unet3d"] == ("result_json", "seg") and kinds["zoo-dcgan"] == ("result_json", "derived_series")
    assert kinds["zoo-ssd"] == kinds["zoo-vgg16"] == ("result_json", "sr")
    for spec in registry.all():
        assert spec.description.startswith(UNTRAINED) and spec.version == "1.0-untrained"
        assert spec.selector(SeriesInfo("1", "2", "CT", CTImageStorage, instance_count=1))
        assert not spec.selector(SeriesInfo("1", "2", "MR", "1.2.840.10008.5.1.4.1.1.4", instance_count=40))


def test_routing_models_limits_what_is_registered() -> None:
    registry = ModelRegistry()
    zoo.scanstream_register_models(registry=registry, config=_config(routing={"models": ["zoo-ssd"]}))
    assert [spec.name for spec in registry.all()] == ["zoo-ssd"]


@pytest.mark.parametrize("options, message", [
    ({"zoo.inputsize": 224}, "not a zoo setting"),
    ({"zoo.channels": 2}, "must be odd"),
    ({"zoo.unet3d.patch": 48}, "multiples of 32"),
    ({"zoo.unet3d.patch": "32x32x32"}, "more than one voxel"),
    ({"zoo.ssd.input_size": 256}, "at least 268"),
    ({"zoo.dcgan.input_size": 300}, "multiple of 256"),
    ({"zoo.unet3d.blend": "median"}, "gaussian or uniform"),
    ({"zoo.input_size": "big"}, "expected an integer"),
    ({"zoo.weights.zoo-resnet51": "/tmp/x.pt"}, "no zoo model"),
    ({"zoo.weights.zoo-resnet18": "/nonexistent/weights.pt"}, "does not exist"),
])
def test_bad_options_stop_start_up_naming_the_key(options, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        zoo_specs(ZooOptions.from_mapping(options))


def test_options_from_the_environment_may_be_strings() -> None:
    options = ZooOptions.from_mapping({"zoo.unet3d.patch": "64x32x32", "zoo.input_size": "96", "other.key": 1})
    assert options.unet3d_patch == (64, 32, 32) and options.input_size == 96


def test_a_weights_file_replaces_the_random_weights_and_the_labels_say_so(tmp_path: Path, specs) -> None:
    source = specs["zoo-resnet18"]
    state = {key: value + 1.0 if value.is_floating_point() else value
             for key, value in network_of(source).state_dict().items()}
    path = tmp_path / "resnet18.pt"
    torch.save(state, path)
    spec, = zoo_specs(ZooOptions.from_mapping({**TINY, "zoo.weights.zoo-resnet18": str(path)}), {"zoo-resnet18"})
    loaded = spec.load_network().state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert not spec.description.startswith(UNTRAINED) and spec.version.startswith("1.0-w")
    result = spec.handler.postprocess(torch.zeros((3, 10)), phantom_study())
    assert result.summary.startswith("BENCHMARK MODEL") and result.extra["untrained_benchmark_model"] is False
    torch.save({"fc.weight": torch.zeros(1)}, path)
    broken, = zoo_specs(ZooOptions.from_mapping({**TINY, "zoo.weights.zoo-resnet18": str(path)}), {"zoo-resnet18"})
    with pytest.raises(PluginError, match="does not fit"):
        broken.load_network()


def test_selector_takes_single_slice_ct() -> None:
    assert takes_series(SeriesInfo("1", "2", "ct", CTImageStorage, frame_count=1))
    assert not takes_series(SeriesInfo("1", "2", "CT", CTImageStorage))


# --- the benchmark command --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_quick_run_writes_its_json_and_report(tmp_path: Path, cache: Path) -> None:
    from benchmarks import zoo as zoo_benchmark

    # The cache is the parity tests': --quick's zoo-resnet18 has the same weights and shapes, so its export is reused.
    assert zoo_benchmark.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--cache", str(cache)]) == 0
    result = json.loads((tmp_path / "zoo.json").read_text())
    model = result["models"]["zoo-resnet18"]
    assert set(model["images_per_s"]) == {"torch", "onnxruntime"} and "1" in model["images_per_s"]["torch"]
    assert model["x_torch_b1"]["torch"]["1"] == 1.0 and result["machine"]["cores"] >= 1
    report = (tmp_path / "zoo.md").read_text()
    assert "| zoo-resnet18 |" in report and "see below" in report and "6.8 samples/s" in report
