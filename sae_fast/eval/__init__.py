"""Evaluation: reconstruction and sparsity metrics, downstream fidelity by splicing the SAE
into its model, and the dictionary-size sweep."""

from .evaluate import EvalResult, EvalSet, evaluate
from .metrics import (
    ReconstructionMetrics,
    load_sparsity,
    reconstruction_metrics,
    save_sparsity,
)
from .splice import Fidelity, sae_replacement

__all__ = [
    "EvalResult",
    "EvalSet",
    "Fidelity",
    "ReconstructionMetrics",
    "evaluate",
    "load_sparsity",
    "reconstruction_metrics",
    "sae_replacement",
    "save_sparsity",
]
