"""Pre- and postprocessing around the nodule classifiers: a study-level "nodule present" probability.

CT (2.5D): every slice, lung-windowed, resampled to 128 x 128 over the whole
field of view and stacked with the slices about 2.5 and 5 mm either side,
gets a probability; the study's probability is the largest of them. Max
rather than a noisy-OR over the top-k slices: a nodule lights up several
neighbouring slices and a vessel that fools one slice fools its neighbours
too, so slice scores are far from independent and a noisy-OR would push both
towards 1; the max keeps the study score on the scale of one slice's score,
whatever the slice count, and names the slice that decided it.

Radiograph (DX/CR): the one image, inverted when MONOCHROME1, normalised by
its own 1st and 99th percentiles (For Presentation images come with any
processing and bit depth) and resampled with anti-aliasing to 256 x 256,
with its local contrast (an unsharp mask) as a second channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.api import Finding, ModelResult, Volume
from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan
from plugins.chest_ct import LUNG_WINDOW_HU, neighbour_step
from plugins.nodule_cls.network import CT_IN_CHANNELS, CT_SIZE, DX_SIZE

LABEL = "nodule"
CT_THRESHOLD = 0.5  # decision threshold on the study probability (max over slices)
DX_THRESHOLD = 0.5  # decision threshold on the radiograph's probability
DX_PERCENTILES = (1.0, 99.0)
LOCAL_SIGMA_PX = 6.0  # local contrast against a blur of about 8 mm (6 input pixels) on a chest
LOCAL_GAIN = 10.0  # a nodule of 0.02-0.07 of the range becomes 0.2-0.7
PERCENTILE_STEP = 4  # percentiles from every 4th pixel each way: the same to a grey level, 16x less work


def _probabilities(output: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 1) logits to N probabilities (float64)."""
    logits = torch.as_tensor(output).detach().to("cpu", torch.float32).reshape(-1)
    return torch.sigmoid(logits).double().numpy()


def classification_result(probability: float, threshold: float, what: str, extra: dict[str, Any]) -> ModelResult:
    """The study-level result: class probability, a finding when at or above ``threshold``, a summary."""
    probability = round(float(probability), 4)
    present = probability >= threshold
    verdict = "nodule present" if present else "no nodule"
    return ModelResult(
        summary=f"nodule classification ({what}): {verdict}, p={probability:.3f} (threshold {threshold:.2f})",
        findings=[Finding(label=LABEL, probability=probability)] if present else [],
        class_probabilities={LABEL: probability},
        extra={"threshold": threshold, **extra},
    )


class CtNoduleClsHandler:
    """Implements :class:`engine.api.ModelHandler` for the CT model: slices in, max slice probability out."""

    def plan(self, volume: Volume) -> SlicePlan:
        """Lung window, whole slice resampled to :data:`CT_SIZE` square, the neighbouring slices as channels."""
        return SlicePlan(size=(CT_SIZE, CT_SIZE),
                         intensity=Intensity.window(*LUNG_WINDOW_HU).with_rescale(volume.slope, volume.intercept),
                         context_radius=CT_IN_CHANNELS // 2, context_step=neighbour_step(volume))

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The volume as (S, 5, 128, 128) float32 network input (CPU path)."""
        return run_slice_plan(volume.stored, self.plan(volume))

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        """(S, 1) slice logits to the study probability: the most suspicious slice's."""
        slices = _probabilities(output)
        if slices.size != volume.shape[0]:
            raise ValueError(f"expected one logit per slice ({volume.shape[0]}), got {slices.size}")
        top = int(np.argmax(slices))
        return classification_result(float(slices[top]), CT_THRESHOLD, "CT",
                                     {"aggregation": "max over slices", "slice_index": top})


def photometric_interpretation(volume: Volume) -> str:
    """The first source's PhotometricInterpretation (MONOCHROME2 when the volume has no sources)."""
    if not volume.sources:
        return "MONOCHROME2"
    return str(getattr(volume.sources[0], "PhotometricInterpretation", "MONOCHROME2")).strip()


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) images, edges reflected."""
    radius = int(3 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(F.conv2d(padded, kernel.view(1, 1, -1, 1)), kernel.view(1, 1, 1, -1))


def radiograph_input(stored: np.ndarray, monochrome1: bool = False) -> torch.Tensor:
    """One (rows, cols) image to (1, 2, 256, 256) float32: the image and its local contrast.

    Channel 0 is the image normalised by its own percentiles onto [0, 1] and
    resampled with anti-aliasing; channel 1 is its local contrast (the image
    minus a Gaussian blur of :data:`LOCAL_SIGMA_PX`, times :data:`LOCAL_GAIN`,
    clipped to [-1, 1]): an unsharp mask, as chest radiograph readers and CAD
    use, which lifts a nodule of a few hundredths of the range above the
    lungs' slow shading. MONOCHROME1 images (low values bright) are inverted,
    so high always means more attenuation, as in the images the model learnt.
    """
    image = np.asarray(stored)
    if image.ndim != 2:
        raise ValueError(f"expected one (rows, cols) image, got shape {image.shape}")
    low, high = np.percentile(image[::PERCENTILE_STEP, ::PERCENTILE_STEP], DX_PERCENTILES)
    scale = 1.0 / max(float(high - low), 1e-6)
    tensor = torch.as_tensor(image).to(torch.float32, copy=True)
    tensor = ((tensor - float(low)) * scale).clamp_(0.0, 1.0)
    if monochrome1:
        tensor = 1.0 - tensor
    resized = F.interpolate(tensor[None, None], size=(DX_SIZE, DX_SIZE), mode="bilinear", align_corners=False,
                            antialias=True)
    local = ((resized - _gaussian_blur(resized, LOCAL_SIGMA_PX)) * LOCAL_GAIN).clamp_(-1.0, 1.0)
    return torch.cat([resized, local], dim=1)


class DxNoduleClsHandler:
    """Implements :class:`engine.api.ModelHandler` for the radiograph model: one image, one probability.

    No ``plan``: the percentile normalisation, MONOCHROME1 inversion and
    anti-aliased downsampling (a detector image is often 10x larger than the
    input) are not a :class:`SlicePlan`, and one image per study costs little
    on the CPU.
    """

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """The radiograph as (1, 1, 256, 256) float32 network input."""
        if volume.shape[0] != 1:
            raise ValueError(f"a radiograph has one image, the volume has {volume.shape[0]}")
        return radiograph_input(volume.stored[0], photometric_interpretation(volume) == "MONOCHROME1")

    def postprocess(self, output: torch.Tensor, volume: Volume) -> ModelResult:
        """One logit to the study probability."""
        probability = _probabilities(output)
        if probability.size != 1:
            raise ValueError(f"expected one logit for the radiograph, got {probability.size}")
        return classification_result(float(probability[0]), DX_THRESHOLD, "radiograph", {})
