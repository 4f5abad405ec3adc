"""Small argument checks shared by the config, the architectures and the analysis tools:
each failure is one ConfigError naming the argument."""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

from .errors import ConfigError


def train_field(default: Any, help: str) -> Any:
    """A dataclass field whose help text `sae-fast train --help` shows."""
    return field(default=default, metadata={"help": help})


def check_fields(cfg: Any, cls: type, minimum: dict[str, float] | None = None) -> None:
    """Check the fields dataclass `cls` declares on `cfg`: ints (`check_int`) and numbers at
    least `minimum[name]` (default 0); ConfigError naming the first one that is wrong."""
    for f in fields(cls):
        value = getattr(cfg, f.name)
        low = (minimum or {}).get(f.name, 0)
        if f.type in ("int", int):
            check_int(f.name, value, int(low))
        elif f.type in ("float", float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"{f.name} must be a number >= {low}, got {value!r}")


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int (bools refused), at least `minimum`; else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_feature_id(feature: Any, d_sae: int, where: str = "") -> int:
    """`feature` as a feature id of an SAE with `d_sae` features, else a ConfigError."""
    prefix = f"{where}: " if where else ""
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise ConfigError(f"{prefix}feature id must be an integer, got {feature!r}")
    if not 0 <= feature < d_sae:
        raise ConfigError(
            f"{prefix}unknown feature {feature}: out of range, the SAE has {d_sae} features"
        )
    return feature
