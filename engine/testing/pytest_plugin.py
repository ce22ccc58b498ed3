"""The pytest plugin ``scanstream`` (entry point ``pytest11``): fixtures for plugin authors' tests.

``scanstream_phantom_study``, ``scanstream_engine`` (and ``scanstream_engine_factory``)
and ``scanstream_send``, built on :mod:`engine.testing`; see docs/plugins.md.
Fixtures are lazy: nothing starts unless a test asks for one; ``-p no:scanstream``
turns the plugin off.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from engine.testing import EngineProcess, PhantomStudy, StudyResults, engine_process, make_phantom_study, send_and_wait


MARKERS = (
    "scanstream_phantom(seed=..., **phantom_args): the phantom study scanstream_phantom_study writes "
    "(engine.testing.make_phantom_study arguments)",
    "scanstream_engine(plugin_modules=[], plugin_paths=[], models=[], config={}, workers=1): how scanstream_engine "
    "is configured (engine.testing.engine_process arguments)",
)


def pytest_configure(config: "pytest.Config") -> None:
    """Declare this plugin's markers (so ``--strict-markers`` accepts them)."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def _marker_kwargs(request: "pytest.FixtureRequest", name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
def scanstream_phantom_study(request: "pytest.FixtureRequest",
                             tmp_path_factory: "pytest.TempPathFactory") -> PhantomStudy:
    """A phantom chest CT study on disk (48 slices of 256 x 256, 2 nodules) with its truth."""
    return make_phantom_study(tmp_path_factory.mktemp("scanstream-study"),
                              **_marker_kwargs(request, "scanstream_phantom"))


@pytest.fixture
def scanstream_engine_factory(tmp_path_factory: "pytest.TempPathFactory") -> Iterator[Callable[..., EngineProcess]]:
    """``factory(**engine_process options) -> EngineProcess``, started; every one is stopped after the test."""
    started: list[EngineProcess] = []

    def start(start_timeout: float = 120.0, **options: Any) -> EngineProcess:
        engine = engine_process(tmp_path_factory.mktemp("scanstream-engine"), **options)
        started.append(engine)
        return engine.start(timeout=start_timeout)

    yield start
    for engine in reversed(started):
        engine.stop()


@pytest.fixture
def scanstream_engine(request: "pytest.FixtureRequest",
                      scanstream_engine_factory: Callable[..., EngineProcess]) -> EngineProcess:
    """A started ``scanstream serve`` on free ports with its own data folder (see the ``scanstream_engine`` marker)."""
    return scanstream_engine_factory(**_marker_kwargs(request, "scanstream_engine"))


@pytest.fixture
def scanstream_send() -> Callable[..., StudyResults]:
    """``scanstream_send(study, engine, min_jobs=1, timeout=180)``: send, wait for final jobs, return the results."""
    return send_and_wait
