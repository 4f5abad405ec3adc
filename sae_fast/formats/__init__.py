"""SAE file formats: the native (SAELens) format and importers for sparsify and
dictionary_learning. `load_any` picks the format from the files in the directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import FormatError
from ._io import atomic_directory, atomic_file, require_dir
from .dictionary_learning import load_dictionary_learning
from .saelens import load_saelens, save_saelens
from .sparsify import load_sparsify

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder

__all__ = [
    "atomic_directory",
    "atomic_file",
    "load_any",
    "load_dictionary_learning",
    "load_saelens",
    "load_sparsify",
    "save_saelens",
]


def load_any(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
) -> SparseAutoencoder:
    """Load an SAE directory in any supported layout, chosen by the files it holds."""
    path = require_dir(path)
    kwargs = {"device": device, "dtype": dtype, "backend": backend}
    if (path / "sae_weights.safetensors").exists() or (
        (path / "cfg.json").exists() and not (path / "sae.safetensors").exists()
    ):
        return load_saelens(path, **kwargs)
    if (path / "sae.safetensors").exists():
        return load_sparsify(path, **kwargs)
    if (path / "ae.pt").exists() or (path / "config.json").exists():
        return load_dictionary_learning(path, **kwargs)
    raise FormatError(
        f"{path} holds no SAE: expected cfg.json + sae_weights.safetensors (sae_fast/SAELens), "
        "cfg.json + sae.safetensors (sparsify) or config.json + ae.pt (dictionary_learning)"
    )
