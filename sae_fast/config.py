"""SAE configuration: a dataclass with validation and a JSON round trip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

ACTIVATIONS = ("topk", "batchtopk", "relu", "jumprelu")
BACKENDS = ("auto", "triton", "native", "torch")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """`"float32"`, `"torch.bfloat16"` or a `torch.dtype` -> `torch.dtype` (floating only)."""
    if isinstance(name, torch.dtype):
        if not name.is_floating_point:
            raise ConfigError(f"dtype must be a floating dtype, got {name}")
        return name
    if not isinstance(name, str):
        raise ConfigError(f"dtype must be a string or torch.dtype, got {type(name).__name__}")
    key = name.removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `"float32"`."""
    return str(dtype).removeprefix("torch.")


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int (bools refused), at least `minimum`; else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass
class SAEConfig:
    """Architecture of one SAE plus where its activations came from (metadata)."""

    d_in: int
    d_sae: int
    activation: str = "topk"
    k: int | None = 32
    dtype: str = "float32"
    model_name: str | None = None
    hook_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is wrong."""
        check_int("d_in", self.d_in, 1)
        check_int("d_sae", self.d_sae, 1)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; expected one of {ACTIVATIONS}"
            )
        if self.activation in ("topk", "batchtopk"):
            if self.k is None:
                raise ConfigError(f"activation {self.activation!r} needs k")
            check_int("k", self.k, 1)
            if self.k > self.d_sae:
                raise ConfigError(f"k must be <= d_sae ({self.d_sae}), got {self.k}")
        else:
            self.k = None
        self.dtype = dtype_name(dtype_from_name(self.dtype))
        for name in ("model_name", "hook_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or null, got {type(value).__name__}")
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"metadata must be an object, got {type(self.metadata).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Inverse of `to_dict`; unknown keys are refused so typos do not pass silently."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown config keys {unknown}; expected a subset of {sorted(names)}"
            )
        missing = [n for n in ("d_in", "d_sae") if n not in data]
        if missing:
            raise ConfigError(f"config is missing required keys {missing}")
        return cls(**data)
