"""One typed configuration: a TOML file, ``SCANSTREAM_*`` environment overrides and command-line overrides.

Validated once at start; an invalid value stops start-up with a message naming the
key (``receiver.port``), where it came from, and what was expected. The sections
are in :mod:`engine.config.sections`, list entries and routing in
:mod:`engine.config.entries`, reading in :mod:`engine.config.loading`; the names
most callers need are importable from here.
"""

from engine.config.loading import config_as_env, load_config, with_overrides
from engine.config.sections import ConfigError, EngineConfig, WorkerConfig

__all__ = ["ConfigError", "EngineConfig", "WorkerConfig", "config_as_env", "load_config", "with_overrides"]
