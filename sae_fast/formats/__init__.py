"""SAE file formats: the native (SAELens) format and importers for sparsify and
dictionary_learning. `load_any` picks the format by asking each, in `FORMATS` order,
whether the directory holds its files. Importing this package gives
`SparseAutoencoder.save` and `.load` their format (formats depend on the SAE module,
never the reverse)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .. import sae as sae_module
from ..errors import FormatError
from ..files import atomic_directory, atomic_file, require_dir
from ..sae import SparseAutoencoder
from . import dictionary_learning, saelens, sparsify
from .dictionary_learning import load_dictionary_learning
from .saelens import load_saelens, save_saelens
from .sparsify import load_sparsify

# (name, holds(path), load(path, **kwargs)): the first whose files are there loads it
FORMATS: list[tuple[str, Callable[[Path], bool], Callable[..., SparseAutoencoder]]] = [
    ("sae_fast/SAELens", saelens.holds, load_saelens),
    ("sparsify", sparsify.holds, load_sparsify),
    ("dictionary_learning", dictionary_learning.holds, load_dictionary_learning),
]

__all__ = [
    "FORMATS",
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
    for _name, holds, load in FORMATS:
        if holds(path):
            return load(path, device=device, dtype=dtype, backend=backend)
    raise FormatError(
        f"{path} holds no SAE: expected cfg.json + sae_weights.safetensors (sae_fast/SAELens), "
        "cfg.json + sae.safetensors (sparsify) or config.json + ae.pt (dictionary_learning)"
    )


sae_module.use_format(save_saelens, load_any)
