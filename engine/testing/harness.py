"""Helpers for tests of ScanStream and of its plugins: a real engine in a subprocess, phantom studies, sending.

``EngineProcess`` starts ``scanstream serve`` on free loopback ports with its own
data folder and config, waits for ``/readyz``, and stops it with SIGTERM. It adds
an operator (:data:`TEST_USER`) to the engine's users first, so ``api_token``
opens the console's API (``api_json``) and ``TEST_PASSWORD`` its pages.

:mod:`engine.testing.pytest_plugin` (the pytest plugin ``scanstream``, entry point
``pytest11``) turns these into fixtures for a plugin package's tests once
scanstream is installed:

- ``scanstream_phantom_study``: a phantom chest CT written as DICOM files, with
  its truth (:class:`PhantomStudy`); ``@pytest.mark.scanstream_phantom(seed=...,
  nodules=..., slices=...)`` changes it;
- ``scanstream_engine``: a started :class:`EngineProcess` with its own data folder,
  configured by ``@pytest.mark.scanstream_engine(plugin_modules=[...],
  plugin_paths=[...], models=[...], config={...}, workers=1)``;
  ``scanstream_engine_factory(**the same options)`` starts more;
- ``scanstream_send``: ``scanstream_send(study, engine)`` sends with DCMTK's
  storescu (pynetdicom when storescu is absent), waits until every job of the
  study is final and returns :class:`StudyResults` (``result.json`` documents
  and the paths of the output files).

Fixtures are lazy: loading the plugin imports nothing beyond pytest, pluggy and
the standard library, and nothing starts unless a test asks for a fixture.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from engine.testing.ports import free_port

if TYPE_CHECKING:
    import numpy as np

    from engine.synthetic.ct_phantom import CTPhantom
    from engine.ledger.store import JobRow, Ledger


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config file from nested dicts (enough for tests).

    A section given as a dict is a ``[section]`` table (dict values become inline
    tables); a section given as a list of dicts is an array of tables
    (``[[models]]``, ``[[destinations]]``).
    """
    lines = []
    for section, values in sections.items():
        for table in (values if isinstance(values, list) else [values]):
            lines.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items())
            lines.append("")
    path.write_text("\n".join(lines))
    return path


# ONNX exports and backend timings are keyed by weights and host, so test engines share them.
TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "scanstream-test-model-cache"
TEST_USER = "scanstream-test"
TEST_PASSWORD = "test engine password"  # a test engine listens on loopback only


def add_console_user(data_dir: Path, name: str, role: str, password: str) -> str:
    """Add a console user to the engine's data folder (before or while it runs; kept when there already, as in a
    restarted engine's folder); returns a new API token of theirs."""
    from engine.web.auth.store import AccessStore

    store = AccessStore(Path(data_dir) / "users.sqlite")
    try:
        if not any(user.name == name for user, _ in store.users()):
            store.add_user(name, role, password, time.time())
        return store.issue_token(name, time.time())
    finally:
        store.close()


@dataclass
class EngineProcess:
    """``scanstream serve`` in a subprocess, on free ports, with its data under ``data_dir``."""

    data_dir: Path
    workers: int = 1
    idle_timeout_s: float = 5.0
    heartbeat_interval_s: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ae_title: str = "SCANSTREAM"
    model_cache: Path = field(default_factory=lambda: TEST_MODEL_CACHE)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.broker_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "serve.log"
        self.api_token = ""

    def config_sections(self) -> dict[str, Any]:
        sections: dict[str, Any] = {
            "receiver": {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port},
            "storage": {"data_dir": str(self.data_dir)},
            "assembler": {"idle_timeout_s": self.idle_timeout_s},
            "broker": {"bind": f"tcp://127.0.0.1:{self.broker_port}",
                       "heartbeat_interval_s": self.heartbeat_interval_s},
            "worker": {"count": self.workers, "torch_threads": 1, "model_cache": str(self.model_cache)},
            "http": {"host": "127.0.0.1", "port": self.http_port},
        }
        for name, values in self.extra.items():
            if isinstance(values, list):  # an array of tables: [[models]], [[destinations]]
                sections[name] = values
            else:
                sections.setdefault(name, {}).update(values)
        return sections

    def start(self, timeout: float = 60.0) -> "EngineProcess":
        """Start and wait until ``/readyz`` answers 200 (raises with the log tail otherwise)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.api_token:
            self.api_token = add_console_user(self.data_dir, TEST_USER, "operator", TEST_PASSWORD)
        config = write_config(self.data_dir / "scanstream.toml", self.config_sections())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scanstream serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.http_status("/readyz") == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"scanstream serve not ready in {timeout} s:\n{self.log_tail()}")

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api_json(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` (``/api/...``) with the test user's token; the parsed JSON answer."""
        request = urllib.request.Request(f"{self.http_url}{path}",
                                         headers={"Authorization": f"Bearer {self.api_token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def ledger(self) -> "Ledger":
        """A reader on the engine's ledger (SQLite WAL allows it beside the writer)."""
        from engine.ledger.store import Ledger

        return Ledger(self.data_dir / "ledger.sqlite")

    def wait_for_jobs(self, study_uid: str, count: int, timeout: float = 120.0) -> list:
        """Wait until the study has ``count`` jobs in a final state; returns them."""
        deadline = time.monotonic() + timeout
        ledger = self.ledger()
        try:
            while time.monotonic() < deadline:
                jobs = ledger.final_study_jobs(study_uid, count)
                if jobs:
                    return jobs
                if self.process is not None and self.process.poll() is not None:
                    break
                time.sleep(0.2)
        finally:
            ledger.close()
        raise AssertionError(f"study did not reach {count} final job(s) in {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def storescu(files: list[Path], port: int, called_aet: str = "SCANSTREAM", calling_aet: str = "STORESCU",
             extra_args: tuple[str, ...] = (), executable: str = "storescu") -> subprocess.CompletedProcess:
    """Send files with DCMTK's storescu (TCP_NODELAY=1 so DCMTK does not stall on Nagle)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [executable, "-aet", calling_aet, "-aec", called_aet, *extra_args, "127.0.0.1", str(port),
               *map(str, files)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


# --- what plugin tests need: phantom studies, engines, sending and waiting -----------------------------------

PHANTOM_STUDY_SEED = 91_001  # not a seed the built-in models were trained on
PHANTOM_STUDY_NODULES = 2


@dataclass(frozen=True)
class PhantomStudy:
    """A phantom chest CT written as one DICOM file per slice, and its truth.

    ``phantom`` holds the truth: ``hu`` (int16, (slices, rows, cols), the stored
    pixels plus the intercept), ``nodule_mask``, ``nodules`` (centre (z, y, x) mm,
    radius mm), ``tissue`` codes and the geometry; ``files[k]`` is slice ``k``.
    """

    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str
    seed: int
    phantom: "CTPhantom"


def make_phantom_study(folder: Path, seed: int = PHANTOM_STUDY_SEED, *, series_description: str = "Phantom chest CT",
                       body_part: str = "CHEST", **phantom_args: Any) -> PhantomStudy:
    """Generate a phantom CT (``phantom_args`` go to :func:`engine.synthetic.ct_phantom.generate_ct_phantom`) and write it."""
    from pydicom.uid import generate_uid

    from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series

    phantom_args.setdefault("nodules", PHANTOM_STUDY_NODULES)
    phantom = generate_ct_phantom(seed, **phantom_args)
    study_uid, series_uid = str(generate_uid()), str(generate_uid())
    files = write_ct_series(phantom, folder, study_uid=study_uid, series_uid=series_uid,
                            series_description=series_description, body_part=body_part)
    return PhantomStudy(Path(folder), files, study_uid, series_uid, seed, phantom)


def engine_process(data_dir: Path, *, plugin_modules: Sequence[str] = (), plugin_paths: Sequence[Path | str] = (),
                   models: Sequence[str] = (), config: dict[str, Any] | None = None, workers: int = 1,
                   env: dict[str, str] | None = None, **options: Any) -> EngineProcess:
    """An :class:`EngineProcess` (not started) for a plugin's tests.

    ``plugin_modules`` are imported as plugins (``plugins.modules``) from
    ``plugin_paths`` (put on the engine's ``PYTHONPATH``) or anywhere importable;
    ``models`` limits routing to those models (``routing.models``), so the
    built-in models do not run on every study; ``config`` adds sections
    (``{"worker": {"backend": "torch"}}``, ``{"models": [{...}]}`` for
    ``[[models]]``); other ``options`` are :class:`EngineProcess` fields.
    """
    extra: dict[str, Any] = copy.deepcopy(config or {})
    if plugin_modules:
        plugins = extra.setdefault("plugins", {})
        plugins["modules"] = [*plugins.get("modules", []), *plugin_modules]
    if models:
        extra.setdefault("routing", {})["models"] = list(models)
    environment = dict(env or {})
    if plugin_paths:
        inherited = environment.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        environment["PYTHONPATH"] = os.pathsep.join([*map(str, plugin_paths), *([inherited] if inherited else [])])
    return EngineProcess(Path(data_dir), workers=workers, extra=extra, env=environment, **options)


@dataclass(frozen=True)
class JobResult:
    """One finished job: its state, and where its outputs are (``files``: name -> path)."""

    job_id: str
    model: str
    model_version: str
    series_uid: str
    state: str
    reason: str | None
    folder: Path | None
    document: dict[str, Any] | None
    files: dict[str, Path]


@dataclass(frozen=True)
class StudyResults:
    """Every job of the studies sent, final; ``sender`` says what sent them (``storescu`` or ``pynetdicom``)."""

    study_uids: tuple[str, ...]
    sender: str
    jobs: list[JobResult]

    def for_model(self, model: str) -> list[JobResult]:
        """The jobs of one model (one per series it took)."""
        return [job for job in self.jobs if job.model == model]

    @property
    def documents(self) -> list[dict[str, Any]]:
        """Every ``result.json`` written, as parsed JSON."""
        return [job.document for job in self.jobs if job.document is not None]


@functools.lru_cache(maxsize=1)
def dcmtk_storescu() -> str | None:
    """The path of DCMTK's storescu on ``PATH``, or None (pynetdicom's app of the same name does not count)."""
    path = shutil.which("storescu")
    if path is None:
        return None
    try:
        probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "dcmtk" in (probe.stdout + probe.stderr).lower() else None


def _dicom_files(study: PhantomStudy | Path | str | Sequence[Path | str]) -> list[Path]:
    """The DICOM files of a study: a :class:`PhantomStudy`, a folder (recursively) or a list of files."""
    if isinstance(study, PhantomStudy):
        return list(study.files)
    items = [Path(study)] if isinstance(study, (str, Path)) else [Path(item) for item in study]
    files = sorted(path for item in items for path in ([item] if item.is_file() else item.rglob("*"))
                   if path.is_file())
    dicom = []
    for path in files:
        with open(path, "rb") as handle:
            if handle.read(132)[128:132] == b"DICM":
                dicom.append(path)
    if not dicom:
        raise ValueError(f"no DICOM Part-10 files in {study}")
    return dicom


def _job_result(job: "JobRow") -> JobResult:
    folder = Path(job.result_dir) if job.result_dir else None
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()} if folder and folder.is_dir() else {}
    document = json.loads(files["result.json"].read_text()) if "result.json" in files else None
    return JobResult(job.job_id, job.model, job.model_version, job.series_uid, job.state, job.reason, folder,
                     document, files)


def send_and_wait(study: PhantomStudy | Path | str | Sequence[Path | str], engine: EngineProcess, *,
                  min_jobs: int = 1, timeout: float = 180.0, calling_aet: str = "STORESCU") -> StudyResults:
    """Send a study to ``engine`` as a modality would and wait until every job of it is final.

    Waits until each series sent is complete in the engine's ledger, there are
    at least ``min_jobs`` jobs (pass the number of models that take the study
    when several do) and none is queued or running. Raises AssertionError with
    the series and job states and the engine's log tail when that does not
    happen within ``timeout`` seconds (a series no model takes stays without jobs).
    """
    import pydicom

    files = _dicom_files(study)
    headers = [pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID",
                                                                             "SeriesInstanceUID"]) for path in files]
    study_uids = tuple(dict.fromkeys(str(h.StudyInstanceUID) for h in headers))
    series_uids = {str(h.SeriesInstanceUID) for h in headers}
    executable = dcmtk_storescu()
    if executable is not None:
        sent = storescu(files, engine.port, engine.ae_title, calling_aet, executable=executable)
        if sent.returncode != 0:
            raise AssertionError(f"storescu exited with {sent.returncode}:\n{sent.stderr}\n{engine.log_tail()}")
        sender = "storescu"
    else:
        from engine.dicom.store_scu import send_files

        report = send_files(files, "127.0.0.1", engine.port, engine.ae_title, calling_aet)
        if report.failed or report.sent != len(files):
            raise AssertionError(f"pynetdicom sent {report.sent} of {len(files)}; failed: {report.failed}")
        sender = "pynetdicom"
    jobs = _wait_for_final(engine, study_uids, series_uids, min_jobs, timeout)
    return StudyResults(study_uids, sender, [_job_result(job) for job in jobs])


def _wait_for_final(engine: EngineProcess, study_uids: Sequence[str], series_uids: set[str], min_jobs: int,
                    timeout: float) -> list["JobRow"]:
    from engine.ledger.store import FINAL_JOB_STATES

    deadline = time.monotonic() + timeout
    ledger = engine.ledger()
    try:
        while True:
            series = [row for uid in study_uids for row in ledger.study_series(uid)]
            jobs = [job for uid in study_uids for job in ledger.study_jobs(uid)]
            complete = {row.series_uid for row in series if row.state == "complete"}
            if (series_uids <= complete and len(jobs) >= min_jobs
                    and all(job.state in FINAL_JOB_STATES for job in jobs)):
                return jobs
            stopped = engine.process is not None and engine.process.poll() is not None
            if stopped or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        ledger.close()
    states = "; ".join(f"series {row.series_key}: {row.state}, {row.instance_count} instance(s), "
                       f"{sum(j.series_uid == row.series_uid for j in jobs)} job(s)" for row in series) or "no series"
    job_states = "; ".join(f"{job.model}: {job.state}{f' ({job.reason})' if job.reason else ''}" for job in jobs)
    why = "the engine exited" if stopped else f"not in {timeout} s"
    raise AssertionError(f"study not final with >= {min_jobs} job(s) ({why}): {states}; jobs: {job_states or 'none'} "
                         f"(a complete series without jobs was taken by no model)\n{engine.log_tail()}")


def read_seg_mask(seg_path: Path, source_files: Sequence[Path], segment: int = 1) -> "np.ndarray":
    """Segment ``segment`` of a DICOM SEG as a bool volume ordered like ``source_files`` (slice k = file k)."""
    import highdicom as hd
    import numpy as np
    import pydicom

    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for p in source_files]
    referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    unknown = referenced - set(uids)
    if unknown:
        raise ValueError(f"the SEG references {len(unknown)} instance(s) not among source_files")
    mask = np.zeros((len(uids), int(seg.Rows), int(seg.Columns)), dtype=bool)
    present = [uid for uid in uids if uid in referenced]
    if present:
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=present, segment_numbers=[segment])
        for uid, frame in zip(present, pixels[..., 0]):
            mask[uids.index(uid)] = frame > 0
    return mask
