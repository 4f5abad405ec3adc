"""SAE file formats: the native (SAELens) format and importers for sparsify and
dictionary_learning. `load_any` picks the format by asking each, in `FORMATS` order,
whether the directory holds its files; a name that is no local path but a pretrained spec
(`release/sae_id`, `org/name[/folder]`) loads through `pretrained`. Importing this package
gives `SparseAutoencoder.save`, `.load` and `.from_pretrained` their format (formats depend
on the SAE module, never the reverse)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .. import sae as sae_module
from ..errors import ConfigError, FormatError
from ..files import atomic_directory, atomic_file, require_dir
from ..sae import SparseAutoencoder
from . import dictionary_learning, pretrained, saelens, sparsify
from .dictionary_learning import load_dictionary_learning
from .pretrained import load_pretrained, pretrained_dir, sae_directory
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
    "load_pretrained",
    "load_saelens",
    "load_sparsify",
    "pretrained_dir",
    "sae_directory",
    "save_saelens",
]


def load_any(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
) -> SparseAutoencoder:
    """Load an SAE directory in any supported layout, chosen by the files it holds; a
    pretrained spec that is no local path (see `pretrained.is_pretrained_spec`) is
    downloaded (or found in the Hugging Face cache) and loaded."""
    if pretrained.is_pretrained_spec(path):
        try:
            return load_pretrained(str(path), device=device, dtype=dtype, backend=backend)
        except (ConfigError, FormatError) as err:
            if str(path).split("/")[0] in pretrained.read_registry():
                raise  # a release: the message names it
            raise type(err)(
                f"SAE directory {path} does not exist, and as a Hugging Face repo: {err}"
            ) from err
    path = require_dir(path)
    for _name, holds, load in FORMATS:
        if holds(path):
            return load(path, device=device, dtype=dtype, backend=backend)
    raise FormatError(
        f"{path} holds no SAE: expected cfg.json + sae_weights.safetensors (sae_fast/SAELens), "
        "cfg.json + sae.safetensors (sparsify) or config.json + ae.pt (dictionary_learning)"
    )


sae_module.use_format(save_saelens, load_any, load_pretrained)
