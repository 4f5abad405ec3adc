"""The architecture registry: names (sae_fast's and SAELens's) to architecture classes.

Every consumer (the SAE module, the config, the trainer and its sharded path, the formats,
the CLI and its help) looks an architecture up here; none branches on its name. Adding one:
its module, its tests, and one line in `_ARCHITECTURES` below.
"""

from __future__ import annotations

from ..errors import ConfigError
from .abstopk import AbsTopK
from .base import Architecture
from .batchtopk import BatchTopK
from .gated import Gated
from .jumprelu import JumpReLU
from .matryoshka import MatryoshkaBatchTopK
from .relu import ReLU
from .topk import TopK

_ARCHITECTURES: tuple[type[Architecture], ...] = (
    TopK,
    BatchTopK,
    ReLU,
    JumpReLU,
    Gated,
    MatryoshkaBatchTopK,
    AbsTopK,
)

REGISTRY: dict[str, type[Architecture]] = {a.name: a for a in _ARCHITECTURES}
_BY_ALIAS: dict[str, type[Architecture]] = {
    alias: a for a in _ARCHITECTURES for alias in (a.name, a.saelens_name, *a.aliases)
}


def names() -> tuple[str, ...]:
    """sae_fast's architecture names, in registry order."""
    return tuple(REGISTRY)


def get(name: str) -> type[Architecture]:
    """The architecture called `name` (sae_fast's name, SAELens's, or an alias)."""
    if not isinstance(name, str) or name not in _BY_ALIAS:
        raise ConfigError(f"unknown activation {name!r}; expected one of {names()}")
    return _BY_ALIAS[name]


def train_configs() -> tuple[type, ...]:
    """Every architecture's training-settings dataclass, once each, in registry order
    (`TrainConfig` inherits their fields)."""
    return tuple(dict.fromkeys(c for a in _ARCHITECTURES for c in a.train_configs))


def help_text() -> str:
    """One line per architecture, for `--help`."""
    return "; ".join(f"{a.name}: {a.summary}" for a in _ARCHITECTURES)


__all__ = ["REGISTRY", "Architecture", "get", "help_text", "names", "train_configs"]
