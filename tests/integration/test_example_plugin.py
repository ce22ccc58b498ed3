"""The example plugin package as its author uses it: pip-installed, discovered, checked, tested, served.

The package is installed with pip into a temporary folder (offline: no deps, no
build isolation, the venv's setuptools builds it) and that folder is put on
PYTHONPATH, so ScanStream finds it only through its ``scanstream.plugins``
entry point, as it would find any third-party plugin.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from engine.testing import engine_process, make_phantom_study, read_seg_mask, send_and_wait

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scanstream-example-plugin"
MODEL = "example-bright-spots"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder pip installed the example into, a copy of the example's sources with its tests)."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "source"  # a copy, so the build's scratch folders stay out of the repository
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=240)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (target / "scanstream_example" / "plugin.py").exists()
    return target, source


def environment(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def scanstream(target: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          env=environment(target), timeout=240)


def test_scanstream_discovers_and_checks_the_installed_example(installed: tuple[Path, Path]) -> None:
    target, _ = installed
    listing = scanstream(target, "plugins", "--no-measure")
    assert listing.returncode == 0, listing.stderr
    assert "  scanstream_example\n" in listing.stdout
    assert f"  {MODEL} 0.1.0  outputs=result_json,seg  teaching example" in listing.stdout

    checked = scanstream(target, "plugins", "check", MODEL, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and report["plugin"] == "scanstream_example"
    assert report["source"].startswith("entry point scanstream_example.plugin of scanstream-example-plugin 0.1.0")
    (model,) = report["models"]
    assert {c["name"]: c["status"] for c in model["checks"]} == dict.fromkeys(
        ["spec", "weights", "phantom", "preprocess", "plan", "network", "postprocess", "output:result_json",
         "output:seg"], "pass")


def test_the_examples_own_test_passes_with_the_installed_fixtures(installed: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    # Every distribution, as pytest reads them (a stale scanstream.egg-info in the checkout may come first).
    pytest_plugins = {(entry.name, entry.value) for dist in importlib.metadata.distributions()
                      for entry in dist.entry_points if entry.group == "pytest11"}
    if ("scanstream", "engine.testing.pytest_plugin") not in pytest_plugins:
        pytest.fail("scanstream's pytest11 entry point is not installed; after setup.cfg gained it, reinstall "
                    "the package: .venv/bin/pip install --no-deps --no-build-isolation -e .")
    target, source = installed
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                          str(tmp_path / "basetemp"), "tests"], cwd=source, capture_output=True, text=True,
                         env=environment(target), timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout


def test_an_engine_loads_the_example_and_writes_its_seg(installed: tuple[Path, Path], tmp_path: Path,
                                                        require_storescu: str) -> None:
    target, _ = installed
    study = make_phantom_study(tmp_path / "study", slices=24, nodules=1)
    engine = engine_process(tmp_path / "data", models=[MODEL], env={"PYTHONPATH": environment(target)["PYTHONPATH"]})
    with engine:
        results = send_and_wait(study, engine)
    assert results.sender == "storescu"
    (job,) = results.jobs
    assert (job.model, job.state) == (MODEL, "done"), job.reason
    assert job.document["study_instance_uid"] == study.study_uid and job.document["findings"]
    seg = pydicom.dcmread(job.files["seg.dcm"])
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.StudyInstanceUID == study.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    mask = read_seg_mask(job.files["seg.dcm"], study.files)
    expected = ndimage.uniform_filter(study.phantom.hu.astype(np.float32), size=(1, 3, 3), mode="nearest") > 300.0
    overlap = 2.0 * float((mask & expected).sum()) / float(mask.sum() + expected.sum())
    assert overlap > 0.99
