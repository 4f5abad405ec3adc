"""sae_fast: a sparse-autoencoder engine for interpretability, with custom kernels.

import sae_fast
sae = sae_fast.SparseAutoencoder(d_in=384, d_sae=6144, activation="topk", k=32)
out = sae(x)  # out.reconstruction, out.values, out.indices
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from . import formats  # noqa: F401  (gives SparseAutoencoder.save / .load their format)
from ._version import __version__
from .analysis.monitor import Monitor
from .analysis.steering import steer
from .analysis.trace import trace
from .config import SAEConfig, TrainConfig
from .errors import BackendUnavailableError, ConfigError, DataError, FormatError, SAEFastError
from .ops.dispatch import available_backends
from .ops.native import NATIVE_AVAILABLE, NATIVE_IMPORT_ERROR
from .sae import SAEOutput, SparseAutoencoder

if TYPE_CHECKING:
    from .eval import EvalResult


def train(cfg: TrainConfig):
    """Collect activations, train an SAE as `cfg` says, save it under `cfg.out`/sae."""
    from .training import train as _train

    return _train(cfg)


def evaluate(sae: SparseAutoencoder | str, *args: Any, **kwargs: Any) -> EvalResult:
    """Evaluate an SAE (module or directory): reconstruction, sparsity and downstream
    fidelity on held-out tokens; returns an `EvalResult`. See `sae_fast.eval.evaluate`."""
    from .eval import evaluate as _evaluate

    return _evaluate(sae, *args, **kwargs)


if not NATIVE_AVAILABLE:
    warnings.warn(
        f"sae_fast._C is not available ({NATIVE_IMPORT_ERROR}); falling back to the 'torch' "
        "backend on CPU",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "DataError",
    "FormatError",
    "Monitor",
    "SAEConfig",
    "SAEFastError",
    "SAEOutput",
    "SparseAutoencoder",
    "TrainConfig",
    "__version__",
    "available_backends",
    "evaluate",
    "steer",
    "trace",
    "train",
]
