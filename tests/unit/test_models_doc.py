"""docs/models.md lists every ``[[models]]`` key, so the reference cannot fall behind the config models."""

from __future__ import annotations

from pathlib import Path

from engine.config.entries import (LabelCodeConfig, ModelEntryConfig, PreprocessingConfig, SelectorConfig,
                                   VolumetricConfig)

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_every_key_is_documented() -> None:
    text = DOC.read_text()
    keys = [name for name in ModelEntryConfig.model_fields if name not in ("selector", "preprocessing", "volumetric")]
    for prefix, model in (("selector.", SelectorConfig), ("preprocessing.", PreprocessingConfig),
                          ("volumetric.", VolumetricConfig)):
        keys += [prefix + name for name in model.model_fields]
    missing = [key for key in keys if f"| `{key}` |" not in text]
    assert not missing, f"docs/models.md has no row for {missing}"
    assert all(f"`{name}`" in text for name in LabelCodeConfig.model_fields)
