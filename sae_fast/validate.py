"""Small argument checks shared by the config, the architectures and the analysis tools:
each failure is one ConfigError naming the argument."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError


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
