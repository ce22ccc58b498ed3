"""CPU preprocessing throughput (GB/s of raw int16 input): ScanStream's fused path vs numpy, plain torch and MONAI.

Run: ``python -m benchmarks.preprocess [--quick]``. The same ~100 MB CT volume
(200 x 512 x 512 int16, stored values with intercept -1024) is windowed to the
lung window [-1000, 400] HU onto [0, 1] and resampled in-plane to 256 x 256:

- ``scanstream``: :func:`engine.kernels.cpu.run_slice_plan` (chunked, folded window);
- ``numpy``: astype float32, rescale, clip, normalise, then ``scipy.ndimage.zoom``
  (order=1, per volume; bilinear in-plane, no change along slices);
- ``torch-plain``: the obvious torch ops on the whole volume (to float, interpolate, clamp, normalise);
- ``monai``: ``Compose([ScaleIntensityRange(clip=True), Resize((-1, 256, 256), mode="trilinear")])``
  on the HU volume with a channel axis (only when MONAI is installed: the ``bench`` extra).

Goal from the issue: >= 1 GB/s of raw input on 2 cores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmarks.common import best_seconds, parser, print_table, write_result
from engine.kernels.cpu import run_slice_plan
from engine.kernels.plan import Intensity, SlicePlan

LOW, HIGH, INTERCEPT = -1000.0, 400.0, -1024.0
GOAL_GB_S = 1.0


def ct_volume(slices: int, size: int) -> np.ndarray:
    """A deterministic CT-like volume of stored values: air, soft tissue and bone, plus noise."""
    rng = np.random.default_rng(0)
    rows = np.linspace(-1, 1, size)[:, None] ** 2 + np.linspace(-1, 1, size)[None, :] ** 2
    body = np.where(rows < 0.8, 1064.0, 24.0)  # stored = HU + 1024: soft tissue inside, air outside
    volume = body[None] + rng.normal(0, 30, size=(slices, size, size))
    volume[:, size // 3: size // 3 + 8, :] = 2024.0  # a bone band
    return np.clip(volume, 0, 4095).astype(np.int16)


def numpy_path(stored: np.ndarray, size: int) -> np.ndarray:
    hu = stored.astype(np.float32) + INTERCEPT
    normalised = (np.clip(hu, LOW, HIGH) - LOW) / (HIGH - LOW)
    factor = size / stored.shape[1]
    return ndimage.zoom(normalised, (1.0, factor, factor), order=1)


def torch_plain(stored: np.ndarray, size: int) -> torch.Tensor:
    hu = torch.from_numpy(stored).to(torch.float32) + INTERCEPT
    resized = F.interpolate(hu[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return (resized.clamp(LOW, HIGH) - LOW) / (HIGH - LOW)


def monai_path(size: int):
    """The MONAI pipeline, or None when MONAI is not installed."""
    try:
        from monai.transforms import Compose, Resize, ScaleIntensityRange
    except ImportError:
        return None
    pipeline = Compose([ScaleIntensityRange(a_min=LOW, a_max=HIGH, b_min=0.0, b_max=1.0, clip=True),
                        Resize(spatial_size=(-1, size, size), mode="trilinear")])
    return lambda stored: pipeline(torch.from_numpy(stored).to(torch.float32)[None] + INTERCEPT)


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--threads", type=int, default=2)
    args = arguments.parse_args(argv)
    torch.set_num_threads(args.threads)
    slices, full, size = (8, 128, 64) if args.quick else (200, 512, 256)
    stored = ct_volume(slices, full)
    plan = SlicePlan((size, size), Intensity.window(LOW, HIGH).with_rescale(1.0, INTERCEPT))
    candidates = {"scanstream": lambda: run_slice_plan(stored, plan), "numpy": lambda: numpy_path(stored, size),
                  "torch-plain": lambda: torch_plain(stored, size)}
    monai = monai_path(size)
    if monai is not None:
        candidates["monai"] = lambda: monai(stored)
    else:
        print("MONAI not installed (pip install -e .[bench]): skipped")
    repeats = 1 if args.quick else 3
    gb_s = {name: stored.nbytes / 1e9 / best_seconds(run, repeats=repeats) for name, run in candidates.items()}
    agreement = float((run_slice_plan(stored, plan)[:, 0] - torch_plain(stored, size)[:, 0]).abs().max())
    rows = [[name, value, value / gb_s["numpy"], value / gb_s["monai"] if "monai" in gb_s else "-"]
            for name, value in gb_s.items()]
    print(f"input {stored.shape} int16 = {stored.nbytes / 1e6:.0f} MB -> {size}x{size}; "
          f"max |scanstream - torch-plain| = {agreement:.2e}")
    print_table(["path", "GB/s raw input", "x numpy", "x MONAI"], rows)
    meets = gb_s["scanstream"] >= GOAL_GB_S
    print(f"goal >= {GOAL_GB_S} GB/s on {args.threads} threads: {'met' if meets else 'NOT met'}")
    write_result(args.out, "preprocess", {"threads": args.threads, "quick": args.quick, "shape": list(stored.shape),
                                          "output_size": size, "gb_per_s": gb_s, "max_abs_difference": agreement,
                                          "ratio_vs_numpy": gb_s["scanstream"] / gb_s["numpy"],
                                          "ratio_vs_monai": gb_s["scanstream"] / gb_s["monai"] if monai else None,
                                          "goal_gb_per_s": GOAL_GB_S, "goal_met": meets})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
