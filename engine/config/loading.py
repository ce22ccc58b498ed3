"""Reading the configuration: the TOML file, ``SCANSTREAM_*`` environment overrides, command-line overrides.

Every source is validated the same way: an invalid value stops start-up with a
message naming the key, where it came from and the expected form.

Environment overrides use ``__`` between section and key:
``SCANSTREAM_RECEIVER__PORT=11113``, ``SCANSTREAM_WORKER__COUNT=2``. List values
are comma-separated (``SCANSTREAM_RECEIVER__ALLOWED_CALLING_AETS=CT1,CT2``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from engine.config.sections import DEFAULT_CONFIG_FILE, ENV_PREFIX, ConfigError, EngineConfig

# Lists of tables (``[[destinations]]``, ``[[models]]``) travel in the environment as one JSON array each.
LIST_SECTIONS = ("destinations", "notifications", "models")
_LIST_VAR = re.compile(rf"^{ENV_PREFIX}({'|'.join(name.upper() for name in LIST_SECTIONS)})$")


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Collect ``SCANSTREAM_SECTION__KEY`` variables into a nested dict, remembering each source.

    ``SCANSTREAM_DESTINATIONS`` / ``SCANSTREAM_MODELS`` hold a JSON array that replaces the file's list.
    """
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for var, value in environ.items():
        match = _LIST_VAR.match(var)
        if match:
            name = match.group(1).lower()
            try:
                data[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment {var}: expected a JSON array of tables, got invalid JSON "
                                  f"({exc.msg} at character {exc.pos})") from None
            sources[(name,)] = var
    origins = {
        (name, key): getattr(field.annotation, "__origin__", None)
        for name, section in EngineConfig.model_fields.items()
        if name not in LIST_SECTIONS
        for key, field in section.annotation.model_fields.items()  # type: ignore[union-attr]
    }
    list_keys = {key for key, origin in origins.items() if origin is list}
    dict_keys = {key for key, origin in origins.items() if origin is dict}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section, _, key = var[len(ENV_PREFIX):].lower().partition("__")
        parsed: Any = value
        if (section, key) in list_keys:
            parsed = [v.strip() for v in value.split(",") if v.strip()]
        elif (section, key) in dict_keys:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment {var}: expected a JSON object, got invalid JSON ({exc.msg})") from None
        data.setdefault(section, {})[key] = parsed
        sources[(section, key)] = var
    return data, sources


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in override.items():
        if section in LIST_SECTIONS:
            merged[section] = values
            continue
        target = merged.get(section)
        merged[section] = {**target, **values} if isinstance(target, dict) else dict(values)
    return merged


def _entry_key(data: dict[str, Any], loc: tuple[str, ...]) -> str:
    """``models[1].selector.modality`` -> ``models[1] ("ct-onnx").selector.modality``: name the entry."""
    if len(loc) < 2 or loc[0] not in LIST_SECTIONS or not loc[1].isdigit():
        return ".".join(loc)
    entries = data.get(loc[0])
    index = int(loc[1])
    name = ""
    if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
        name = f' ("{entries[index].get("name", "")}")' if entries[index].get("name") else ""
    return f"{loc[0]}[{index}]{name}" + "".join(f".{part}" for part in loc[2:])


def _describe(error: ValidationError, origin: str, sources: dict[tuple[str, ...], str],
              data: dict[str, Any] | None = None) -> str:
    """One line per invalid key: the key (entries named), where its value came from, what was expected.

    ``sources`` names the origin of overridden keys (``environment SCANSTREAM_...``, ``command line --port``);
    every other key came from ``origin``.
    """
    lines = []
    for item in error.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = _entry_key(data or {}, loc)
        source = sources.get(loc[:2]) if len(loc) >= 2 else None
        where = source or (sources.get(loc[:1]) if loc and loc[0] in LIST_SECTIONS else None) or origin
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f", got {given!r}"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        lines.append(f"  {key} ({where}): {message}{shown}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> EngineConfig:
    """Read ``path`` (or ``./scanstream.toml`` when present), apply env overrides, validate.

    Raises :class:`ConfigError` naming every invalid key, its source and the expected form.
    """
    environ = os.environ if environ is None else environ
    file_data: dict[str, Any] = {}
    origin = "defaults"
    candidate = Path(path) if path is not None else Path(DEFAULT_CONFIG_FILE)
    if path is not None and not candidate.is_file():
        raise ConfigError(f"config file {candidate} does not exist")
    if candidate.is_file():
        origin = str(candidate)
        try:
            file_data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {candidate} is not valid TOML: {exc}") from exc
    env_data, env_sources = _env_overrides(environ)
    merged = _merge(file_data, env_data)
    try:
        return EngineConfig.model_validate(merged)
    except ValidationError as exc:
        described = {key: f"environment {var}" for key, var in env_sources.items()}
        raise ConfigError(_describe(exc, origin, described, merged)) from None


def config_as_env(config: EngineConfig) -> dict[str, str]:
    """Environment variables that reproduce ``config`` in a child process (used by ``serve``)."""
    env: dict[str, str] = {}
    for section_name, section in config.model_dump(mode="json").items():
        if section_name in LIST_SECTIONS:
            env[f"{ENV_PREFIX}{section_name.upper()}"] = json.dumps(section)
            continue
        for key, value in section.items():
            if value is None:  # unset optional key: the child's default is the same None
                continue
            if isinstance(value, dict):
                text = json.dumps(value)
            else:
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            env[f"{ENV_PREFIX}{section_name.upper()}__{key.upper()}"] = text
    return env


def with_overrides(config: EngineConfig, **sections: dict[str, tuple[Any, str] | Any]) -> EngineConfig:
    """``config`` with some keys of some sections replaced, validated as the file is.

    Each value is ``(value, source)`` (the source names it in an error, e.g. ``"--port"``) or a
    bare value; None values are ignored. Raises :class:`ConfigError` naming the key and its source.
    """
    data = config.model_dump(mode="python", round_trip=True)
    sources: dict[tuple[str, ...], str] = {}
    for name, values in sections.items():
        for key, given in values.items():
            value, source = given if isinstance(given, tuple) else (given, "an override")
            if value is None:
                continue
            data[name][key] = value
            sources[(name, key)] = f"command line {source}" if source.startswith("-") else source
    if not sources:
        return config
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "the configuration", sources, data)) from None
