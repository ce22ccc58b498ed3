"""Assembler: completion by geometry, multi-frame or idle time; late instances re-run as a new revision."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.receiver.assembler import Assembler, completion_reason, geometric_completion
from engine.ledger.store import InstanceMeta, InstanceRow, Ledger
from engine.receiver.spool import SpoolEntry
from engine.testing.waiting import wait_until

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
SERIES = "1.2.3"


def rows(positions, expected=None, frames=None, orientation=AXIAL) -> list[InstanceRow]:
    return [InstanceRow(f"1.{i}", f"n{i}", p, orientation, expected, frames, i) for i, p in enumerate(positions)]


@pytest.mark.parametrize("positions, expected, reason", [
    ([0.0, 2.5, 5.0, 7.5], 4, "geometry"),
    ([7.5, 0.0, 5.0, 2.5], 4, "geometry"),           # arrival order does not matter
    ([-10.0, -12.5, -15.0], 3, "geometry"),           # negative positions, descending arrival
    ([0.0, 2.5, 5.001, 7.5], 4, "geometry"),          # rounding in written positions is tolerated
    ([3.0], 1, "geometry"),                           # a one-slice acquisition
    ([0.0, 2.5, 7.5], 4, None),                       # a slice missing
    ([0.0, 2.5, 7.5, 10.0], 4, None),                 # right count, but a gap where a slice should be
    ([0.0, 2.5, 2.5, 5.0], 4, None),                  # two slices at one position
    ([0.0, 2.5, 5.0, 9.0], 4, None),                  # uneven spacing
    ([0.0, 2.5, 5.0, 7.5, 10.0], 4, None),            # more instances than the acquisition has
    ([0.0, 2.5, 5.0, 7.5], None, None),               # expected count unknown: wait for idle
    ([0.0, None, 5.0], 3, None),                      # no geometry on one instance
])
def test_geometric_rules(positions, expected, reason) -> None:
    assert geometric_completion(rows(positions, expected)) == reason


def test_multiframe_mixed_orientation_and_mixed_expectations() -> None:
    assert geometric_completion(rows([None], frames=40)) == "multiframe"
    assert geometric_completion(rows([None, None], frames=40)) is None  # two multi-frame objects: wait
    assert geometric_completion(rows([0.0], frames=1)) is None
    mixed = rows([0.0, 1.0], expected=2)
    mixed[1] = InstanceRow("1.9", "n9", 1.0, SAGITTAL, 2, None, 2)
    assert geometric_completion(mixed) is None
    disagree = rows([0.0, 1.0], expected=2)
    disagree[1] = InstanceRow("1.9", "n9", 1.0, AXIAL, 3, None, 2)
    assert geometric_completion(disagree) is None


def test_idle_rule() -> None:
    waiting = rows([0.0, 2.5])
    assert completion_reason(waiting, now=104.0, last_received=100.0, idle_timeout=5.0) is None
    assert completion_reason(waiting, now=105.0, last_received=100.0, idle_timeout=5.0) == "idle"
    assert completion_reason([], now=1e9, last_received=0.0, idle_timeout=5.0) is None
    complete = rows([0.0, 2.5], expected=2)
    assert completion_reason(complete, now=100.0, last_received=100.0, idle_timeout=5.0) == "geometry"


def add(ledger: Ledger, n: int, expected: int | None = 3, now: float = 1.0) -> None:
    meta = InstanceMeta("1.2", SERIES, f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", modality="CT",
                        image_position=(0.0, 0.0, 2.0 * n), image_orientation=(1, 0, 0, 0, 1, 0),
                        images_in_acquisition=expected)
    ledger.add_instance(meta, SpoolEntry(f"n{n}", 1, f"h{n}"), "CT1", now)


@pytest.fixture()
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "l.sqlite")
    yield ledger
    ledger.close()


def test_completes_on_the_last_slice_and_reruns_late_data(ledger: Ledger) -> None:
    completed: list[tuple[str, int]] = []
    assembler = Assembler(ledger, lambda uid, rev: completed.append((uid, rev)), idle_timeout=30.0)
    for n in (2, 0):  # out of order
        add(ledger, n)
        assert not assembler.check(SERIES, 1.0)
    add(ledger, 1)
    assert assembler.check(SERIES, 1.0) and completed == [(SERIES, 1)]
    assert ledger.series(SERIES).completion_reason == "geometry"
    assert not assembler.check(SERIES, 2.0)                    # complete already: no second completion
    add(ledger, 3, now=10.0)                                   # a late slice reopens the series
    assert not assembler.check(SERIES, 10.0)                   # 4 slices, 3 expected: wait for idle
    assert assembler.tick(now=39.0) == 0
    assert assembler.tick(now=40.0) == 1
    assert completed == [(SERIES, 1), (SERIES, 2)]
    assert (ledger.series(SERIES).state, ledger.series(SERIES).completion_reason) == ("complete", "idle")


def test_series_without_images_in_acquisition_completes_when_idle(ledger: Ledger) -> None:
    completed: list[int] = []
    assembler = Assembler(ledger, lambda uid, rev: completed.append(rev), idle_timeout=5.0)
    for n in range(3):
        add(ledger, n, expected=None, now=100.0)
        assert not assembler.check(SERIES, 100.0)
    assert assembler.tick(now=104.0) == 0 and assembler.tick(now=105.0) == 1 and completed == [1]
    assert ledger.series(SERIES).completion_reason == "idle"


def test_unknown_series_and_stale_views_do_not_complete(ledger: Ledger) -> None:
    completed: list[int] = []
    assembler = Assembler(ledger, lambda uid, rev: completed.append(rev), idle_timeout=5.0)
    assert not assembler.check("9.9.9", 1.0)
    for n in range(3):
        add(ledger, n)
    stale = ledger.series(SERIES)
    add(ledger, 3, expected=None)  # arrives after the assembler looked
    assert not assembler._check(stale, 1.0) and completed == []


def test_background_thread_ticks(ledger: Ledger) -> None:
    completed: list[int] = []
    assembler = Assembler(ledger, lambda uid, rev: completed.append(rev), idle_timeout=0.2)
    add(ledger, 0, expected=None, now=time.time())
    assembler.start(tick=0.05)
    try:
        wait_until(lambda: completed, "the idle series completed by the assembler's thread")
    finally:
        assembler.stop()
    assert completed == [1]
