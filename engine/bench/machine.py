"""A description of the machine a figure was measured on, recorded next to every benchmark result."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, Python and runtime versions, and the date."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = "absent"
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), **versions, "date": time.strftime("%Y-%m-%d")}
