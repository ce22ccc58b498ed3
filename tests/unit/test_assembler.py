"""Assembler: completion by geometry, multi-frame or idle time; late instances re-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.receiver.assembler import Assembler, completion_reason, geometric_completion
from engine.receiver.ledger import InstanceMeta, InstanceRow, Ledger
from engine.receiver.spool import SpoolEntry

AXIAL = "1.000000,0.000000,0.000000,0.000000,1.000000,0.000000"


def rows(positions, expected=None, frames=None, orientation=AXIAL) -> list[InstanceRow]:
    return [InstanceRow(f"1.{i}", f"n{i}", p, orientation, expected, frames, i) for i, p in enumerate(positions)]


@pytest.mark.parametrize("positions, expected, reason", [
    ([0.0, 2.5, 5.0, 7.5], 4, "geometry"),
    ([7.5, 0.0, 5.0, 2.5], 4, "geometry"),           # arrival order does not matter
    ([0.0, 2.5, 7.5], 4, None),                       # a slice missing
    ([0.0, 2.5, 2.5, 5.0], 4, None),                  # two slices at one position
    ([0.0, 2.5, 5.0, 9.0], 4, None),                  # uneven spacing
    ([0.0, 2.5, 5.0, 7.5], None, None),               # expected count unknown: wait for idle
    ([0.0, None, 5.0], 3, None),                      # no geometry on one instance
])
def test_geometric_rules(positions, expected, reason) -> None:
    assert geometric_completion(rows(positions, expected)) == reason


def test_multiframe_and_mixed_orientation() -> None:
    assert geometric_completion(rows([0.0], frames=40)) == "multiframe"
    mixed = rows([0.0, 1.0], expected=2)
    mixed[1] = InstanceRow("1.9", "n9", 1.0, "0,1,0,0,0,-1", 2, None, 2)
    assert geometric_completion(mixed) is None


def test_idle_rule() -> None:
    waiting = rows([0.0, 2.5])
    assert completion_reason(waiting, last_received=100.0, now=104.0, idle_timeout=5.0) is None
    assert completion_reason(waiting, last_received=100.0, now=105.0, idle_timeout=5.0) == "idle"
    assert completion_reason([], last_received=0.0, now=1e9, idle_timeout=5.0) is None


def add(ledger: Ledger, n: int, expected: int | None = 3, now: float = 1.0) -> None:
    meta = InstanceMeta("1.2", "1.2.3", f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", modality="CT",
                        image_position=(0.0, 0.0, 2.0 * n), image_orientation=(1, 0, 0, 0, 1, 0),
                        images_in_acquisition=expected)
    ledger.add_instance(meta, SpoolEntry(f"n{n}", 1, f"h{n}"), "CT1", now)


def test_assembler_completes_on_last_slice_and_reruns_late_data(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    completed: list[tuple[str, int]] = []
    assembler = Assembler(ledger, lambda uid, rev: completed.append((uid, rev)), idle_timeout=30.0)
    for n in (2, 0):
        add(ledger, n)
        assert not assembler.check("1.2.3", 1.0)
    add(ledger, 1)
    assert assembler.check("1.2.3", 1.0) and completed == [("1.2.3", 1)]
    assert not assembler.check("1.2.3", 2.0)                   # complete already: no second job
    add(ledger, 3, now=10.0)                                   # a late slice reopens the series
    assert not assembler.check("1.2.3", 10.0)                  # 4 slices, 3 expected: wait for idle
    assert assembler.tick(now=39.0) == 0
    assert assembler.tick(now=40.0) == 1
    assert completed == [("1.2.3", 1), ("1.2.3", 2)]
    assert ledger.series("1.2.3").state == "complete"
    ledger.close()


def test_idle_series_completes_on_tick(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    completed = []
    assembler = Assembler(ledger, lambda uid, rev: completed.append(rev), idle_timeout=5.0)
    add(ledger, 0, expected=None, now=100.0)
    assert assembler.tick(now=104.0) == 0 and assembler.tick(now=105.0) == 1 and completed == [1]
    ledger.close()
