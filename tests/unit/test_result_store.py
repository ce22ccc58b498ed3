"""Result store: atomic folder swap, safe names."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.outputs.store import ResultStore, ResultStoreError


def test_files_and_replaces_atomically(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    first = store.file("st_abc", "nodule-seg", "se_1", [("result.json", b"{}"), ("seg.dcm", b"x")])
    assert sorted(p.name for p in first.iterdir()) == ["result.json", "seg.dcm"]
    second = store.file("st_abc", "nodule-seg", "se_1", [("result.json", b'{"v": 2}')])
    assert second == first
    assert [p.name for p in second.iterdir()] == ["result.json"]
    assert (second / "result.json").read_bytes() == b'{"v": 2}'
    assert [p.name for p in (tmp_path / "st_abc" / "nodule-seg").iterdir()] == ["se_1"]


@pytest.mark.parametrize("study, model, series, name", [
    ("../x", "m", "s", "a"), ("s", "m/..", "s", "a"), ("s", "m", "..", "a"), ("s", "m", "s", "../a"),
    ("s", "m", "s", ".hidden")])
def test_unsafe_names_are_refused_and_nothing_is_left(tmp_path: Path, study: str, model: str, series: str,
                                                      name: str) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(ResultStoreError):
        store.file(study, model, series, [(name, b"x")])
    assert list(tmp_path.rglob("*.tmp")) == []
